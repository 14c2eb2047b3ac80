package ws

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// closeGrace is how long a closing connection waits for the peer's close
// frame, and then for its end of the TCP connection, before closing hard.
const closeGrace = time.Second

// slowText is the reason a connection cut off as slow is closed with.
const slowText = "slow client: send queue full"

// Push's errors.
var (
	// ErrClosing: the connection is closing, and nothing more is queued.
	ErrClosing = errors.New("ws: connection closing")
	// ErrSlow: the send queue held SendQueue live events, and the
	// connection has been cut off (close 1008).
	ErrSlow = errors.New("ws: " + slowText)
)

// Handler is what a connection's messages go to: the edge's session.
type Handler interface {
	// Open starts the handler on c, once the connection is upgraded and
	// before anything is read or written: what it queues goes out first,
	// after the handshake's answer.
	Open(c *Conn)
	// Text handles a text message, valid UTF-8. It runs on the
	// connection's reader, so a connection's messages come one at a time
	// and in order, and the next is not read until Text has returned.
	Text(p []byte)
	// Closed is called once, when the connection is let go of: its
	// reading has ended and its socket is closed. code is the close code
	// it ended with (RFC 6455: the one sent, or the client's own echoed;
	// 1005 for a close frame without one, 1006 when none was sent) and
	// reason why, never the client's own words. A handler that was
	// admitted but never opened (its upgrade failed, or the server was
	// stopping) gets Closed without Open.
	Closed(code int, reason string)
}

// Conn is one upgraded WebSocket connection: its send queue, its reading,
// writing, pings and closing. What it reads goes to its handler.
type Conn struct {
	// What a push touches comes first, together: the dispatcher pushes to
	// every member of a room in turn, and each member's fields are
	// usually out of the cache by then.
	mu sync.Mutex
	// closed is closing, for Closing without the lock.
	closed atomic.Bool
	// closing tells whether closing has begun; guarded by mu, with
	// closeCode and closeText below.
	closing bool
	// Who writes (flush.go), guarded by mu: serving is set once serve
	// has started, and from then on signal hands the connection to its
	// flusher (scheduled), unless a slow writer owns the socket (slow),
	// or finish does (finishing). pingDue asks for a ping, pong (below)
	// holds the pong frame to send (nil: none), which answers the latest
	// ping.
	serving   bool
	scheduled bool
	slow      bool
	finishing bool
	pingDue   bool
	waiting   bool // guarded by mu: a reply waits on space
	// queue holds encoded events for the writer; guarded by mu. Live
	// events (Push) count against the slow-client limit: live is how many
	// of them are queued. Replies (Reply) never cut the connection off:
	// the reader waits on space instead, so a client that floods
	// requests is slowed down by its own reading.
	live  int
	queue [][]byte
	// oldest is the ts (Unix ms) of the oldest stored event queued live
	// since the queue was last taken, 0 when none was: the write that
	// takes them observes its delivery time (flush.go). Guarded by mu.
	oldest int64
	s      *Server
	// flusher writes what is queued (flush.go).
	flusher *flusher

	space sync.Cond // on mu; signalled when the queue is taken to be written (flush.go) or closing begins
	// closeCode is the close code to send once closing has begun, -1
	// when none is to be sent. closeText is the close frame's reason,
	// and Closed's: never the client's own words (empty only when the
	// client closed, with a code of its own). Guarded by mu.
	closeCode int
	closeText string
	pong      []byte // guarded by mu
	// preamble is written before anything else: the handshake's answer,
	// which goes out with what Open queued (upgrade.go). Guarded by mu.
	preamble []byte
	// accepted is when the connection was accepted, while the
	// preamble is still to be written: its write observes the
	// handshake's time. Zero when there is none. Guarded by mu.
	accepted time.Time

	nc net.Conn // nil for an unserved connection (Server.Unserved)
	h  Handler
	// watch is the poller's watch of nc (set by serve); frames parses
	// what the reader reads. Only the reader (readable, one turn at a
	// time) uses frames.
	watch  *Watch
	frames Reader
	// heard is when the client last sent anything (unix nanoseconds):
	// the pinger drops it after PongTimeout without.
	heard atomic.Int64
	// ends counts down the two ends of a connection, its reading and its
	// finish; the one that comes second lets go of it (Server.letGo).
	ends atomic.Int32
	// readerDone is closed when the reading has ended.
	readerDone chan struct{}
	// pingSlot is the pinger's turn for this connection (ping.go).
	pingSlot int
	// waited is Unserved's hook: it runs when a reply begins to wait.
	waited func()
}

func (s *Server) newConn(nc net.Conn) *Conn {
	c := &Conn{s: s, nc: nc, flusher: s.nextFlusher(), readerDone: make(chan struct{})}
	c.space.L = &c.mu
	c.heard.Store(time.Now().UnixNano())
	c.frames.Limit = s.cfg.FrameLimit
	c.ends.Store(2)
	return c
}

// Reply queues line, an answer to the client's own request. It waits
// while the send queue holds SendQueue events, and never cuts the
// connection off; it drops line when the connection is closing. Only the
// reader calls it (the handler's Open and Text), so that a client that
// floods requests waits for its own answers to be written.
func (c *Conn) Reply(line []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waitSpaceLocked() {
		c.queue = append(c.queue, line)
		c.signal()
	}
}

// WaitSpace waits until a Reply would not wait, or the connection is
// closing; it reports whether there is room.
func (c *Conn) WaitSpace() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.waitSpaceLocked()
}

// Full reports whether a Reply would wait now.
func (c *Conn) Full() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closing && len(c.queue) >= c.s.cfg.SendQueue
}

func (c *Conn) waitSpaceLocked() bool {
	for !c.closing && len(c.queue) >= c.s.cfg.SendQueue {
		c.waiting = true
		if c.waited != nil {
			c.waited()
		}
		c.space.Wait()
		c.waiting = false
	}
	return !c.closing
}

// Push queues line, a live event: one the client did not ask for. ts is a
// stored event's ts (Unix ms; 0: none), whose delivery time the write
// that carries it observes; keeping the oldest is a compare and a store,
// no clock read. Push never waits: when the queue already holds
// SendQueue live events it cuts the connection off (close 1008) and
// returns ErrSlow; ErrClosing when the connection is closing.
func (c *Conn) Push(line []byte, ts int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return ErrClosing
	}
	if c.live >= c.s.cfg.SendQueue {
		c.closeLocked(ClosePolicyViolation, slowText)
		return ErrSlow
	}
	c.queue = append(c.queue, line)
	c.live++
	if ts > 0 && (c.oldest == 0 || ts < c.oldest) {
		c.oldest = ts
	}
	c.signal()
	return nil
}

// CutOff closes a connection that has fallen too far behind, as Push
// does when its queue is full: 1008 "slow client: send queue full".
func (c *Conn) CutOff() { c.Close(ClosePolicyViolation, slowText) }

// Close begins closing the connection with code (one a server sends,
// such as CloseGoingAway) and text: what is queued is dropped, nothing
// more is read or queued, the close frame goes out, and the connection
// is let go of once the client has answered, or after a second. Closing
// a closing connection does nothing.
func (c *Conn) Close(code int, text string) { c.close(code, text) }

// Closing reports whether the connection is closing: from then on
// nothing more is queued or read. It takes no lock.
func (c *Conn) Closing() bool { return c.closed.Load() }

// Heard returns when the client last sent anything: within a turn of
// the reader (Text), right after the read that completed the message.
func (c *Conn) Heard() time.Time { return time.Unix(0, c.heard.Load()) }

// closeEmpty is the close code that sends a close frame without a code:
// the answer to a client's close frame without one.
const closeEmpty = 0

// close begins closing with code (-1: send no close frame; closeEmpty: a
// close frame without a code).
func (c *Conn) close(code int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, text)
}

func (c *Conn) closeLocked(code int, text string) {
	if c.closing {
		return
	}
	c.closing, c.closeCode, c.closeText = true, code, text
	c.closed.Store(true)
	c.queue, c.live = nil, 0
	c.space.Broadcast()
	c.signal()
}

// closedAs is the close code the connection ended with, and why, as
// Closed gets them.
func (c *Conn) closedAs() (code int, reason string) {
	c.mu.Lock()
	code, reason = c.closeCode, c.closeText
	c.mu.Unlock()
	if reason == "" {
		// Only the client's close frame gives a code without a text; its
		// own reason is never kept.
		reason = "closed by the client"
		if code < 0 {
			reason = "connection lost"
		}
	}
	switch {
	case code < 0:
		code = CloseAbnormal
	case code == closeEmpty:
		code = CloseNoStatus
	}
	return code, reason
}

// readable is a turn of the reader, the only reader of the socket: the
// poller runs it when the socket has something to read. It hands the
// messages read to the handler, one at a time and in order, and asks
// for the next turn, until the client goes away, breaks the protocol or
// is closed.
func (c *Conn) readable(w *Watch) {
	bp := c.s.readBuffers.Get().(*[]byte)
	n, err := w.Read(*bp)
	if err == nil && n > 0 {
		c.heard.Store(time.Now().UnixNano())
		err = c.frames.Feed((*bp)[:n], c.frame)
		if we, ok := errors.AsType[*Error](err); ok {
			c.close(we.Code, we.Text)
		}
	}
	c.s.readBuffers.Put(bp)
	switch {
	case errors.Is(err, unix.EAGAIN):
		// Nothing to read after all.
	case err != nil || n == 0:
		c.close(-1, "connection lost") // gone
	}
	if c.Closing() {
		w.End()
		c.readEnded()
		return
	}
	if !w.Resume() {
		// Stopped meanwhile (closing already), or the socket cannot be
		// watched any more: either way the connection is over.
		c.close(-1, "connection not watched")
		c.readEnded()
	}
}

// frame handles one message or control frame from the client; it reports
// whether to go on reading.
func (c *Conn) frame(op Op, p []byte) bool {
	switch op {
	case OpText:
		if c.Closing() {
			return false // cut off or stopping: nothing more is taken
		}
		if !utf8.Valid(p) {
			c.close(CloseInvalidPayload, "text frame is not valid UTF-8")
			return false
		}
		c.s.m.FramesIn.Inc()
		c.h.Text(p)
		return !c.Closing()
	case OpBinary:
		c.close(CloseUnsupportedData, "binary frames are not supported")
		return false
	case OpPing:
		c.mu.Lock()
		if !c.closing {
			c.pong = AppendFrame(nil, OpPong, p) // never nil, even for an empty ping
			c.signal()
		}
		c.mu.Unlock()
		return true
	case OpClose:
		// The client closes: its code goes back, and the connection ends.
		code := CloseCode(p)
		if code == CloseNoStatus {
			code = closeEmpty
		}
		c.close(code, "")
		return false
	default: // a pong: heard already
		return true
	}
}

// readEnded is the end of the reading, once: with finish, the connection
// is over.
func (c *Conn) readEnded() {
	close(c.readerDone)
	c.ended()
}

// ended counts one end of the connection; the second lets go of it.
func (c *Conn) ended() {
	if c.ends.Add(-1) == 0 {
		c.s.letGo(c)
	}
}

// serve starts the connection: the poller's watch for the reader (w, the
// handshake's, in its turn, or a new one), and its flusher for what is
// queued already (what Open queued, or a close).
func (c *Conn) serve(w *Watch) {
	handed := w != nil
	if handed {
		w.Hand(c.readable)
	} else {
		sc, ok := c.nc.(syscall.Conn)
		err := errors.New("not a socket")
		if ok {
			w, err = c.s.poller.Watch(sc, c.readable)
		}
		if err != nil {
			c.s.log.Warn("connection not watched", "err", err)
			c.close(-1, "connection not watched")
			c.readEnded()
		}
	}
	c.mu.Lock()
	c.watch = w
	c.serving = true
	c.signal()
	c.mu.Unlock()
	if handed && !w.Resume() {
		c.readEnded() // closed meanwhile
	}
}

// finish sends the close frame, if any, waits a moment for the peer, and
// closes the connection. It runs on a goroutine of its own, once: the
// writer that found the connection closing (flush.go) hands the socket
// to it.
func (c *Conn) finish() {
	c.mu.Lock()
	code, text := c.closeCode, c.closeText
	w := c.watch
	frame := c.preamble // the handshake's answer, if not sent yet
	c.preamble = nil
	c.mu.Unlock()
	if code >= 0 {
		if code == closeEmpty {
			frame = AppendFrame(frame, OpClose, nil)
		} else {
			frame = AppendClose(frame, code, text)
		}
	}
	if len(frame) > 0 {
		_ = c.nc.SetWriteDeadline(time.Now().Add(closeGrace))
		_, _ = c.nc.Write(frame)
	}
	if code < 0 && w != nil {
		// No close frame, so no answer to wait for: the peer is gone
		// (its reader is ending, and Stop leaves the end to it) or is
		// dropped without a word.
		_ = c.nc.Close()
		if w.Stop() {
			c.readEnded()
		}
		c.ended()
		return
	}
	select {
	case <-c.readerDone:
		c.linger()
		_ = c.nc.Close()
	case <-time.After(closeGrace):
		// The peer did not answer: the reading stops here, unless a
		// reader is running, which finds the socket closed.
		_ = c.nc.Close()
		if w != nil && w.Stop() {
			c.readEnded()
		}
	}
	c.ended()
}

// linger reads what the peer still sends, briefly, after the reading has
// ended: closing a socket with unread data makes the kernel reset the
// connection, and a reset can destroy the close frame before the peer has
// read it.
func (c *Conn) linger() {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.CopyN(io.Discard, c.nc, 1<<20)
}
