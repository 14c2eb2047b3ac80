package main

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/natstest"
)

// upgradeRequest is a WebSocket request for user, as a client sends it.
func upgradeRequest(host, user, extra string) string {
	return "GET /ws?user=" + user + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + extra + "\r\n"
}

// rawConn dials the edge without any client library.
func rawConn(t *testing.T, e *testEdge) (net.Conn, *bufio.Reader) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	return conn, bufio.NewReader(conn)
}

// readFrame reads one unmasked server frame's payload (short frames).
func readFrame(t *testing.T, br *bufio.Reader) []byte {
	t.Helper()
	var head [2]byte
	if _, err := io.ReadFull(br, head[:]); err != nil {
		t.Fatal(err)
	}
	n := int(head[1] & 0x7F)
	if n == 126 {
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			t.Fatal(err)
		}
		n = int(ext[0])<<8 | int(ext[1])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(br, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// expectWelcome reads the 101 answer and the welcome of user.
func expectWelcome(t *testing.T, br *bufio.Reader, user string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("answer %s, accept %q", resp.Status, resp.Header.Get("Sec-Websocket-Accept"))
	}
	if f := readFrame(t, br); !bytes.Contains(f, []byte(`"type":"welcome","user":"`+user+`"`)) {
		t.Fatalf("first frame %s, want the welcome of %s", f, user)
	}
}

// handshakesBy reads natter_edge_handshakes_total{by}.
func handshakesBy(t *testing.T, e *testEdge, by string) float64 {
	t.Helper()
	return counterWith(t, e.reg, "natter_edge_handshakes_total", "by", by)
}

// The edge reads WebSocket requests itself and hands every other request
// to net/http with what it read: each kind gets the answer it always had,
// from the path it belongs to (by: "edge" or "http").
func TestUpgradePaths(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	host := strings.TrimPrefix(e.url, "http://")
	readBy := func(t *testing.T, by string, run func()) {
		t.Helper()
		before := handshakesBy(t, e, by)
		run()
		if got := handshakesBy(t, e, by) - before; got != 1 {
			t.Fatalf("%v requests read by %s, want 1", got, by)
		}
	}

	t.Run("a request sent a byte at a time", func(t *testing.T) {
		readBy(t, "edge", func() {
			conn, br := rawConn(t, e)
			for _, b := range []byte(upgradeRequest(host, "slow", "")) {
				if _, err := conn.Write([]byte{b}); err != nil {
					t.Fatal(err)
				}
			}
			expectWelcome(t, br, "slow")
		})
	})
	t.Run("the page, then an upgrade on the same connection", func(t *testing.T) {
		readBy(t, "http", func() {
			conn, br := rawConn(t, e)
			if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: "+host+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("page: %v %v", resp, err)
			}
			if _, err := io.Copy(io.Discard, resp.Body); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(conn, upgradeRequest(host, "kept", "")); err != nil {
				t.Fatal(err)
			}
			expectWelcome(t, br, "kept")
		})
	})
	t.Run("a head longer than the edge reads", func(t *testing.T) {
		readBy(t, "http", func() {
			conn, br := rawConn(t, e)
			long := "X-Long: " + strings.Repeat("a", 40<<10) + "\r\n"
			if _, err := io.WriteString(conn, upgradeRequest(host, "long", long)); err != nil {
				t.Fatal(err)
			}
			expectWelcome(t, br, "long")
		})
	})
	t.Run("a head of bare line feeds", func(t *testing.T) {
		readBy(t, "http", func() {
			conn, br := rawConn(t, e)
			if _, err := io.WriteString(conn, strings.ReplaceAll(upgradeRequest(host, "lf", ""), "\r\n", "\n")); err != nil {
				t.Fatal(err)
			}
			expectWelcome(t, br, "lf")
		})
	})

	// status 0: closed without an answer.
	refused := []struct {
		name, request string
		by            string
		status        int
	}{
		{"a frame sent before the answer (gorilla closes)", upgradeRequest(host, "early", "") + "\x81\x80\x00\x00\x00\x00", "http", 0},
		{"a bare blank line, then more (not upgraded here)", strings.Replace(upgradeRequest(host, "smuggled", ""), "Host:", "X: y\n\nHost:", 1), "http", http.StatusBadRequest},
		{"no key", strings.Replace(upgradeRequest(host, "nokey", ""), "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 1), "http", http.StatusBadRequest},
		{"a bad key", strings.Replace(upgradeRequest(host, "badkey", ""), "dGhlIHNhbXBsZSBub25jZQ==", "short", 1), "http", http.StatusBadRequest},
		{"POST", strings.Replace(upgradeRequest(host, "post", ""), "GET", "POST", 1), "http", http.StatusMethodNotAllowed},
		{"a bad user", upgradeRequest(host, "no%20spaces", ""), "edge", http.StatusBadRequest},
		{"garbage", "BLAH\r\n\r\n", "http", http.StatusBadRequest},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			readBy(t, tt.by, func() {
				conn, br := rawConn(t, e)
				if _, err := io.WriteString(conn, tt.request); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if tt.status == 0 {
					if err == nil {
						t.Fatalf("answered %s, want the connection closed", resp.Status)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != tt.status {
					t.Fatalf("status %s, want %d", resp.Status, tt.status)
				}
			})
		})
	}
}

// A connection that does not send its request in time is closed; one
// still sending when the edge stops is closed, and the edge stops.
func TestHandshakeTimeout(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.HandshakeTimeout = 200 * time.Millisecond })
	for _, sent := range []string{"", "GET /ws?user=x HTTP/1.1\r\n"} {
		conn, br := rawConn(t, e)
		if _, err := io.WriteString(conn, sent); err != nil {
			t.Fatal(err)
		}
		if _, err := br.ReadByte(); err != io.EOF {
			t.Fatalf("after %q: read %v, want the edge to close (EOF)", sent, err)
		}
	}

	// Stopping: another edge, with a handshake pending.
	stopped := startEdge(t, ns, nil)
	conn, br := rawConn(t, stopped)
	if _, err := io.WriteString(conn, "GET /ws?user=x HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	// The connection is pending when the edge stops: the edge accepts in
	// order, so a health check on the same listener is answered after
	// the handshake has begun.
	if resp, err := http.Get(stopped.url + "/healthz"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}
	if err := stopped.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("pending handshake after the edge stopped: %v, want EOF", err)
	}
}
