package edge

import (
	"io"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/natter-chat/natter/shared/proto"
)

// closeGrace is how long a closing connection waits for the peer's close
// frame, and then for its end of the TCP connection, before closing hard.
const closeGrace = time.Second

// client is one WebSocket connection.
type client struct {
	e       *Edge
	conn    *websocket.Conn
	user    string
	session string

	// wake tells a running writer that the queue has events, a ping is
	// due or the client is closing; a buffer of one coalesces wake-ups.
	wake chan struct{}
	// readerDone is closed when the read pump has returned; finished when
	// the connection is closed (finish).
	readerDone chan struct{}
	finished   chan struct{}
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
	space   *sync.Cond // on mu; signalled when the writer empties the queue or closing begins
	waiting bool       // guarded by mu: the read pump waits on space
	// rooms is the state of each joined (or joining) room; guarded by mu.
	rooms map[string]*roomState
	// convs is the state of each conversation a dm was delivered in,
	// by convKey; made on the first, at most maxConvs of them (the
	// quietest goes; a conversation made again starts from convFloor).
	// Guarded by mu.
	convs     map[string]*roomState
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
	// only the read pump uses it.
	limiter *rate.Limiter
	// addr is the client's address, counted against MaxConnsPerIP.
	addr string
	// closeCode is the close code to send once closing has begun, -1
	// when none is to be sent; closing tells whether it has begun.
	// Guarded by mu.
	closing   bool
	closeCode int
	closeText string
	// serving is set once serve has started; from then on signal starts
	// a writer when none runs (writing). pingDue asks the writer for a
	// ping. Guarded by mu.
	serving bool
	writing bool
	pingDue bool
	// writers counts the writer goroutines, for serve to wait for: one at
	// a time, and none after the one that finished the connection.
	writers sync.WaitGroup
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
	line []byte
}

func newClient(e *Edge, conn *websocket.Conn, user, session string) *client {
	c := &client{
		e:          e,
		conn:       conn,
		user:       user,
		session:    session,
		wake:       make(chan struct{}, 1),
		readerDone: make(chan struct{}),
		finished:   make(chan struct{}),
		rooms:      make(map[string]*roomState),
	}
	c.space = sync.NewCond(&c.mu)
	return c
}

// reply queues an answer to the client's own request. It waits while the
// queue is full; only the read pump (or the HTTP handler before it) calls
// it.
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

// deliver hands an event of key (a room or a conversation) to the client:
// held back while the client is joining the room. seq is a stored
// message's seq, and one already sent is dropped; other events (presence,
// typing) have seq 0. prev is the seq of the
// room's message stored before it (0: unknown): when the client has not
// had that one, the event is not delivered, and deliver reports the gap
// and the newest seq the client has, for the hub to repair. A nil line
// is a stored message that cannot be sent (not an event): the client
// moves past its seq without receiving anything.
func (c *client) deliver(room string, seq, prev uint64, line []byte) (gap bool, have uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false, 0
	}
	st := c.stateLocked(room, seq != 0)
	if st == nil {
		return false, 0
	}
	if !c.floorKnown && st.lastSeq == 0 && c.convs[room] == st {
		prev = 0 // a conversation's first dm, with no floor: nothing to check
	}
	if st.joining {
		if len(st.pending) >= c.e.cfg.Limits.SendQueue {
			c.cutOffLocked()
			return false, 0
		}
		st.pending = append(st.pending, pendingEvent{seq: seq, prev: prev, line: line})
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
		c.enqueueLiveLocked(line)
	}
	return false, 0
}

// stateLocked returns the client's state of key: a room it joined, or a
// conversation, whose state is made (starting from the dm floor) when
// create is set.
func (c *client) stateLocked(key string, create bool) *roomState {
	if _, _, ok := parties(key); !ok {
		return c.rooms[key]
	}
	st := c.convs[key]
	if st == nil && create {
		if c.convs == nil {
			c.convs = make(map[string]*roomState)
		}
		if len(c.convs) >= maxConvs {
			c.forgetQuietestLocked()
		}
		st = &roomState{lastSeq: max(c.dmFloor, c.convFloor)}
		c.convs[key] = st
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
	var quiet string
	var seq uint64
	for k, st := range c.convs {
		if quiet == "" || st.lastSeq < seq {
			quiet, seq = k, st.lastSeq
		}
	}
	delete(c.convs, quiet)
	c.convFloor = max(c.convFloor, seq)
}

// roomSeq returns the newest seq of key sent to the client, and whether
// it is joined (not joining) there; for a conversation without a dm yet,
// the dm floor, when known.
func (c *client) roomSeq(key string) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stateLocked(key, false)
	if st == nil {
		if _, _, ok := parties(key); ok && c.floorKnown {
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
func (c *client) conversations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.convs))
	for k := range c.convs {
		keys = append(keys, k)
	}
	return keys
}

// cutOffLocked closes a client that has fallen too far behind.
func (c *client) cutOffLocked() {
	c.e.metrics.slowClients.Inc()
	c.e.log.Info("cutting off slow client", "user", c.user, "session", c.session, "queued", len(c.queue))
	c.closeLocked(websocket.ClosePolicyViolation, "slow client: send queue full")
}

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

// readPump is the only reader of the socket. It returns when the client
// goes away, breaks the protocol or is closed.
func (c *client) readPump() {
	defer close(c.readerDone)
	lim := c.e.cfg.Limits
	c.conn.SetReadLimit(lim.MaxFrameBytes)
	_ = c.conn.SetReadDeadline(time.Now().Add(lim.PongTimeout))
	c.conn.SetPongHandler(func(string) error {
		return c.conn.SetReadDeadline(time.Now().Add(lim.PongTimeout))
	})
	for {
		mt, data, err := c.conn.ReadMessage()
		if err != nil {
			// A frame over the limit was already answered with 1009 by
			// gorilla; anything else is the client leaving.
			c.close(-1, "")
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(lim.PongTimeout))
		if mt != websocket.TextMessage {
			c.close(websocket.CloseUnsupportedData, "binary frames are not supported")
			return
		}
		if !utf8.Valid(data) {
			c.close(websocket.CloseInvalidFramePayloadData, "text frame is not valid UTF-8")
			return
		}
		c.e.metrics.framesIn.Inc()
		proto.Lines(data, func(line []byte) bool {
			c.handle(line)
			return !c.isClosing()
		})
		if c.isClosing() {
			return
		}
	}
}

func (c *client) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// A connection has no writer goroutine while it has nothing to send: an
// idle connection costs its read pump only (bench/, scenario A: each
// goroutine holds a stack of several KiB). The first event queued starts a
// writer, which stays while events keep coming and ends after
// writerLinger without any. Pings come from the edge's pinger (ping.go),
// which asks each connection's writer for one in turn.

// writerLinger is how long a writer waits for more events before it ends.
const writerLinger = time.Second

// signal tells the writer that the queue has events, a ping is due, or the
// client is closing, and starts one when none runs. Called with mu held.
func (c *client) signal() {
	if c.writing || !c.serving {
		select {
		case c.wake <- struct{}{}:
		default:
		}
		return
	}
	c.writing = true
	c.writers.Go(c.writer)
}

// serve runs the connection: the read pump on the caller's goroutine, a
// writer whenever there is something to send. It returns once the read
// pump has ended and the connection is closed.
func (c *client) serve() {
	c.mu.Lock()
	c.serving = true
	c.writing = true // the welcome (or a close) is queued already
	c.writers.Go(c.writer)
	c.mu.Unlock()
	c.readPump()
	<-c.finished
	c.writers.Wait()
}

// writer is the only writer of data frames while it runs. It coalesces
// queued events into frames of at most proto.MaxFrameBytes, sends the
// pings it is asked for, and closes the connection when the client is
// closing.
func (c *client) writer() {
	lim := c.e.cfg.Limits
	var batch [][]byte
	var buf []byte
	write := func(frame []byte) error {
		_ = c.conn.SetWriteDeadline(time.Now().Add(lim.WriteTimeout))
		c.e.metrics.framesOut.Inc()
		return c.conn.WriteMessage(websocket.TextMessage, frame)
	}
	// flush writes what is queued and a ping when one is due; it reports
	// false once the connection is done (closing, or a write failed) and
	// finished.
	flush := func() bool {
		c.mu.Lock()
		closing, ping := c.closing, c.pingDue
		batch, c.queue = c.queue, batch[:0]
		c.live, c.pingDue = 0, false
		c.space.Broadcast()
		c.mu.Unlock()
		if closing {
			c.finish()
			return false
		}
		var err error
		buf, err = proto.Frames(batch, proto.MaxFrameBytes, buf, write)
		clear(batch)
		if err == nil && ping {
			err = c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(lim.WriteTimeout))
		}
		if err != nil {
			c.close(-1, "")
			c.finish()
			return false
		}
		return true
	}
	// With a write delay, everything queued within it of the first event
	// goes out in one frame: in a busy room a client gets a write every
	// few milliseconds instead of one per event, and those writes are
	// most of the server's CPU (bench/: it raised what one core sustains
	// in a room of 1,000 from 1 to 1.5 million deliveries a second).
	timer := time.NewTimer(lim.WriteDelay)
	defer timer.Stop()
	for {
		if lim.WriteDelay > 0 && !c.isClosing() {
			<-timer.C
		}
		if !flush() {
			return
		}
		timer.Reset(writerLinger)
		select {
		case <-c.wake:
			timer.Reset(lim.WriteDelay) // (Go 1.23 timers: no stale fire is left)
			continue
		case <-timer.C:
		}
		c.mu.Lock()
		if len(c.queue) == 0 && !c.closing && !c.pingDue {
			// Idle: end, leaving nothing behind. A wake sent meanwhile
			// had nothing new to say.
			c.writing, c.queue = false, nil
			select {
			case <-c.wake:
			default:
			}
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		timer.Reset(lim.WriteDelay)
	}
}

// finish sends the close frame, if any, waits a moment for the peer, and
// closes the connection. Only the last writer calls it, once.
func (c *client) finish() {
	defer close(c.finished)
	c.mu.Lock()
	code, text := c.closeCode, c.closeText
	c.mu.Unlock()
	if code > 0 {
		_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(closeGrace))
	}
	select {
	case <-c.readerDone:
		c.linger()
	case <-time.After(closeGrace):
		// The peer did not answer: closing the socket ends the read pump.
	}
	_ = c.conn.Close()
}

// linger reads what the peer still sends, briefly, after the read pump has
// ended: closing a socket with unread data makes the kernel reset the
// connection, and a reset can destroy the close frame before the peer has
// read it.
func (c *client) linger() {
	nc := c.conn.UnderlyingConn()
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	_ = nc.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.CopyN(io.Discard, nc, 1<<20)
}
