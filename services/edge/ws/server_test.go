package ws

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/natter-chat/natter/shared/config"
)

// testConfig is a server's configuration for the tests: the edge's
// default limits (config.Defaults), but a small send queue and no write
// delay, so that a test's events go out at once.
func testConfig() Config {
	lim := config.Defaults[config.Limits]()
	return Config{
		FrameLimit: int(lim.MaxFrameBytes), SendQueue: 16, WriteTimeout: lim.WriteTimeout,
		PingInterval: lim.PingInterval, PongTimeout: lim.PongTimeout,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// session is a handler for the tests: it answers each text message with
// the message itself, and reports its connection once open and how it
// closed.
type session struct {
	open   func(*Conn) // runs in Open, before the connection is served; may be nil
	conn   *Conn
	opened chan *Conn
	closed chan closedAs
}

// closedAs is how a session's connection ended, as Closed was told.
type closedAs struct {
	code   int
	reason string
	opened bool
}

func newSession(open func(*Conn)) *session {
	return &session{open: open, opened: make(chan *Conn, 1), closed: make(chan closedAs, 1)}
}

func (s *session) Open(c *Conn) {
	s.conn = c
	if s.open != nil {
		s.open(c)
	}
	s.opened <- c
}

func (s *session) Text(p []byte) { s.conn.Reply(slices.Clone(p)) }

func (s *session) Closed(code int, reason string) {
	s.closed <- closedAs{code: code, reason: reason, opened: s.conn != nil}
}

// ended waits for how s's connection ended.
func (s *session) ended(t *testing.T) closedAs {
	t.Helper()
	select {
	case e := <-s.closed:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("the connection was not let go of")
		return closedAs{}
	}
}

// harness is a running server: each request it admits gets a session
// that open sets up, which goes to sessions.
type harness struct {
	s        *Server
	addr     string
	sessions chan *session
	// wrap, when not nil, wraps the loopback listener the server runs on.
	wrap func(net.Listener) net.Listener
}

// start runs a server with testConfig, changed by change (when not nil),
// on a loopback listener, admitting every request; until the test ends,
// when it stops the server and waits for it.
func start(t *testing.T, change func(*Config), open func(*Conn)) *harness {
	t.Helper()
	return startOn(t, nil, change, open)
}

// startOn is start on the loopback listener wrapped by wrap (nil: as it
// is).
func startOn(t *testing.T, wrap func(net.Listener) net.Listener, change func(*Config), open func(*Conn)) *harness {
	t.Helper()
	h := &harness{sessions: make(chan *session, 16), wrap: wrap}
	cfg := testConfig()
	cfg.Admit = func(Request) (Handler, *Refusal) {
		s := newSession(open)
		h.sessions <- s
		return s, nil
	}
	if change != nil {
		change(&cfg)
	}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.s = s
	h.run(t)
	return h
}

// run runs h.s on a loopback listener (wrapped by h.wrap) until the test
// ends.
func (h *harness) run(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if h.wrap != nil {
		ln = h.wrap(ln)
	}
	h.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	mux := http.NewServeMux()
	mux.Handle("GET /ws", h.s)
	go func() { done <- h.s.Run(ctx, ln, mux) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(20 * time.Second):
			t.Error("the server did not stop")
		}
	})
}

// dial connects a WebSocket client to h, closed when the test ends, and
// returns it with its session.
func (h *harness) dial(t *testing.T) (*websocket.Conn, *session) {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+h.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, <-h.sessions
}

// A text message goes to the handler, and its reply back.
func TestTextAndReply(t *testing.T) {
	h := start(t, nil, nil)
	conn, s := h.dial(t)
	if err := conn.WriteMessage(websocket.TextMessage, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, data, err := conn.ReadMessage(); err != nil || string(data) != "hello" {
		t.Fatalf("read %q, %v; want the message back", data, err)
	}
	conn.Close()
	if e := s.ended(t); e.code != CloseAbnormal || e.reason != "connection lost" || !e.opened {
		t.Fatalf("ended %+v; want 1006, connection lost", e)
	}
}

// What Closed is told, for each way a connection ends: the client's close
// code without its words, 1005 for a close frame without a code, the
// server's own code and reason, and the protocol's refusals.
func TestClosedSays(t *testing.T) {
	h := start(t, nil, nil)
	for _, tt := range []struct {
		name       string
		do         func(*websocket.Conn, *session)
		wantCode   int
		wantReason string
	}{
		{"the client closes", func(c *websocket.Conn, _ *session) {
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "my words"), time.Now().Add(time.Second))
		}, 4000, "closed by the client"},
		{"a close frame without a code", func(c *websocket.Conn, _ *session) {
			_ = c.WriteControl(websocket.CloseMessage, nil, time.Now().Add(time.Second))
		}, CloseNoStatus, "closed by the client"},
		{"the server closes", func(_ *websocket.Conn, s *session) {
			s.conn.Close(CloseInternalError, "missed messages")
		}, CloseInternalError, "missed messages"},
		{"text that is not UTF-8", func(c *websocket.Conn, _ *session) {
			_ = c.WriteMessage(websocket.TextMessage, []byte{0xff})
		}, CloseInvalidPayload, "text frame is not valid UTF-8"},
		{"a binary frame", func(c *websocket.Conn, _ *session) {
			_ = c.WriteMessage(websocket.BinaryMessage, []byte{1})
		}, CloseUnsupportedData, "binary frames are not supported"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, s := h.dial(t)
			<-s.opened
			tt.do(conn, s)
			_, _, err := conn.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != tt.wantCode {
				t.Fatalf("read %v; want close %d", err, tt.wantCode)
			}
			conn.Close() // the server lingers for it after the close frames
			if e := s.ended(t); e.code != tt.wantCode || e.reason != tt.wantReason {
				t.Fatalf("ended %+v; want %d, %q", e, tt.wantCode, tt.wantReason)
			}
		})
	}
}

// A refusal is answered in HTTP, by the wire's own handshake for a plain
// request and by net/http for one that is not; a 429 says when to come
// back. Each path is counted.
func TestRefusal(t *testing.T) {
	answered, handedOn := prometheus.NewCounter(prometheus.CounterOpts{Name: "a"}), prometheus.NewCounter(prometheus.CounterOpts{Name: "h"})
	h := start(t, func(c *Config) {
		c.Admit = func(Request) (Handler, *Refusal) {
			return nil, &Refusal{Status: http.StatusTooManyRequests, Text: "too many"}
		}
		c.Metrics.Answered, c.Metrics.HandedOn = answered, handedOn
	}, nil)
	for _, extra := range []string{"", "X-Not-Plain: caf\xc3\xa9\r\n"} {
		conn, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+extra+"\r\n")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "10" || string(body) != "too many\n" {
			t.Errorf("extra %q: %s, Retry-After %q, %q", extra, resp.Status, resp.Header.Get("Retry-After"), body)
		}
	}
	if a, h := counter(t, answered), counter(t, handedOn); a != 1 || h != 1 {
		t.Fatalf("answered %g, handed on %g; want 1 each", a, h)
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A connection that sends no request within the handshake timeout is
// closed, and the server still stops (it waits for the timeouts).
func TestHandshakeTimeout(t *testing.T) {
	h := start(t, func(c *Config) { c.HandshakeTimeout = 100 * time.Millisecond }, nil)
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /ws HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := conn.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d, %v; want the connection closed", n, err)
	}
	// A second one is still reading its request when the server stops.
	pending, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pending.Close()
}

// A client that sends nothing, not even a pong, for the pong timeout is
// dropped without a close frame.
func TestSilentClientDropped(t *testing.T) {
	h := start(t, func(c *Config) { c.PingInterval, c.PongTimeout = 20*time.Millisecond, 200*time.Millisecond }, nil)
	_, s := h.dial(t) // never read: its pongs are never sent
	if e := s.ended(t); e.code != CloseAbnormal || e.reason != "silent past the pong timeout" {
		t.Fatalf("ended %+v; want 1006, silent past the pong timeout", e)
	}
}

// Stopping the server closes every connection with 1001, after
// BeforeClose, and Run returns once they are let go of.
func TestStopClosesWith1001(t *testing.T) {
	before := make(chan struct{})
	cfg := testConfig()
	sessions := make(chan *session, 1)
	cfg.Admit = func(Request) (Handler, *Refusal) {
		s := newSession(nil)
		sessions <- s
		return s, nil
	}
	cfg.BeforeClose = func() { close(before) }
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln, srv) }()
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := <-sessions
	<-s.opened
	cancel()
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != CloseGoingAway || ce.Text != "server shutting down" {
		t.Fatalf("read %v; want close 1001", err)
	}
	conn.Close()
	select {
	case <-before:
	default:
		t.Fatal("the clients were closed before BeforeClose ran")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if e := s.ended(t); e.code != CloseGoingAway {
		t.Fatalf("ended %+v; want 1001", e)
	}
}

// A request that comes with its connection may be read by the poller
// while the accept loop is still making its handshake: the handshake
// must still end as one, and the connection go on reading (its ping gets
// a pong), and the server still stop. (The accept loop once took such a
// handshake for an aborted one and stopped the connection's reading.)
func TestRequestReadBeforeHandshakeIsMade(t *testing.T) {
	cfg := testConfig()
	cfg.Admit = func(Request) (Handler, *Refusal) { return newSession(nil), nil }
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The window is widened, not waited on: the reader may run in it.
	s.testHookWatched = func() { time.Sleep(100 * time.Millisecond) }
	h := &harness{s: s}
	h.run(t)

	conn, _, err := websocket.DefaultDialer.Dial("ws://"+h.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	pong := make(chan struct{}, 1)
	conn.SetPongHandler(func(string) error {
		pong <- struct{}{}
		return nil
	})
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	defer func() {
		conn.Close()
		<-read
	}()
	if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pong:
	case <-time.After(10 * time.Second):
		t.Fatal("no pong: the connection's reading was stopped")
	}
}
