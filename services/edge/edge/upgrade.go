package edge

import (
	"bytes"
	"cmp"
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

	"github.com/natter-chat/natter/services/edge/ws"
)

// The edge's own handshake. The edge accepts its connections itself and
// reads each one's request with the poller, without a goroutine: a plain
// WebSocket request (GET /ws, HTTP/1.1, the upgrade headers, nothing after
// them) is answered here, everything else is handed to net/http with the
// bytes read so far, and net/http serves it as usual (the page, /metrics,
// and any WebSocket request that is not plain, through serveWS and
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
func (e *Edge) acceptLoop(ln net.Listener, http *handoff) {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || http.isClosed() {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			e.log.Warn("accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-http.done:
				return
			}
			continue
		}
		backoff = 0
		e.handshake(conn)
	}
}

// handshake is a connection whose request is being read.
type handshake struct {
	e    *Edge
	conn net.Conn
	buf  []byte // the request so far; only its reader uses it
	seen int    // how much of buf was searched for the head's end
	// accepted is when conn was accepted: natter_edge_handshake_seconds
	// counts from there.
	accepted time.Time

	mu    sync.Mutex
	w     *ws.Watch   // guarded by mu
	timer *time.Timer // guarded by mu: handshakeTimeout; counted in Edge.timers
	over  bool        // guarded by mu: finish has been called
}

// handshake starts reading conn's request; it is called as soon as conn
// is accepted, and the handshake's time starts here.
func (e *Edge) handshake(conn net.Conn) {
	accepted := time.Now()
	sc, ok := conn.(syscall.Conn)
	if !ok {
		e.handOff(conn, nil, accepted) // not a socket the poller can watch
		return
	}
	h := &handshake{e: e, conn: conn, accepted: accepted}
	e.mu.Lock()
	if e.stopping {
		e.mu.Unlock()
		_ = conn.Close()
		return
	}
	e.handshakes[h] = struct{}{}
	e.mu.Unlock()
	// The watch is made under mu: a turn that runs at once (the request
	// came with the connection) waits in finish until the watch and the
	// timer are known, and so does an abort.
	h.mu.Lock()
	if h.over {
		h.mu.Unlock()
		return // aborted already (closeHandshakes), which closed the socket
	}
	w, err := e.poller.Watch(sc, h.readable)
	if e.testHookWatched != nil {
		e.testHookWatched()
	}
	if err != nil {
		h.mu.Unlock()
		e.log.Warn("connection not watched", "err", err)
		if h.finish() {
			_ = conn.Close()
		}
		return
	}
	h.w = w
	// The timer's goroutine is counted until it has run or been stopped,
	// so that Run waits for it (timers: only the accept loop adds, and
	// Run waits once that has ended).
	e.timers.Add(1)
	h.timer = time.AfterFunc(cmp.Or(e.cfg.HandshakeTimeout, handshakeTimeout), func() {
		defer e.timers.Done()
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
		h.e.timers.Done() // it will not run
	}
	h.mu.Unlock()
	h.e.mu.Lock()
	delete(h.e.handshakes, h)
	h.e.mu.Unlock()
	return true
}

// abort closes a connection that took too long to send its request, or
// that the edge closes while stopping.
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
func (e *Edge) closeHandshakes() {
	e.mu.Lock()
	hs := make([]*handshake, 0, len(e.handshakes))
	for h := range e.handshakes {
		hs = append(hs, h)
	}
	e.mu.Unlock()
	for _, h := range hs {
		h.abort()
	}
}

var (
	headEnd   = []byte("\r\n\r\n")
	bareBlank = []byte("\n\n") // a head that ends with bare line feeds: net/http's
)

// readable is a turn of the handshake's reader: it reads what came of the
// request, and once the head is whole, answers it or hands it on.
func (h *handshake) readable(w *ws.Watch) {
	bp := h.e.readBuffers.Get().(*[]byte)
	n, err := w.Read(*bp)
	if n > 0 {
		h.buf = append(h.buf, (*bp)[:n]...)
	}
	h.e.readBuffers.Put(bp)
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
	var req ws.Request
	var key string
	ok := false
	// Else longer than maxHead, not ended by CRLF, or with something
	// (early frames) after the head.
	if end >= 0 && len(h.buf) == end+len(headEnd) {
		req, key, ok = ws.ParsePlain(h.buf)
	}
	if !ok {
		w.End()
		h.e.handOff(h.conn, h.buf, h.accepted)
		return
	}
	req.Remote = h.conn.RemoteAddr().String()
	h.e.metrics.handshakes.WithLabelValues("edge").Inc()
	h.e.upgrade(h.conn, req, key, w, h.accepted)
}

// upgrade answers a plain WebSocket request read by the handshake, whose
// watch, in its turn, goes on as the client's; conn was accepted at
// accepted.
func (e *Edge) upgrade(conn net.Conn, r ws.Request, key string, w *ws.Watch, accepted time.Time) {
	user, addr, no := e.admit(r)
	if no != nil {
		w.End()
		_ = conn.SetWriteDeadline(time.Now().Add(e.cfg.Limits.WriteTimeout))
		_, _ = conn.Write(refusalResponse(no))
		_ = conn.Close()
		return
	}
	// The answer goes out with the welcome, in one write: a syscall less
	// per connection (bench/, F). That write observes the handshake's
	// time (flush.go).
	e.start(conn, user, addr, switchingResponse(key), accepted, w)
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

// refusalResponse is what http.Error writes for no, and the connection
// closes after it.
func refusalResponse(no *refusal) []byte {
	body := no.text + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", no.status, http.StatusText(no.status))
	if no.status == http.StatusTooManyRequests {
		b.WriteString("Retry-After: 10\r\n")
	}
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\n")
	b.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\nConnection: close\r\n\r\n" + body)
	return []byte(b.String())
}

// handOff gives conn, accepted at accepted, to net/http, which reads read
// first.
func (e *Edge) handOff(conn net.Conn, read []byte, accepted time.Time) {
	e.metrics.handshakes.WithLabelValues("http").Inc()
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
	case e.http.conns <- conn:
	case <-e.http.done:
		_ = conn.Close()
	}
}

// handoff is the listener net/http serves: the connections the edge's
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

// Close closes the edge's listener too: net/http's shutdown stops the
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
// WebSocket request that net/http serves (serveWS).
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
// the prefix (a WebSocket request upgraded by serveWS).
func (c *prefixConn) SyscallConn() (syscall.RawConn, error) {
	if len(c.prefix) > 0 {
		return nil, errors.New("edge: connection has unread bytes")
	}
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("edge: not a socket")
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
