package edge

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
	"golang.org/x/time/rate"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/proto"
)

// closeGrace is how long a closing connection waits for the peer's close
// frame, and then for its end of the TCP connection, before closing hard.
const closeGrace = time.Second

// client is one WebSocket connection.
type client struct {
	e       *Edge
	conn    net.Conn // upgraded: frames are read and written by ws
	user    string
	session string

	// watch is the poller's watch of conn; frames parses what the
	// reader reads. Only the reader (readable, one turn at a time) uses
	// frames.
	watch  *ws.Watch
	frames ws.Reader
	// opened is when the connection was made, for its closing line.
	opened time.Time
	// heard is when the client last sent anything (unix nanoseconds):
	// the pinger drops it after PongTimeout without.
	heard atomic.Int64
	// ends counts down the two ends of a connection, its reading and its
	// finish; the one that comes second lets go of the client (done).
	ends atomic.Int32
	done func()

	// flusher writes what is queued (flush.go); readerDone is closed
	// when the reading has ended.
	flusher    *flusher
	readerDone chan struct{}
	// pingSlot is the pinger's turn for this client (ping.go).
	pingSlot int

	mu sync.Mutex
	// queue holds encoded events for the writer; guarded by mu. Live
	// events (room messages, dms, presence and typing events) count
	// against the slow-client limit: live is how many of them are queued.
	// Answers to the client's own requests never cut it off: the read
	// pump waits on space instead, so a client that floods requests is
	// slowed down by its own reading.
	queue   [][]byte
	live    int
	space   *sync.Cond // on mu; signalled when the queue is taken to be written (flush.go) or closing begins
	waiting bool       // guarded by mu: the reader waits on space
	// oldest is the ts (Unix ms) of the oldest stored message or dm
	// queued live since the queue was last taken, 0 when none was: the
	// write that takes them observes its delivery time (flush.go).
	// Guarded by mu.
	oldest int64
	// rooms is the state of each joined (or joining) room; guarded by mu.
	rooms map[string]*roomState
	// convs is the state of each conversation a dm was delivered in;
	// made on the first, at most maxConvs of them (the quietest goes; a
	// conversation made again starts from convFloor). Guarded by mu.
	convs     map[conversation]*roomState
	convFloor uint64
	// dmFloor is the hub's dm floor when the session started (dm.go);
	// floorKnown is false when the hub had none (the dm stream could not
	// be read): then a conversation's first dm starts its gap check. Set
	// by hub.joinUser before the client is a member, never after.
	dmFloor    uint64
	floorKnown bool
	// typed is when a typing signal was last published per room; made on
	// the first. Guarded by mu.
	typed map[string]time.Time
	// limiter is the rate limit of the client's posts, made on the first;
	// only the reader uses it.
	limiter *rate.Limiter
	// addr is the client's address, counted against MaxConnsPerIP.
	addr string
	// closeCode is the close code to send once closing has begun, -1
	// when none is to be sent; closing tells whether it has begun.
	// closeText is the close frame's reason, and why the connection
	// closed in its closing line: never the client's own words (empty
	// only when the client closed, with a code of its own). Guarded by
	// mu.
	closing   bool
	closeCode int
	closeText string
	// Who writes (flush.go), guarded by mu: serving is set once serve
	// has started, and from then on signal hands the client to its
	// flusher (scheduled), unless a slow writer owns the socket (slow),
	// or finish does (finishing). pingDue asks for a ping, pong holds the
	// pong frame to send (nil: none), which answers the latest ping.
	serving   bool
	scheduled bool
	slow      bool
	finishing bool
	pingDue   bool
	pong      []byte
	// preamble is written before anything else: the handshake's answer,
	// which goes out with the welcome (upgrade.go). Guarded by mu.
	preamble []byte
	// accepted is when the connection was accepted, while the
	// preamble is still to be written: its write observes the
	// handshake's time. Zero when there is none. Guarded by mu.
	accepted time.Time
}

// roomState is a client's view of one room. Guarded by client.mu.
type roomState struct {
	// joining holds live events back while join reads the room's newest
	// seq, so that joined comes before them.
	joining bool
	pending []pendingEvent
	// lastSeq is the newest seq sent to the client (or stored when it
	// joined): live events up to it are duplicates.
	lastSeq uint64
}

type pendingEvent struct {
	seq  uint64 // 0 for an event that is not a stored message
	prev uint64 // the seq of the room's message before it, 0 if unknown
	ts   int64  // a stored message's ts (Unix ms), 0 if unknown
	line []byte
}

func newClient(e *Edge, conn net.Conn, user, session string) *client {
	c := &client{
		e:          e,
		conn:       conn,
		user:       user,
		session:    session,
		flusher:    e.nextFlusher(),
		readerDone: make(chan struct{}),
		rooms:      make(map[string]*roomState),
	}
	c.space = sync.NewCond(&c.mu)
	c.opened = time.Now()
	c.heard.Store(c.opened.UnixNano())
	c.frames.Limit = int(e.cfg.Limits.MaxFrameBytes)
	c.ends.Store(2)
	return c
}

// reply queues an answer to the client's own request. It waits while the
// queue is full; only the reader (or start, before it) calls it.
func (c *client) reply(line []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.replyLocked(line)
}

// replyLocked is reply with mu held; it may release mu while it waits.
func (c *client) replyLocked(line []byte) {
	if !c.waitSpaceLocked() {
		return
	}
	c.queue = append(c.queue, line)
	c.signal()
}

// waitSpaceLocked waits, releasing mu meanwhile, until the queue has room
// or the client is closing; it reports whether there is room. State read
// before it may be stale after it.
func (c *client) waitSpaceLocked() bool {
	for !c.closing && len(c.queue) >= c.e.cfg.Limits.SendQueue {
		c.waiting = true
		c.space.Wait()
		c.waiting = false
	}
	return !c.closing
}

// enqueueLiveLocked queues a live event, or cuts the client off when it
// already has the limit of live events queued.
func (c *client) enqueueLiveLocked(line []byte) {
	if c.closing {
		return
	}
	if c.live >= c.e.cfg.Limits.SendQueue {
		c.cutOffLocked()
		return
	}
	c.queue = append(c.queue, line)
	c.live++
	c.e.metrics.delivered.Inc()
	c.signal()
}

// enqueueStoredLocked queues a live stored message or dm whose ts is ts
// (Unix ms; 0: unknown), as enqueueLiveLocked does, and keeps the oldest
// ts queued for the write that takes it: a compare and a store per
// recipient, no clock read.
func (c *client) enqueueStoredLocked(line []byte, ts int64) {
	c.enqueueLiveLocked(line)
	if ts > 0 && !c.closing && (c.oldest == 0 || ts < c.oldest) {
		c.oldest = ts
	}
}

// deliver hands an event of k (a room or a conversation) to the client:
// held back while the client is joining the room. seq is a stored
// message's seq, and one already sent is dropped; other events (presence,
// typing) have seq 0 and ts 0. ts is a stored message's ts (Unix ms; 0:
// unknown), for its delivery time. prev is the seq of the
// room's message stored before it (0: unknown): when the client has not
// had that one, the event is not delivered, and deliver reports the gap
// and the newest seq the client has, for the hub to repair. A nil line
// is a stored message that cannot be sent (not an event): the client
// moves past its seq without receiving anything.
func (c *client) deliver(k key, seq, prev uint64, ts int64, line []byte) (gap bool, have uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false, 0
	}
	st := c.stateLocked(k, seq != 0)
	if st == nil {
		return false, 0
	}
	if !c.floorKnown && st.lastSeq == 0 && k.isDM() {
		prev = 0 // a conversation's first dm, with no floor: nothing to check
	}
	if st.joining {
		if len(st.pending) >= c.e.cfg.Limits.SendQueue {
			c.cutOffLocked()
			return false, 0
		}
		st.pending = append(st.pending, pendingEvent{seq: seq, prev: prev, ts: ts, line: line})
		return false, 0
	}
	if seq != 0 {
		if seq <= st.lastSeq {
			return false, 0
		}
		if prev > st.lastSeq {
			return true, st.lastSeq
		}
		st.lastSeq = seq
	}
	if line != nil {
		c.enqueueStoredLocked(line, ts)
	}
	return false, 0
}

// stateLocked returns the client's state of k: a room it joined, or a
// conversation, whose state is made (starting from the dm floor) when
// create is set.
func (c *client) stateLocked(k key, create bool) *roomState {
	if !k.isDM() {
		return c.rooms[k.room]
	}
	return c.convStateLocked(k.conv, create)
}

// convStateLocked is stateLocked for a conversation. Apart, so that
// stateLocked is inlined into deliver: a room message's members take
// the short way.
func (c *client) convStateLocked(cv conversation, create bool) *roomState {
	st := c.convs[cv]
	if st == nil && create {
		if c.convs == nil {
			c.convs = make(map[conversation]*roomState)
		}
		if len(c.convs) >= maxConvs {
			c.forgetQuietestLocked()
		}
		st = &roomState{lastSeq: max(c.dmFloor, c.convFloor)}
		c.convs[cv] = st
	}
	return st
}

// maxConvs bounds the conversations a client keeps state for: anyone can
// start a conversation with anyone.
const maxConvs = 4096

// forgetQuietestLocked drops the state of the conversation with the
// oldest newest dm. A conversation made again starts its gap check from
// the newest dm so forgotten: what came before that was delivered, or
// is found by the drop check (dm.go).
func (c *client) forgetQuietestLocked() {
	var quiet conversation
	seq, found := uint64(0), false
	for cv, st := range c.convs {
		if !found || st.lastSeq < seq {
			quiet, seq, found = cv, st.lastSeq, true
		}
	}
	delete(c.convs, quiet)
	c.convFloor = max(c.convFloor, seq)
}

// sentSeq returns the newest seq of k sent to the client, and whether it
// is joined (not joining) there; for a conversation without a dm yet, the
// dm floor, when known.
func (c *client) sentSeq(k key) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stateLocked(k, false)
	if st == nil {
		if k.isDM() && c.floorKnown {
			return c.dmFloor, true
		}
		return 0, false
	}
	if st.joining {
		return 0, false
	}
	return st.lastSeq, true
}

// conversations returns the keys of the conversations the client has had
// dms in.
func (c *client) conversations() []key {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]key, 0, len(c.convs))
	for cv := range c.convs {
		keys = append(keys, key{conv: cv})
	}
	return keys
}

// cutOffLocked closes a client that has fallen too far behind.
func (c *client) cutOffLocked() {
	c.e.metrics.slowClients.Inc()
	c.e.log.Info("cutting off slow client", "user", c.user, "session", c.session, "queued", len(c.queue))
	c.closeLocked(ws.ClosePolicyViolation, "slow client: send queue full")
}

// closeEmpty is the close code that sends a close frame without a code:
// the answer to a client's close frame without one.
const closeEmpty = 0

// close begins closing with code (-1: send no close frame).
func (c *client) close(code int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closeLocked(code, text)
}

func (c *client) closeLocked(code int, text string) {
	if c.closing {
		return
	}
	c.closing, c.closeCode, c.closeText = true, code, text
	c.queue, c.live = nil, 0
	c.space.Broadcast()
	c.signal()
}

// readable is a turn of the reader, the only reader of the socket: the
// poller runs it when the socket has something to read. It answers the
// requests read, one at a time and in order, and asks for the next turn,
// until the client goes away, breaks the protocol or is closed.
func (c *client) readable(w *ws.Watch) {
	bp := c.e.readBuffers.Get().(*[]byte)
	n, err := w.Read(*bp)
	if err == nil && n > 0 {
		c.heard.Store(time.Now().UnixNano())
		err = c.frames.Feed((*bp)[:n], c.frame)
		if we, ok := errors.AsType[*ws.Error](err); ok {
			c.close(we.Code, we.Text)
		}
	}
	c.e.readBuffers.Put(bp)
	switch {
	case errors.Is(err, unix.EAGAIN):
		// Nothing to read after all.
	case err != nil || n == 0:
		c.close(-1, "connection lost") // gone
	}
	if c.isClosing() {
		w.End()
		c.readEnded()
		return
	}
	if !w.Resume() {
		// Stopped meanwhile (closing already), or the socket cannot be
		// watched any more: either way the client is over.
		c.close(-1, "connection not watched")
		c.readEnded()
	}
}

// frame handles one message or control frame from the client; it reports
// whether to go on reading.
func (c *client) frame(op ws.Op, p []byte) bool {
	switch op {
	case ws.OpText:
		if c.isClosing() {
			return false // cut off or stopping: nothing more is taken
		}
		if !utf8.Valid(p) {
			c.close(ws.CloseInvalidPayload, "text frame is not valid UTF-8")
			return false
		}
		c.e.metrics.framesIn.Inc()
		proto.Lines(p, func(line []byte) bool {
			c.handle(line)
			return !c.isClosing()
		})
		return !c.isClosing()
	case ws.OpBinary:
		c.close(ws.CloseUnsupportedData, "binary frames are not supported")
		return false
	case ws.OpPing:
		c.mu.Lock()
		if !c.closing {
			c.pong = ws.AppendFrame(nil, ws.OpPong, p) // never nil, even for an empty ping
			c.signal()
		}
		c.mu.Unlock()
		return true
	case ws.OpClose:
		// The client closes: its code goes back, and the connection ends.
		code := ws.CloseCode(p)
		if code == ws.CloseNoStatus {
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
func (c *client) readEnded() {
	close(c.readerDone)
	c.ended()
}

// ended counts one end of the connection; the second lets go of it.
func (c *client) ended() {
	if c.ends.Add(-1) == 0 {
		c.done()
	}
}

func (c *client) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// serve starts the connection: the poller's watch for the reader (w, the
// handshake's, in its turn, or a new one), and its flusher for what is
// queued already (the welcome, or a close). done runs once the reading
// has ended and the connection is closed.
func (c *client) serve(w *ws.Watch, done func()) {
	c.done = done
	handed := w != nil
	if handed {
		w.Hand(c.readable)
	} else {
		sc, ok := c.conn.(syscall.Conn)
		err := errors.New("not a socket")
		if ok {
			w, err = c.e.poller.Watch(sc, c.readable)
		}
		if err != nil {
			c.e.log.Warn("connection not watched", "user", c.user, "err", err)
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
// writer that found the client closing (flush.go) hands the socket to it.
func (c *client) finish() {
	c.mu.Lock()
	code, text := c.closeCode, c.closeText
	w := c.watch
	frame := c.preamble // the handshake's answer, if not sent yet
	c.preamble = nil
	c.mu.Unlock()
	if code >= 0 {
		if code == closeEmpty {
			frame = ws.AppendFrame(frame, ws.OpClose, nil)
		} else {
			frame = ws.AppendClose(frame, code, text)
		}
	}
	if len(frame) > 0 {
		_ = c.conn.SetWriteDeadline(time.Now().Add(closeGrace))
		_, _ = c.conn.Write(frame)
	}
	if code < 0 && w != nil {
		// No close frame, so no answer to wait for: the peer is gone
		// (its reader is ending, and Stop leaves the end to it) or is
		// dropped without a word.
		_ = c.conn.Close()
		if w.Stop() {
			c.readEnded()
		}
		c.ended()
		return
	}
	select {
	case <-c.readerDone:
		c.linger()
		_ = c.conn.Close()
	case <-time.After(closeGrace):
		// The peer did not answer: the reading stops here, unless a
		// reader is running, which finds the socket closed.
		_ = c.conn.Close()
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
func (c *client) linger() {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.CopyN(io.Discard, c.conn, 1<<20)
}
