package edge

import (
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/proto"
)

// client is one session: a user's WebSocket connection, its rooms and
// conversations. It is the connection's handler (ws.Handler): the wire
// hands it each text message, and it queues its answers and the live
// events of its rooms into the connection's send queue.
//
// Lock order: client.mu, then the connection's own lock (taken inside
// ws.Conn's methods), never the other way around: the connection never
// calls the session while it holds its lock. deliver holds mu while it
// pushes, so that a room's seq and what was queued move together.
type client struct {
	// What deliver touches comes first, together, as in ws.Conn.
	mu sync.Mutex
	// dmFloor is the hub's dm floor when the session started (dm.go);
	// floorKnown is false when the hub had none (the dm stream could not
	// be read): then a conversation's first dm starts its gap check. Set
	// by hub.joinUser before the client is a member, never after.
	floorKnown bool
	dmFloor    uint64
	conn       *ws.Conn // set by Open
	// rooms is the state of each joined (or joining) room; guarded by mu.
	rooms map[string]*roomState
	// convs is the state of each conversation a dm was delivered in;
	// made on the first, at most maxConvs of them (the quietest goes; a
	// conversation made again starts from convFloor). Guarded by mu.
	convs     map[conversation]*roomState
	convFloor uint64
	e         *Edge

	user    string
	session string
	// addr is the client's address, counted against MaxConnsPerIP.
	addr string
	// opened is when the connection was opened, for its closing line.
	opened time.Time
	// typed is when a typing signal was last published per room; made on
	// the first. Guarded by mu.
	typed map[string]time.Time
	// limiter is the rate limit of the client's posts, made on the first;
	// only the reader uses it.
	limiter *rate.Limiter
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

func newClient(e *Edge, user, addr string) *client {
	return &client{e: e, user: user, session: randomID(), addr: addr, rooms: make(map[string]*roomState)}
}

// Open starts the session on its upgraded connection: welcome is queued
// first, then the user's dms are subscribed to; writing starts once Open
// has returned, so welcome goes out first and a dm stored after it
// reaches this session live.
func (c *client) Open(conn *ws.Conn) {
	c.conn = conn
	c.opened = time.Now()
	c.e.open.Add(1)
	c.e.metrics.connections.Inc()
	c.e.logOpened(c)
	c.reply(proto.Encode(proto.Welcome{Type: proto.TypeWelcome, User: c.user, Session: c.session}))
	if err := c.e.hub.joinUser(c.user, c); err != nil {
		c.e.log.Warn("dms not subscribed", "user", c.user, "err", err)
		c.close(ws.CloseTryAgainLater, "direct messages unavailable, try again")
	}
}

// Text handles a text message from the client: the requests in it, one
// a line, in order, until the connection is closing.
func (c *client) Text(p []byte) {
	proto.Lines(p, func(line []byte) bool {
		c.handle(line)
		return !c.conn.Closing()
	})
}

// Closed lets go of the session once its connection is over: it leaves
// its rooms and dms and gives back its address. A session never opened
// (its upgrade failed, or the edge was stopping) only gives back its
// address.
func (c *client) Closed(code int, reason string) {
	if c.conn == nil {
		c.e.gate.release(c.addr)
		return
	}
	c.leaveAll()
	c.e.open.Add(-1)
	c.e.gate.release(c.addr)
	c.e.metrics.connections.Dec()
	c.e.logClosed(c, code, reason)
}

// The session's ways into its connection's send queue. Every push is made
// with mu held (deliver, join), and replies come only from the reader: so
// with mu held, a queue found with room keeps it until the reader's own
// reply, which then does not wait.

// reply queues an answer to the client's own request. It waits while the
// queue is full; only the reader (or Open, before it) calls it.
func (c *client) reply(line []byte) { c.conn.Reply(line) }

// replyLocked is reply with mu held; it may release mu while it waits.
func (c *client) replyLocked(line []byte) {
	if c.waitSpaceLocked() {
		c.conn.Reply(line)
	}
}

// waitSpaceLocked waits, releasing mu meanwhile, until the queue has room
// for a reply or the client is closing; it reports whether there is room.
// State read before it may be stale after it.
func (c *client) waitSpaceLocked() bool {
	for c.conn.Full() {
		c.mu.Unlock()
		c.conn.WaitSpace()
		c.mu.Lock()
	}
	return !c.conn.Closing()
}

// enqueueLiveLocked queues a live event that is not a stored message.
func (c *client) enqueueLiveLocked(line []byte) { c.enqueueStoredLocked(line, 0) }

// enqueueStoredLocked queues a live stored message or dm whose ts is ts
// (Unix ms; 0: unknown), for the delivery time of the write that takes
// it; a client that already has the limit of live events queued is cut
// off instead.
func (c *client) enqueueStoredLocked(line []byte, ts int64) {
	switch c.conn.Push(line, ts) {
	case nil:
		c.e.metrics.delivered.Inc()
	case ws.ErrSlow:
		c.cutOffLocked(c.e.cfg.Limits.SendQueue) // closed already by Push
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
	if c.conn.Closing() {
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
			c.cutOffLocked(len(st.pending))
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

// cutOffLocked closes a client that has fallen too far behind, with
// queued events waiting (live in its send queue, or held while it joins
// a room).
func (c *client) cutOffLocked(queued int) {
	c.e.metrics.slowClients.Inc()
	c.e.log.Info("cutting off slow client", "user", c.user, "session", c.session, "queued", queued)
	c.conn.CutOff()
}

// close begins closing the connection with code.
func (c *client) close(code int, text string) { c.conn.Close(code, text) }
