package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/time/rate"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// handle answers one request object. It runs on the reader, so a
// session has at most one post in flight: its messages are stored in the
// order it sent them.
func (c *client) handle(line []byte) {
	req, perr := proto.ParseRequest(line)
	if perr != nil {
		c.refuse(req, perr)
		return
	}
	switch req.Type {
	case proto.TypeJoin:
		c.join(req)
	case proto.TypeLeave:
		c.leave(req)
	case proto.TypeMessage:
		c.post(req)
	case proto.TypeWho:
		c.who(req)
	case proto.TypeHistory:
		c.history(req)
	case proto.TypeDM:
		c.dm(req)
	case proto.TypeDMs:
		c.dms(req)
	case proto.TypeTyping:
		c.typing(req)
	default:
		// ParseRequest knows no other type.
		c.refuse(req, &proto.Error{Code: proto.CodeUnknownType, Message: "unknown type " + req.Type})
	}
}

func (c *client) refuse(req proto.Request, perr *proto.Error) {
	c.e.metrics.errors.WithLabelValues(perr.Code).Inc()
	c.reply(proto.Encode(proto.ErrorEvent{Type: proto.TypeError, Code: perr.Code, Message: perr.Message, ID: req.RawID}))
}

func (c *client) joined(room string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.rooms[room]
	return st != nil && !st.joining
}

// join subscribes the client to a room. The room's subscription is taken
// before its newest seq is read, and live events are held back meanwhile;
// with since, the messages after it up to that seq are replayed from the
// stream; then joined, then the held events newer than what was sent. So
// no event is lost or doubled between the replay and the live path.
func (c *client) join(req proto.Request) {
	room := *req.Room
	st, again, perr := c.beginJoin(room)
	if perr != nil {
		c.refuse(req, perr)
		return
	}
	if again {
		c.rejoin(req, room, st)
		return
	}
	if err := c.e.hub.join(room, c); err != nil {
		c.undoJoin(req, room, err)
		return
	}
	last, replayed, recovered, err := c.readSince(room, req.Since)
	if err != nil {
		c.undoJoin(req, room, err)
		return
	}
	// The replay goes out before joined, with back-pressure; live events
	// meanwhile wait in pending (joining is still set).
	for _, line := range replayed {
		c.reply(line)
	}
	// The report is published before who is asked, on the same
	// connection, so presence counts this session in its answer.
	c.e.reporter.join(c.session, c.user, room)
	joined := joinedAnswer{room: room, users: c.presentUsers(room), recovered: recovered}
	if err := c.goLive(room, st, last, joined); err != nil {
		// The session was reported in the room: its leave is too.
		c.e.reporter.leave(c.session, c.user, room)
		c.undoJoin(req, room, err)
	}
}

// beginJoin checks a join against the limits and marks room joining, so
// that its live events are held back from the moment the hub makes the
// client a member. It returns the room's state, with again set when the
// client is joined there already, or why the join is refused.
func (c *client) beginJoin(room string) (st *roomState, again bool, perr *proto.Error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.rooms[room]; st != nil {
		// Only the reader joins, so st is joined, not joining.
		return st, true, nil
	}
	if len(c.rooms) >= c.e.cfg.Limits.MaxRooms {
		return nil, false, &proto.Error{Code: proto.CodeTooManyRooms, Message: "joined to too many rooms"}
	}
	if !c.e.nc.IsConnected() {
		// Told at once, rather than once the read of the room's newest
		// seq has timed out.
		return nil, false, &proto.Error{Code: proto.CodeUnavailable, Message: "NATS unavailable, try again"}
	}
	st = &roomState{joining: true}
	c.rooms[room] = st
	return st, false, nil
}

// rejoin answers a join of a room the client is joined to already.
func (c *client) rejoin(req proto.Request, room string, st *roomState) {
	users := c.presentUsers(room)
	c.mu.Lock()
	defer c.mu.Unlock()
	// Wait for room first: lastSeq may move while waiting, and joined
	// must carry the newest seq sent before it.
	if !c.waitSpaceLocked() || c.rooms[room] != st {
		return
	}
	j := joinedAnswer{room: room, users: users}
	if req.Since != nil {
		// Live on this connection already: nothing is replayed, and only
		// a client that has seen everything sent here has recovered.
		recovered := uint64(*req.Since) == st.lastSeq
		j.recovered = &recovered
	}
	c.replyLocked(j.encode(st.lastSeq))
}

// joinedAnswer is a joined answer but its seq, known only once the
// replay is queued.
type joinedAnswer struct {
	room      string
	users     [][]byte // parts of the users' JSON array; none: left out
	recovered *bool
}

func (j joinedAnswer) encode(seq uint64) []byte {
	return proto.EncodeJoined(j.room, seq, j.recovered, j.users...)
}

// undoJoin takes back a join that cannot be completed, after beginJoin,
// and tells the client to try again.
func (c *client) undoJoin(req proto.Request, room string, err error) {
	c.e.log.Warn("join failed", "room", room, "session", c.session, "err", err)
	c.e.hub.leave(room, c)
	c.mu.Lock()
	delete(c.rooms, room)
	c.mu.Unlock()
	c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "message store unavailable, try again"})
}

// readSince reads room's newest seq (last) and, with since, the messages
// after since up to last, and whether those are all of them (recovered).
// The client is a member already: a message stored before the read is
// at most last, and one stored after it reaches the client live, held
// back until joined.
func (c *client) readSince(room string, since *int64) (last uint64, replayed []json.RawMessage, recovered *bool, err error) {
	ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
	defer cancel()
	last, err = c.newestSeq(ctx, room, false)
	if err == nil && since != nil && uint64(*since) > last {
		// The client has seen a newer message than the hub has handed
		// out: on another edge, whose dispatcher is ahead of this one's.
		// Only the stream can tell that from a store that was reset.
		last, err = c.newestSeq(ctx, room, true)
	}
	if err != nil || since == nil {
		return last, nil, nil, err
	}
	replayed, ok, err := c.replay(ctx, room, uint64(*since), last)
	return last, replayed, &ok, err
}

// newestSeq returns room's newest seq: from the hub when it has it (the
// room has other local members) and fromStream is not set, which spares
// the stream a read, else from the stream, which the hub then keeps for
// the next join.
func (c *client) newestSeq(ctx context.Context, room string, fromStream bool) (uint64, error) {
	if last, known := c.e.hub.newest(room); known && !fromStream {
		return last, nil
	}
	// Counted before the read, so that a reconnect during it, which may
	// lose messages the hub never sees, sends the next join to the
	// stream again (hubRoom).
	reconnects := c.e.nc.Stats().Reconnects
	last, err := store.LastSeq(ctx, c.e.nc, store.Room(room))
	if err == nil {
		c.e.hub.learned(room, last, reconnects)
	}
	return last, err
}

// goLive ends a join whose replay (up to sent) is queued: it fills a gap
// in the events held back, then queues joined and the held events. The
// last check for a gap, joined and the held events are done under one
// hold of mu, so no live event can come between joined and those held
// before it. A client closing meanwhile is sent nothing more.
func (c *client) goLive(room string, st *roomState, sent uint64, joined joinedAnswer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	sent, err := c.fillHeldGapLocked(room, st, sent)
	if err != nil || c.conn.Closing() {
		return err
	}
	// There is room in the queue: replyLocked does not wait.
	c.replyLocked(joined.encode(sent))
	c.releaseHeldLocked(st, sent)
	return nil
}

// fillHeldGapLocked reads from the stream and queues the messages that
// the events held back skip after sent (the subscription missed one), so
// that joined is followed by no gap. It returns the newest seq sent, with
// room in the queue and no gap held, unless the client is closing or a
// read failed. It releases mu while it waits and reads; events held back
// meanwhile may skip again, so it looks again after each read.
func (c *client) fillHeldGapLocked(room string, st *roomState, sent uint64) (uint64, error) {
	for {
		if !c.waitSpaceLocked() {
			return sent, nil // closing
		}
		upTo := pendingGap(st.pending, sent)
		if upTo == 0 {
			return sent, nil
		}
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
		msgs, err := c.e.hub.readRange(ctx, roomKey(room), sent, upTo+1)
		cancel()
		if err == nil {
			for _, line := range lines(msgs) {
				c.reply(line)
			}
		}
		c.mu.Lock()
		if err != nil {
			return sent, err
		}
		sent = upTo
	}
}

// releaseHeldLocked makes st live: the events held back while joining go
// out in the order they came, after joined, except the stored messages
// the replay or a gap's read sent already (up to sent).
func (c *client) releaseHeldLocked(st *roomState, sent uint64) {
	st.joining = false
	st.lastSeq = sent
	for _, p := range st.pending {
		switch {
		case p.seq == 0: // not a stored message: nothing to drop by seq
			c.enqueueLiveLocked(p.line)
		case p.seq > st.lastSeq:
			st.lastSeq = p.seq
			if p.line != nil {
				c.enqueueStoredLocked(p.line, p.ts)
			}
		}
	}
	st.pending = nil
}

// pendingGap returns the newest seq held back when a stored message held
// back follows one the client has not had (after sent), 0 when the held
// ones follow on from sent without a gap.
func pendingGap(pending []pendingEvent, sent uint64) uint64 {
	cur, newest, gap := sent, uint64(0), false
	for _, p := range pending {
		if p.seq == 0 || p.seq <= cur {
			continue
		}
		if p.prev > cur {
			gap = true
		}
		cur, newest = p.seq, p.seq
	}
	if !gap {
		return 0
	}
	return newest
}

func (c *client) leave(req proto.Request) {
	room := *req.Room
	if !c.joined(room) {
		c.refuse(req, &proto.Error{Code: proto.CodeNotJoined, Message: "not joined to room " + room})
		return
	}
	c.e.hub.leave(room, c)
	c.e.reporter.leave(c.session, c.user, room)
	c.mu.Lock()
	delete(c.rooms, room)
	delete(c.typed, room)
	c.replyLocked(proto.Encode(proto.Left{Type: proto.TypeLeft, Room: room}))
	c.mu.Unlock()
}

// presentUsers is the users list of joined: nil, so left out, while
// presence is unavailable.
func (c *client) presentUsers(room string) [][]byte {
	users, err := c.e.joinedUsers(room, c.user)
	if err != nil {
		c.e.log.Debug("joined without users", "room", room, "err", err)
		return nil
	}
	return users
}

// who answers who from presence; joining the room is not needed.
func (c *client) who(req proto.Request) {
	room := *req.Room
	users, err := c.e.who(room)
	if err != nil {
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "presence unavailable, try again"})
		return
	}
	c.reply(proto.Encode(proto.Who{Type: proto.TypeWho, Room: room, Users: users}))
}

// leaveAll drops the client from every room, and from its user's dms,
// when it is gone.
func (c *client) leaveAll() {
	c.e.hub.leaveUser(c.user, c)
	c.mu.Lock()
	rooms := make([]string, 0, len(c.rooms))
	for room := range c.rooms {
		rooms = append(rooms, room)
	}
	c.mu.Unlock()
	for _, room := range rooms {
		c.e.hub.leave(room, c)
		c.e.reporter.leave(c.session, c.user, room)
	}
}

// post sends a room message to the broadcasters and waits for it to be
// stored.
func (c *client) post(req proto.Request) {
	room := *req.Room
	if !c.joined(room) {
		c.refuse(req, &proto.Error{Code: proto.CodeNotJoined, Message: "not joined to room " + room})
		return
	}
	c.store(req, subject.InRoom(room), proto.Post{Room: room})
}

// store checks a post (a room message or a dm: post names its room or
// recipient), sends it to the broadcasters on subj with the sender's
// text, id and session, and waits for it to be stored; the sender gets
// ack when it gave an id. Only a stored post counts against the rate
// limit.
func (c *client) store(req proto.Request, subj string, post proto.Post) {
	post.From, post.Edge, post.Session = c.user, c.e.id, c.session
	if req.Text != nil {
		post.Text = *req.Text
	}
	if req.File != nil {
		post.File = *req.File
	}
	if req.ID != nil {
		post.ID = *req.ID
	}
	if perr := proto.CheckPost(post.Text, post.File, post.ID, c.e.cfg.Limits.MaxTextChars); perr != nil {
		c.refuse(req, perr)
		return
	}
	if !c.mayPost() {
		c.refuse(req, rateLimited(c.e.cfg.Limits))
		return
	}
	if !c.e.nc.IsConnected() {
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "NATS unavailable, try again"})
		return
	}
	ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
	msg, err := c.e.nc.RequestWithContext(ctx, subj, proto.Encode(post))
	cancel()
	if err == nil {
		// A broadcaster answered. The post's frame was read in this turn
		// of the reader, which noted when it heard the client right after
		// the read that completed it: no clock read of its own at the
		// start.
		c.e.metrics.post.Observe(max(time.Since(c.conn.Heard()).Seconds(), 0))
	}
	if err != nil {
		msg := "message store unavailable, try again"
		if errors.Is(err, nats.ErrNoResponders) {
			msg = "no broadcaster is running, try again"
		} else if errors.Is(err, context.DeadlineExceeded) {
			msg = "message store timed out after " + c.e.cfg.Limits.PostTimeout.String() + ", try again"
		}
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: msg})
		return
	}
	var reply proto.PostReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil || (reply.Code == "" && reply.Seq == 0) {
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "bad reply from the message store"})
		return
	}
	if reply.Code != "" {
		c.refuse(req, &proto.Error{Code: reply.Code, Message: reply.Message})
		return
	}
	if c.limiter != nil {
		c.limiter.Allow() // counted: mayPost saw a token, and only this goroutine takes them
	}
	c.e.metrics.posted.Inc()
	if post.ID != "" {
		c.reply(proto.Encode(proto.Ack{Type: proto.TypeAck, ID: post.ID, Seq: reply.Seq}))
	}
}

// mayPost reports whether the connection's rate limit (Limits.MessageRate,
// MessageBurst) has room for one more message or dm. It is asked after
// every other check and takes nothing: store counts the post once it is
// stored, so that only accepted posts count. The limiter is made on the
// first post: an idle connection holds none.
func (c *client) mayPost() bool {
	lim := c.e.cfg.Limits
	if lim.MessageRate <= 0 {
		return true
	}
	if c.limiter == nil { // only the reader posts
		c.limiter = rate.NewLimiter(rate.Limit(lim.MessageRate), max(lim.MessageBurst, 1))
	}
	return c.limiter.Tokens() >= 1
}

func rateLimited(lim config.Limits) *proto.Error {
	return &proto.Error{Code: proto.CodeRateLimited,
		Message: fmt.Sprintf("more than %g messages a second (bursts of %d); this one was dropped", lim.MessageRate, lim.MessageBurst)}
}
