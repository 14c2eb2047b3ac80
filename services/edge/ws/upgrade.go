package ws

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The wire's own handshake. The server accepts its connections itself and
// reads each one's request with the poller, without a goroutine: a plain
// WebSocket request (GET /ws, HTTP/1.1, the upgrade headers, nothing after
// them) is answered here, everything else is handed to net/http with the
// bytes read so far, and net/http serves it as usual (the page, /metrics,
// and any WebSocket request that is not plain, through ServeHTTP and
// gorilla). On a connect burst net/http's goroutine, buffers and request
// per connection were a third of the edge's CPU and most of its garbage
// (bench/, F).

// handshakeTimeout bounds the time a connection may take to send its
// request (unless Config.HandshakeTimeout says otherwise), as net/http's
// ReadHeaderTimeout does for the rest (ops.Serve).
const handshakeTimeout = 10 * time.Second

// maxHead is the longest request head read here; a longer one goes to
// net/http, whose limit is larger.
const maxHead = 16 << 10

// acceptLoop accepts the connections of ln until it is closed, and starts
// each one's handshake. It backs off on errors such as running out of
// file descriptors, as net/http does.
func (s *Server) acceptLoop(ln net.Listener, http *handoff) {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || http.isClosed() {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-http.done:
				return
			}
			continue
		}
		backoff = 0
		s.handshake(conn)
	}
}

// handshake is a connection whose request is being read.
type handshake struct {
	s    *Server
	conn net.Conn
	buf  []byte // the request so far; only its reader uses it
	seen int    // how much of buf was searched for the head's end
	// accepted is when conn was accepted: Metrics.Handshake counts from
	// there.
	accepted time.Time

	mu    sync.Mutex
	w     *Watch      // guarded by mu
	timer *time.Timer // guarded by mu: HandshakeTimeout; counted in Server.timers
	over  bool        // guarded by mu: finish has been called
}

// handshake starts reading conn's request; it is called as soon as conn
// is accepted, and the handshake's time starts here.
func (s *Server) handshake(conn net.Conn) {
	accepted := time.Now()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		s.handOff(conn, nil, accepted) // not a socket the poller can watch
		return
	}
	h := &handshake{s: s, conn: conn, accepted: accepted}
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	s.handshakes[h] = struct{}{}
	s.mu.Unlock()
	// The watch is made under mu: a turn that runs at once (the request
	// came with the connection) waits in finish until the watch and the
	// timer are known, and so does an abort.
	h.mu.Lock()
	if h.over {
		h.mu.Unlock()
		return // aborted already (closeHandshakes), which closed the socket
	}
	w, err := s.poller.Watch(sc, h.readable)
	if s.testHookWatched != nil {
		s.testHookWatched()
	}
	if err != nil {
		h.mu.Unlock()
		s.log.Warn("connection not watched", "err", err)
		if h.finish() {
			_ = conn.Close()
		}
		return
	}
	h.w = w
	// The timer's goroutine is counted until it has run or been stopped,
	// so that Run waits for it (timers: only the accept loop adds, and
	// Run waits once that has ended).
	s.timers.Add(1)
	h.timer = time.AfterFunc(s.cfg.HandshakeTimeout, func() {
		defer s.timers.Done()
		h.abort()
	})
	h.mu.Unlock()
}

// finish claims the end of the handshake: it reports false when the
// handshake had ended already (aborted).
func (h *handshake) finish() bool {
	h.mu.Lock()
	if h.over {
		h.mu.Unlock()
		return false
	}
	h.over = true
	if h.timer != nil && h.timer.Stop() {
		h.s.timers.Done() // it will not run
	}
	h.mu.Unlock()
	h.s.mu.Lock()
	delete(h.s.handshakes, h)
	h.s.mu.Unlock()
	return true
}

// abort closes a connection that took too long to send its request, or
// that the server closes while stopping.
func (h *handshake) abort() {
	if !h.finish() {
		return
	}
	h.mu.Lock()
	w := h.w
	h.mu.Unlock()
	if w != nil {
		w.Stop() // a turn that is running finds the socket closed
	}
	_ = h.conn.Close()
}

// closeHandshakes aborts the handshakes in progress.
func (s *Server) closeHandshakes() {
	s.mu.Lock()
	hs := make([]*handshake, 0, len(s.handshakes))
	for h := range s.handshakes {
		hs = append(hs, h)
	}
	s.mu.Unlock()
	for _, h := range hs {
		h.abort()
	}
}

// bareBlank ends a head with bare line feeds, which net/http reads.
var bareBlank = []byte("\n\n")

// readable is a turn of the handshake's reader: it reads what came of the
// request, and once the head is whole, answers it or hands it on.
func (h *handshake) readable(w *Watch) {
	bp := h.s.readBuffers.Get().(*[]byte)
	n, err := w.Read(*bp)
	if n > 0 {
		h.buf = append(h.buf, (*bp)[:n]...)
	}
	h.s.readBuffers.Put(bp)
	// Search what came, and the three bytes before it.
	from := max(h.seen-3, 0)
	end, bare := bytes.Index(h.buf[from:], headEnd), bytes.Contains(h.buf[from:], bareBlank)
	if end >= 0 {
		end += from
	}
	h.seen = len(h.buf)
	switch {
	case errors.Is(err, unix.EAGAIN) || (err == nil && n > 0 && end < 0 && !bare && len(h.buf) <= maxHead):
		if !w.Resume() && h.finish() {
			_ = h.conn.Close()
		}
		return
	case err != nil || n == 0:
		// Gone before its request was whole.
		w.End()
		if h.finish() {
			_ = h.conn.Close()
		}
		return
	}
	if !h.finish() {
		w.End()
		return // aborted meanwhile: the socket is closed
	}
	var req Request
	var key string
	ok := false
	// Else longer than maxHead, not ended by CRLF, or with something
	// (early frames) after the head.
	if end >= 0 && len(h.buf) == end+len(headEnd) {
		req, key, ok = parsePlain(h.buf)
	}
	if !ok {
		w.End()
		h.s.handOff(h.conn, h.buf, h.accepted)
		return
	}
	req.Remote = h.conn.RemoteAddr().String()
	h.s.m.Answered.Inc()
	h.s.upgrade(h.conn, req, key, w, h.accepted)
}

// upgrade answers a plain WebSocket request read by the handshake, whose
// watch, in its turn, goes on as the connection's; conn was accepted at
// accepted.
func (s *Server) upgrade(conn net.Conn, r Request, key string, w *Watch, accepted time.Time) {
	h, no := s.cfg.Admit(r)
	if no != nil {
		w.End()
		_ = conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, _ = conn.Write(refusalResponse(no))
		_ = conn.Close()
		return
	}
	// The answer goes out with what Open queues, in one write: a syscall
	// less per connection (bench/, F). That write observes the
	// handshake's time (flush.go).
	s.start(conn, h, switchingResponse(key), accepted, w)
}

// ServeHTTP serves the WebSocket requests that net/http gets: those the
// server's own handshake passed on, because they were not plain. It asks
// Admit, then upgrades with gorilla/websocket.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, no := s.cfg.Admit(requestOf(r))
	if no != nil {
		if no.Status == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "10")
		}
		http.Error(w, no.Text, no.Status)
		return
	}
	wc, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		h.Closed(CloseAbnormal, "not upgraded") // the upgrader has answered
		return
	}
	// The upgrader has written its 101; the connection is the one the
	// handshake handed on, which knows when it was accepted when this
	// request was its first.
	if pc, ok := wc.NetConn().(*prefixConn); ok && !pc.accepted.IsZero() {
		s.m.Handshake.Observe(time.Since(pc.accepted).Seconds())
	}
	// From here on the socket is read and written by the server: gorilla
	// did the handshake, and holds no data read past it (it refuses a
	// client that sends before the handshake is complete).
	s.start(wc.NetConn(), h, nil, time.Time{}, nil)
}

// switchingResponse is the 101 answer to a request with key (RFC 6455,
// 4.2.2).
func switchingResponse(key string) []byte {
	const (
		guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
		head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
	)
	var in [64]byte
	sum := sha1.Sum(append(append(in[:0], key...), guid...))
	out := make([]byte, 0, len(head)+base64.StdEncoding.EncodedLen(len(sum))+len(headEnd))
	out = base64.StdEncoding.AppendEncode(append(out, head...), sum[:])
	return append(out, headEnd...)
}

// refusalResponse is what ServeHTTP writes for no (through http.Error),
// and the connection closes after it.
func refusalResponse(no *Refusal) []byte {
	body := no.Text + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", no.Status, http.StatusText(no.Status))
	if no.Status == http.StatusTooManyRequests {
		b.WriteString("Retry-After: 10\r\n")
	}
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n")
	b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body)
	return []byte(b.String())
}

// handOff gives conn, accepted at accepted, to net/http, which reads read
// first.
func (s *Server) handOff(conn net.Conn, read []byte, accepted time.Time) {
	s.m.HandedOn.Inc()
	if !bytes.HasPrefix(read, []byte("GET /ws ")) && !bytes.HasPrefix(read, []byte("GET /ws?")) {
		// Timed only when its first request is for the WebSocket: net/http
		// may serve other requests on a kept-alive connection (the page,
		// through a proxy's pool) before an upgrade, which would then
		// count the connection's age.
		accepted = time.Time{}
	}
	if len(read) > 0 {
		conn = &prefixConn{Conn: conn, prefix: read, accepted: accepted}
	}
	select {
	case s.http.conns <- conn:
	case <-s.http.done:
		_ = conn.Close()
	}
}

// handoff is the listener net/http serves: the connections the
// handshake hands it.
type handoff struct {
	ln    net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newHandoff(ln net.Listener) *handoff {
	return &handoff{ln: ln, conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the server's listener too: net/http's shutdown stops the
// accepting.
func (l *handoff) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
	})
	return err
}

func (l *handoff) Addr() net.Addr { return l.ln.Addr() }

func (l *handoff) isClosed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// prefixConn is a connection whose first bytes were read already;
// accepted is when it was accepted, for the handshake's time of a
// WebSocket request that net/http serves (ServeHTTP).
type prefixConn struct {
	net.Conn
	prefix []byte
	// accepted is zero for a connection not timed.
	accepted time.Time
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// SyscallConn lets the poller watch the socket once net/http has read
// the prefix (a WebSocket request upgraded by ServeHTTP).
func (c *prefixConn) SyscallConn() (syscall.RawConn, error) {
	if len(c.prefix) > 0 {
		return nil, errors.New("ws: connection has unread bytes")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("ws: not a socket")
	}
	return sc.SyscallConn()
}

// CloseWrite half-closes the socket, for linger.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return io.ErrUnexpectedEOF
}
