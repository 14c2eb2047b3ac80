package ws

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The edge's own handshake against the path every other request takes:
// net/http's server, the edge's route and gorilla's Upgrader. A head that
// parsePlain refuses goes that path anyway, so parsePlain may refuse what
// they accept; what it accepts they must accept too, and read alike.

// gorillaServed is what the edge's net/http path made of a request head.
type gorillaServed struct {
	routed   bool    // the request reached the WebSocket route
	req      Request // requestOf the request net/http read
	key      string  // its Sec-WebSocket-Key
	upgrade  error   // the Upgrader's error
	response []byte  // all the client received
}

// oneConn is a listener that accepts conn once, then waits for Close.
type oneConn struct {
	conn   net.Conn
	once   sync.Once
	accept chan net.Conn
	closed chan struct{}
}

func newOneConn(conn net.Conn) *oneConn {
	l := &oneConn{accept: make(chan net.Conn, 1), closed: make(chan struct{})}
	l.accept <- conn
	return l
}

func (l *oneConn) Accept() (net.Conn, error) {
	select {
	case c := <-l.accept:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *oneConn) Close() error   { l.once.Do(func() { close(l.closed) }); return nil }
func (l *oneConn) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)} }

// serveGorilla serves head as the edge serves a request its handshake
// hands on: an http.Server, a mux with the edge's WebSocket route
// (Edge.Handler) and the Server's Upgrader (newUpgrader), over an
// in-memory connection. Keep-alives are off, so that the server closes
// the connection after its answer, whatever it is.
func serveGorilla(t *testing.T, head []byte) gorillaServed {
	t.Helper()
	u := newUpgrader()
	results := make(chan gorillaServed, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /", http.NotFound) // the page, in the edge
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		s := gorillaServed{routed: true, req: requestOf(r), key: r.Header.Get("Sec-Websocket-Key")}
		c, err := u.Upgrade(w, r, nil)
		s.upgrade = err
		// Sent before the connection closes: the client reads it after
		// the end of the answer.
		results <- s
		if err == nil {
			_ = c.Close()
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	srv.SetKeepAlivesEnabled(false)

	server, client := net.Pipe()
	ln := newOneConn(server)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	wrote := make(chan error, 1)
	go func() {
		_, err := client.Write(head)
		wrote <- err
	}()
	_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
	response, err := io.ReadAll(client)
	if err != nil {
		t.Fatalf("net/http's answer: %v (read %q)", err, response)
	}
	_ = client.Close()
	_ = srv.Close()
	<-served
	<-wrote

	var s gorillaServed
	select {
	case s = <-results:
	default:
	}
	s.response = response
	return s
}

// FuzzParsePlainAgainstGorilla checks that what the edge's handshake
// takes for a plain WebSocket request is taken by the path it would
// otherwise take: net/http's server reads it (its checks of hosts and
// header fields included, which http.ReadRequest alone does not make),
// routes it to the WebSocket route, gorilla's Upgrader upgrades it, and
// both read the same host, origin, proxies, user, token and key. The
// edge's 101 must be gorilla's, byte for byte. It is stronger than
// FuzzParsePlain, which compares with http.ReadRequest only. The edge
// reads no Authorization header (the token comes in the query), so there
// is none to compare.
//
//	go test -run '^$' -fuzz '^FuzzParsePlainAgainstGorilla$' ./services/edge/edge
func FuzzParsePlainAgainstGorilla(f *testing.F) {
	f.Add([]byte(plainHead("/ws?user=amy")))
	f.Add([]byte(plainHead("/ws?token=a.b.c&user=x%20y", "Origin: https://chat.example\r\n",
		"X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n", "x-forwarded-for: 10.0.0.3\r\n")))
	f.Add([]byte("GET /ws?user=bo HTTP/1.1\r\nhost:\t[::1]:80 \r\nupgrade: WebSocket\r\n" +
		"CONNECTION: keep-alive, Upgrade\r\nsec-websocket-key:dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"sec-websocket-version: 13\r\nAuthorization: Bearer a.b.c\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		r, key, ok := parsePlain(head)
		if !ok {
			return
		}
		s := serveGorilla(t, head)
		if !s.routed {
			t.Fatalf("taken as plain; net/http answers %q", s.response)
		}
		if s.upgrade != nil {
			t.Fatalf("taken as plain; gorilla refuses it: %v", s.upgrade)
		}
		g := s.req
		if g.Host != r.Host || g.Origin != r.Origin || !slices.Equal(g.Forwarded, r.Forwarded) ||
			g.Query("user") != r.Query("user") || g.Query("token") != r.Query("token") || s.key != key {
			t.Fatalf("read otherwise:\nedge %+v key %q\nnet/http %+v key %q", r, key, g, s.key)
		}
		if want := switchingResponse(key); !bytes.Equal(s.response, want) {
			t.Fatalf("gorilla answers %q; the edge %q", s.response, want)
		}
	})
}

// TestServeGorillaRefuses checks the comparison's own path: what
// net/http or gorilla refuse shows as such.
func TestServeGorillaRefuses(t *testing.T) {
	tests := []struct {
		name, head string
		routed     bool
		status     string
	}{
		{"two hosts", plainHead("/ws", "Host: other\r\n"), false, "HTTP/1.1 400 "},
		{"another path", plainHead("/wsx"), false, "HTTP/1.1 404 "},
		{"version 8", strings.Replace(plainHead("/ws"), "Version: 13", "Version: 8", 1), true, "HTTP/1.1 400 "},
		{"plain", plainHead("/ws"), true, "HTTP/1.1 101 "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := serveGorilla(t, []byte(tt.head))
			if s.routed != tt.routed || !strings.HasPrefix(string(s.response), tt.status) {
				t.Fatalf("routed %v, answer %q; want routed %v, %q", s.routed, s.response, tt.routed, tt.status)
			}
		})
	}
}
