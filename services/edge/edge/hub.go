package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// dispatchBuffer is the capacity of the channel every room subscription
// delivers into. When it is full nats.go drops messages for the
// subscription (a slow consumer) instead of blocking the connection.
const dispatchBuffer = 1 << 16

// hub maps rooms to their local members and users to their local
// sessions, and owns their subscriptions. The stored messages it
// dispatches and repairs belong to a key: a room or a conversation
// (key.go).
type hub struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	log     *slog.Logger
	metrics *metrics

	// msgs receives the messages of every room and user subscription;
	// only run reads it.
	msgs chan *nats.Msg
	// flushes shares a NATS flush between the users subscribed at once.
	flushes sharedFlush

	// repairs are the rooms and conversations whose gaps are being
	// filled, owned by run; repaired receives the reads; repairing counts
	// the readers.
	repairs   map[key]*repair
	repaired  chan repairDone
	repairing sync.WaitGroup
	ctx       context.Context // run's, for the readers
	// reconnects is the connection's reconnect count at the last check.
	reconnects uint64
	// presenceChanged is called, on the dispatcher, for each presence
	// event of a room.
	presenceChanged func(room string)

	// dmFloor is a dm stream seq no newer than the stream's newest: a
	// session that starts now has been sent nothing after it (dm.go).
	dmFloor     atomic.Uint64
	floorKnown  atomic.Bool // set once the floor was read from the stream
	floorReader atomic.Bool // a read of the dm stream's newest seq is out
	// found receives, from a reader, the conversations of a user whose
	// dm subscriptions dropped messages, with their newest seqs. The
	// users wait in missQueue (missQueued) and at most maxFinders are
	// read at once (finding); all three are owned by run.
	found      chan []newestDM
	missQueue  []missedUser
	missQueued map[string]bool
	finding    int

	// mu guards rooms, users and their member lists. It is never held
	// across a NATS call.
	mu    sync.Mutex
	rooms map[string]*hubRoom // guarded by mu
	users map[string]*hubUser // guarded by mu
}

// hubRoom is one room with local members.
type hubRoom struct {
	// ready is closed once the subscription is made (or has failed);
	// sub and err are set before and never change after.
	ready chan struct{}
	sub   *nats.Subscription
	err   error
	// dropped is the subscription's drop count at the last check; only
	// the dispatcher uses it.
	dropped int
	// newest is a seq no older than any stored message of the room that
	// the members were not handed: the newest one dispatched (raised
	// before the members are taken) or read from the stream after the
	// subscription was made. A join reads it, once it is a member,
	// instead of asking the stream (known: it has been read from the
	// stream, and knownAt is the NATS connection's reconnect count then:
	// what is stored while NATS is away never reaches the hub, so after
	// a reconnect the stream is asked again).
	newest  atomic.Uint64
	known   atomic.Bool
	knownAt atomic.Uint64
	// members is appended to, or replaced by a copy, never changed below
	// its length, so the dispatcher can use a snapshot without holding
	// the lock. Guarded by hub.mu.
	members []*client
	// recent is the room's newest stored messages (recent.go).
	recent recentLog
}

func newHub(nc *nats.Conn, js jetstream.JetStream, log *slog.Logger, m *metrics, buffer int) *hub {
	return &hub{
		nc:       nc,
		js:       js,
		log:      log,
		metrics:  m,
		msgs:     make(chan *nats.Msg, buffer),
		repairs:  make(map[key]*repair),
		repaired: make(chan repairDone),
		found:    make(chan []newestDM),

		missQueued: make(map[string]bool),
		rooms:      make(map[string]*hubRoom),
		users:      make(map[string]*hubUser),
	}
}

// join adds c to room, subscribing to the room's messages on its first
// local member. The subscription is made outside mu: nats.go may write to
// its socket while subscribing, and the dispatcher must never wait on
// that.
func (h *hub) join(room string, c *client) error {
	h.mu.Lock()
	r := h.rooms[room]
	first := r == nil
	if first {
		r = &hubRoom{ready: make(chan struct{})}
		h.rooms[room] = r
	}
	// Appended in place: a snapshot the dispatcher holds ends before the
	// new element, and no one ever writes below a list's length (a leave
	// copies it). A copy per join made rejoining a room of n members
	// cost n² (5,000 clients rejoining one room at once: 25 million
	// pointers copied). A client joins a room once: only its reader
	// joins, after beginJoin.
	r.members = append(r.members, c)
	h.mu.Unlock()

	if first {
		r.sub, r.err = h.nc.ChanSubscribe(subject.RoomAll(room), h.msgs)
		if r.err == nil {
			h.metrics.roomSubs.Inc()
		}
		close(r.ready)
	}
	<-r.ready
	if r.err != nil {
		h.leave(room, c)
		return fmt.Errorf("subscribe room %s: %w", room, r.err)
	}
	return nil
}

// leave removes c from room and drops the subscription after the last
// local member. A join that comes meanwhile makes a new entry and a new
// subscription; events the two both receive are dropped by seq.
func (h *hub) leave(room string, c *client) {
	h.mu.Lock()
	r := h.rooms[room]
	last := r != nil && dropMember(&r.members, c)
	if last {
		delete(h.rooms, room)
	}
	h.mu.Unlock()
	if last {
		h.unsubscribe(room, r)
	}
}

// dropMember removes c from *members, copying the list (the dispatcher
// may hold the old one), and reports whether c was the last one there.
// Called with hub.mu held.
func dropMember(members *[]*client, c *client) (last bool) {
	i := slices.Index(*members, c)
	if i < 0 {
		return false
	}
	*members = slices.Delete(slices.Clone(*members), i, i+1)
	return len(*members) == 0
}

// unsubscribe drops a room's subscription once it is made.
func (h *hub) unsubscribe(room string, r *hubRoom) {
	<-r.ready
	if r.sub == nil {
		return
	}
	h.metrics.roomSubs.Dec()
	if err := r.sub.Unsubscribe(); err != nil {
		h.log.Warn("unsubscribe room", "room", room, "err", err)
	}
}

// newest returns room's newest seq as the hub knows it (see hubRoom), and
// false when it does not: the caller reads it from the stream and tells
// learned. Call it once c is a member.
func (h *hub) newest(room string) (uint64, bool) {
	h.mu.Lock()
	r := h.rooms[room]
	h.mu.Unlock()
	if r == nil || !r.known.Load() || r.knownAt.Load() != h.nc.Stats().Reconnects {
		return 0, false
	}
	return r.newest.Load(), true
}

// learned records room's newest seq read from the stream by a join made
// after the subscription; reconnects is the connection's reconnect count
// read before the read.
func (h *hub) learned(room string, seq, reconnects uint64) {
	h.mu.Lock()
	r := h.rooms[room]
	h.mu.Unlock()
	if r != nil {
		raise(&r.newest, seq)
		r.knownAt.Store(reconnects)
		r.known.Store(true)
	}
}

// raise moves v up to seq, never down.
func raise(v *atomic.Uint64, seq uint64) {
	for {
		old := v.Load()
		if seq <= old || v.CompareAndSwap(old, seq) {
			return
		}
	}
}

// membersAt returns k's members (as members does), after keeping the
// message seq (line, following prev; noPrev: unknown) in a room's recent
// log and raising its newest seq to seq: a member added after this call
// is handed nothing up to seq, and reads seq or more from newest, with
// seq in the recent log already. A conversation has neither: no session
// joins it.
func (h *hub) membersAt(k key, seq, prev uint64, line []byte) []*client {
	if k.isDM() {
		return h.members(k)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[k.room]
	if r == nil {
		return nil
	}
	r.recent.add(seq, prev, line, time.Now())
	raise(&r.newest, seq)
	return r.members
}

// recentSince is recentLog.since of room's recent log; not ok when the
// room has no local members.
func (h *hub) recentSince(room string, since, last uint64) (lines []json.RawMessage, oldest uint64, capped, ok bool) {
	h.mu.Lock()
	r := h.rooms[room]
	h.mu.Unlock()
	if r == nil {
		return nil, 0, false, false
	}
	return r.recent.since(since, last)
}

// members returns the clients that k's events go to: a room's members,
// or the sessions of both parties of a conversation. The caller must not
// change the list.
func (h *hub) members(k key) []*client {
	h.mu.Lock()
	defer h.mu.Unlock()
	if k.isDM() {
		a, b := k.conv.a, k.conv.b
		var ma, mb []*client
		if u := h.users[a]; u != nil {
			ma = u.members
		}
		if u := h.users[b]; u != nil && b != a {
			mb = u.members
		}
		if len(ma) == 0 {
			return mb
		}
		if len(mb) == 0 {
			return ma
		}
		return append(slices.Clip(ma), mb...)
	}
	if r := h.rooms[k.room]; r != nil {
		return r.members
	}
	return nil
}

// subscriptions is the number of room subscriptions made and held.
func (h *hub) subscriptions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.rooms {
		select {
		case <-r.ready:
			if r.sub != nil {
				n++
			}
		default: // still subscribing
		}
	}
	return n
}

// close drops every subscription; the clients are gone by then.
func (h *hub) close() {
	h.mu.Lock()
	rooms, users := h.rooms, h.users
	h.rooms, h.users = make(map[string]*hubRoom), make(map[string]*hubUser)
	h.mu.Unlock()
	for room, r := range rooms {
		h.unsubscribe(room, r)
	}
	for user, u := range users {
		h.unsubscribeUser(user, u)
	}
}

// run is the dispatch goroutine: it turns each event (a stored room
// message or dm, a presence change, a typing signal) into one encoded line
// and hands it to the local clients it is for.
func (h *hub) run(ctx context.Context) {
	defer h.repairing.Wait()
	h.ctx = ctx
	check := time.NewTicker(dropCheck)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-h.msgs:
			h.dispatch(m)
		case d := <-h.repaired:
			h.finishRepair(d)
		case convs := <-h.found:
			h.finding--
			h.readMissed(convs)
			h.findNext()
		case <-check.C:
			h.checkDrops()
		}
	}
}

func (h *hub) dispatch(m *nats.Msg) {
	if a, b, ok := subject.PartiesOf(m.Subject); ok {
		h.dispatchDM(dmKey(a, b), m)
		return
	}
	room, kind, ok := subject.RoomOf(m.Subject)
	if !ok {
		return
	}
	switch kind {
	case subject.KindMsg:
		h.dispatchMsg(roomKey(room), m)
	case subject.KindPresence:
		h.dispatchPresence(room, m)
	case subject.KindTyping:
		h.dispatchTyping(room, m)
	}
}

// dispatchPresence passes on a presence event of the presence service. It
// is decoded and encoded again: anyone allowed to publish there must not
// be able to put something else in front of the room's members.
func (h *hub) dispatchPresence(room string, m *nats.Msg) {
	var ev proto.Presence
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != proto.TypePresence || ev.Room != room ||
		(ev.Event != proto.EventJoin && ev.Event != proto.EventLeave) || !names.ValidUser(ev.User) {
		h.log.Warn("dropping a presence event that is not one", "room", room)
		return
	}
	if h.presenceChanged != nil {
		h.presenceChanged(room)
	}
	line := proto.Encode(ev)
	k := roomKey(room)
	for _, c := range h.members(k) {
		c.deliver(k, 0, 0, 0, line)
	}
}

// dispatchMsg hands a stored message to the members of k (a room or a
// conversation), or holds it while k's gaps are being repaired
// (repair.go).
func (h *hub) dispatchMsg(k key, m *nats.Msg) {
	if r := h.repairs[k]; r != nil {
		r.hold(m)
		return
	}
	seq, err := parseSeq(m)
	if err != nil {
		// Only the stream's RePublish may publish here; anything else is
		// not a stored message.
		h.log.Warn("dropping an event that is not a stored message", "subject", m.Subject)
		return
	}
	// RePublish names the room's previous stored message: a member that
	// has not had it has a gap, which the hub fills from the stream before
	// it delivers this one.
	prev, err := strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
	kept := prev
	if err != nil {
		prev, kept = 0, noPrev
	}
	line := eventLine(m.Data, seq)
	if line == nil {
		h.log.Warn("skipping a stored message that is not an event", "subject", m.Subject, "seq", seq)
	}
	ts := storedTS(m.Data) // once per message, not per member
	from, gap := uint64(0), false
	for _, c := range h.membersAt(k, seq, kept, line) {
		if g, have := c.deliver(k, seq, prev, ts, line); g && (!gap || have < from) {
			from, gap = have, true
		}
	}
	if gap {
		h.startRepair(k, from, seq, m)
	}
}

// parseSeq returns the seq of a message republished by a stream; an error
// for anything else.
func parseSeq(m *nats.Msg) (uint64, error) {
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err == nil && seq == 0 {
		err = fmt.Errorf("seq 0")
	}
	return seq, err
}

// eventLine is a stored message as a line of a frame, with its seq; nil
// when it is not a JSON object. A line break would split the event in
// the frame: the broadcaster never writes one, anyone else may.
func eventLine(data []byte, seq uint64) []byte {
	if !validObject(data) {
		return nil
	}
	if bytes.ContainsAny(data, "\r\n") {
		var buf bytes.Buffer
		if json.Compact(&buf, data) != nil {
			return nil
		}
		data = buf.Bytes()
	}
	return proto.WithSeq(data, seq)
}

// storedTS returns the ts (Unix ms) of a stored message or dm, 0 when it
// has none. The broadcaster writes ts as the object's last member
// (proto.Message, proto.DM: their order is Encode's), so it is read from
// the end of data, without decoding the rest: the dispatcher does it
// once per message. In a valid JSON object, digits before the closing
// brace after `,"ts":` (or `{"ts":`) can only be that member's number.
func storedTS(data []byte) int64 {
	const key = `"ts":`
	end := len(data) - 1
	if end < 0 || data[end] != '}' {
		return 0
	}
	i := end
	for i > 0 && end-i < 18 && data[i-1] >= '0' && data[i-1] <= '9' {
		i--
	}
	if i == end || i < len(key)+1 || string(data[i-len(key):i]) != key {
		return 0
	}
	if b := data[i-len(key)-1]; b != ',' && b != '{' {
		return 0
	}
	var ts int64
	for _, d := range data[i:end] {
		ts = ts*10 + int64(d-'0')
	}
	return ts
}

// validObject reports whether data is one JSON object, so that WithSeq can
// splice a field into it.
func validObject(data []byte) bool {
	return len(data) >= 2 && data[0] == '{' && data[len(data)-1] == '}' && json.Valid(data)
}
