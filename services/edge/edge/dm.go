package edge

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// Direct messages and typing (docs/protocol.md).
//
// An edge subscribes to the dms of each user with a local session, on
// the user's first session, and drops the subscriptions after the last
// one, like rooms: chat.dm.<user>.* and chat.dm.*.<user>, both into the
// hub's one dispatch channel. A stored dm reaches the hub on the subject
// of its conversation, and the hub hands it to the sessions of both
// parties. Each conversation is keyed by dmKey (key.go), and from there on
// it is treated like a room: dropped by seq when already sent, its gaps
// (Nats-Last-Sequence) filled from the dm stream.
//
// A session has no "join" for conversations, so the edge has no seq to
// start a conversation's gap check from. It uses the dm floor instead: a
// seq of the dm stream no newer than its newest when the session started.
// A dm whose previous one is newer than the floor, and that the session
// has not had, shows a gap; a dm before the floor was stored before the
// session started, and the client reads it with dms and history. The
// floor is the newest dm the hub has dispatched, and the dm stream's
// newest seq read each dropCheck while users are connected, whichever is
// larger: so what a gap repair reads from the floor is at most a moment's
// dms.

// hubUser is a user with local sessions.
type hubUser struct {
	// ready is closed once the subscriptions are made (or have failed);
	// subs and err are set before and never change after.
	ready chan struct{}
	subs  []*nats.Subscription
	err   error
	// dropped are the subscriptions' drop counts at the last check; only
	// the dispatcher uses them.
	dropped [2]int
	// members is replaced, never changed in place. Guarded by hub.mu.
	members []*client
}

// joinUser adds session c of user, subscribing to the user's dms on its
// first local session, and sets c's dm floor. The subscriptions are
// flushed before it returns, so a dm stored after the session's welcome
// reaches it live.
func (h *hub) joinUser(user string, c *client) error {
	if !h.floorKnown.Load() {
		// The first sessions of an edge: read the floor now rather than
		// leave their conversations without a gap check.
		ctx, cancel := context.WithTimeout(context.Background(), whoTimeout)
		h.loadFloor(ctx)
		cancel()
	}
	// Set before c is a member: the dispatcher reads them after taking
	// mu. known is read first: it is set after the floor is raised.
	c.floorKnown = h.floorKnown.Load()
	c.dmFloor = h.dmFloor.Load()
	h.mu.Lock()
	u := h.users[user]
	first := u == nil
	if first {
		u = &hubUser{ready: make(chan struct{})}
		h.users[user] = u
	}
	u.members = append(slices.Clip(u.members), c)
	h.mu.Unlock()

	if first {
		for _, subj := range subject.DMsOf(user) {
			sub, err := h.nc.ChanSubscribe(subj, h.msgs)
			if err != nil {
				u.err = fmt.Errorf("subscribe dms of %s: %w", user, err)
				break
			}
			u.subs = append(u.subs, sub)
		}
		if u.err == nil {
			h.metrics.userSubs.Inc()
			// A flush fails while NATS is away; the subscriptions are
			// made again on reconnect, and the dms meanwhile are found
			// by the reconnect check (repair.go).
			_ = h.flushes.do(func() error { return h.nc.FlushTimeout(whoTimeout) })
		}
		close(u.ready)
	}
	<-u.ready
	if u.err != nil {
		h.leaveUser(user, c)
		return u.err
	}
	return nil
}

// leaveUser removes session c of user and drops the user's subscriptions
// after its last local session.
func (h *hub) leaveUser(user string, c *client) {
	h.mu.Lock()
	u := h.users[user]
	last := u != nil && dropMember(&u.members, c)
	if last {
		delete(h.users, user)
	}
	h.mu.Unlock()
	if last {
		h.unsubscribeUser(user, u)
	}
}

func (h *hub) unsubscribeUser(user string, u *hubUser) {
	<-u.ready
	if u.err != nil {
		for _, sub := range u.subs {
			_ = sub.Unsubscribe()
		}
		return
	}
	h.metrics.userSubs.Dec()
	for _, sub := range u.subs {
		if err := sub.Unsubscribe(); err != nil {
			h.log.Warn("unsubscribe dms", "user", user, "err", err)
		}
	}
}

// dispatchDM hands a stored dm to the sessions of both parties, like a
// room message, and moves the dm floor up to it.
func (h *hub) dispatchDM(k key, m *nats.Msg) {
	h.dispatchMsg(k, m)
	if seq, err := parseSeq(m); err == nil {
		h.raiseFloor(seq)
	}
}

// raiseFloor moves the dm floor up to seq, never down.
func (h *hub) raiseFloor(seq uint64) { raise(&h.dmFloor, seq) }

// readFloor reads the dm stream's newest seq into the floor, on a reader
// of its own, at most one at a time, while users are connected.
func (h *hub) readFloor() {
	h.mu.Lock()
	anyone := len(h.users) > 0
	h.mu.Unlock()
	if !anyone || !h.floorReader.CompareAndSwap(false, true) {
		return
	}
	h.repairing.Go(func() {
		defer h.floorReader.Store(false)
		ctx, cancel := context.WithTimeout(h.ctx, repairTimeout)
		defer cancel()
		h.loadFloor(ctx)
	})
}

// loadFloor reads the dm stream's newest seq into the floor.
func (h *hub) loadFloor(ctx context.Context) {
	last, err := store.LastSeq(ctx, h.nc, store.Log{Stream: subject.DMStream, Subject: subject.StoreDMAny, Name: "every dm"})
	if err != nil {
		h.log.Debug("dm floor not read", "err", err)
		return
	}
	h.raiseFloor(last)
	h.floorKnown.Store(true)
}

// maxFinders bounds the readers of users' conversations at once: after a
// NATS reconnect every user with a local session is looked at.
const maxFinders = 8

// missedUser is a user whose dm subscriptions dropped messages, with its
// sessions then.
type missedUser struct {
	user     string
	sessions []*client
}

// findNext starts readers for the users waiting, up to maxFinders.
func (h *hub) findNext() {
	for h.finding < maxFinders && len(h.missQueue) > 0 {
		m := h.missQueue[0]
		h.missQueue[0] = missedUser{}
		h.missQueue = h.missQueue[1:]
		delete(h.missQueued, m.user)
		h.finding++
		h.findMissed(m.user, m.sessions)
	}
	if len(h.missQueue) == 0 {
		h.missQueue = nil
	}
}

// newestDM is a conversation and the seq of its newest dm, 0 when it is
// not known.
type newestDM struct {
	k   key
	seq uint64
}

// findMissed looks, on a reader, for the dms a user's subscriptions may
// have dropped: it lists the user's conversations with their newest seq
// and hands them to the dispatcher (readMissed). This finds a dropped dm
// that no later one follows, in a conversation the sessions have had
// nothing of yet as well.
func (h *hub) findMissed(user string, sessions []*client) {
	h.repairing.Go(func() {
		ctx, cancel := context.WithTimeout(h.ctx, repairTimeout)
		listed, err := store.Conversations(ctx, h.js, user)
		cancel()
		var convs []newestDM
		if err != nil {
			// More than the store lists at once, or the store is away:
			// read on in the conversations the sessions have had.
			h.log.Warn("conversations not read; reading on in the known ones", "user", user, "err", err)
			for _, c := range sessions {
				for _, k := range c.conversations() {
					convs = append(convs, newestDM{k: k}) // seq 0: read on
				}
			}
		} else {
			for _, cv := range listed {
				convs = append(convs, newestDM{k: dmKey(user, cv.With), seq: cv.Seq})
			}
		}
		select {
		case h.found <- convs:
		case <-h.ctx.Done():
		}
	})
}

// readMissed reads on in each conversation some member has not had up to
// its newest seq (0: unknown, read on).
func (h *hub) readMissed(convs []newestDM) {
	for _, cv := range convs {
		for _, c := range h.members(cv.k) {
			if seq, ok := c.sentSeq(cv.k); ok && (cv.seq == 0 || seq < cv.seq) {
				if cv.seq != 0 {
					h.metrics.gaps.Inc() // a dm the member has not had
				}
				h.readOn(cv.k)
				break
			}
		}
	}
}

// dispatchTyping passes a typing signal on to the room's members, except
// the sessions of the user typing. Like presence events, it is decoded
// and encoded again.
func (h *hub) dispatchTyping(room string, m *nats.Msg) {
	var ev proto.Typing
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != proto.TypeTyping || ev.Room != room || !names.ValidUser(ev.User) {
		h.log.Debug("dropping a typing event that is not one", "room", room)
		return
	}
	line := proto.Encode(ev)
	k := roomKey(room)
	for _, c := range h.members(k) {
		if c.user != ev.User {
			c.deliver(k, 0, 0, 0, line)
		}
	}
}

// dm sends a direct message to the broadcasters and waits for it to be
// stored; the sender's sessions receive it like the recipient's.
func (c *client) dm(req proto.Request) {
	to := *req.To
	c.store(req, subject.InDM(to), proto.Post{To: to})
}

// dms lists the user's conversations, newest first (by ts, then name).
func (c *client) dms(req proto.Request) {
	ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
	convs, err := store.Conversations(ctx, c.e.js, c.user)
	cancel()
	if err != nil {
		c.e.log.Warn("dms read failed", "user", c.user, "err", err)
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "message store unavailable, try again"})
		return
	}
	out := make([]proto.Conversation, len(convs))
	for i, cv := range convs {
		out[i] = proto.Conversation{With: cv.With, Seq: cv.Seq, TS: cv.TS}
	}
	sortConversations(out)
	c.reply(proto.Encode(proto.DMs{Type: proto.TypeDMs, Conversations: out}))
}

// sortConversations orders dms's answer as the contract says: newest
// first by ts, then by name.
func sortConversations(convs []proto.Conversation) {
	slices.SortFunc(convs, func(x, y proto.Conversation) int {
		return cmp.Or(cmp.Compare(y.TS, x.TS), strings.Compare(x.With, y.With))
	})
}

// typing publishes a typing signal for a joined room, at most one each
// Limits.TypingEvery per room; the others are dropped silently. It is never
// stored.
func (c *client) typing(req proto.Request) {
	room := *req.Room
	if !c.joined(room) {
		c.refuse(req, &proto.Error{Code: proto.CodeNotJoined, Message: "not joined to room " + room})
		return
	}
	now := time.Now()
	c.mu.Lock()
	if c.typed == nil {
		c.typed = make(map[string]time.Time)
	}
	last, seen := c.typed[room]
	throttled := seen && now.Sub(last) < c.e.cfg.Limits.TypingEvery
	if !throttled {
		c.typed[room] = now
	}
	c.mu.Unlock()
	if throttled {
		return
	}
	// While NATS is away a signal would wait in nats.go's reconnect
	// buffer and arrive stale: the client is told instead.
	unavailable := &proto.Error{Code: proto.CodeUnavailable, Message: "NATS unavailable, try again"}
	if !c.e.nc.IsConnected() {
		c.refuse(req, unavailable)
		return
	}
	data := proto.Encode(proto.Typing{Type: proto.TypeTyping, Room: room, User: c.user})
	if err := c.e.nc.Publish(subject.RoomTyping(room), data); err != nil {
		c.refuse(req, unavailable)
	}
}

// sharedFlush lets the users that subscribe at once share a NATS flush (a
// round trip to the server, and a write of its own): a flush that has not
// started yet serves everyone who asks for it meanwhile, because it is
// sent after their subscriptions. While one runs, the next gathers; one
// of the next one's callers runs it. On a connect burst a flush per user
// was a tenth of the edge's CPU (bench/, F).
type sharedFlush struct {
	mu      sync.Mutex
	running bool       // guarded by mu: a flush runs, or its successor is being handed the lead
	next    *flushCall // guarded by mu: the flush that gathers callers
	waiting int        // guarded by mu: callers waiting for next (tests look)
}

type flushCall struct {
	done chan struct{} // closed when the flush has returned (err)
	lead chan struct{} // a buffer of one: this caller runs the flush
	err  error
}

// do runs flush, or shares one that starts after do was called.
func (s *sharedFlush) do(flush func() error) error {
	s.mu.Lock()
	call := s.next
	if call == nil {
		call = &flushCall{done: make(chan struct{}), lead: make(chan struct{}, 1)}
		s.next = call
	}
	if s.running {
		s.waiting++
		s.mu.Unlock()
		select {
		case <-call.done:
			return call.err
		case <-call.lead:
		}
		s.mu.Lock()
	}
	s.running, s.next, s.waiting = true, nil, 0
	s.mu.Unlock()
	call.err = flush()
	close(call.done)
	s.mu.Lock()
	if s.next != nil {
		s.next.lead <- struct{}{} // running stays set for it
	} else {
		s.running = false
	}
	s.mu.Unlock()
	return call.err
}
