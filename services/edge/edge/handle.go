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
	c.mu.Lock()
	if st := c.rooms[room]; st != nil {
		// Only the reader joins, so st is joined, not joining.
		c.mu.Unlock()
		users := c.presentUsers(room)
		c.mu.Lock()
		// Wait for room first: lastSeq may move while waiting, and joined
		// must carry the newest seq sent before it.
		if c.waitSpaceLocked() && c.rooms[room] == st {
			j := proto.Joined{Type: proto.TypeJoined, Room: room, Users: users, Seq: st.lastSeq}
			if req.Since != nil {
				// Live on this connection already: nothing is replayed,
				// and only a client that has seen everything sent here
				// has recovered.
				recovered := uint64(*req.Since) == st.lastSeq
				j.Recovered = &recovered
			}
			c.replyLocked(proto.Encode(j))
		}
		c.mu.Unlock()
		return
	}
	if len(c.rooms) >= c.e.cfg.Limits.MaxRooms {
		c.mu.Unlock()
		c.refuse(req, &proto.Error{Code: proto.CodeTooManyRooms, Message: "joined to too many rooms"})
		return
	}
	if !c.e.nc.IsConnected() {
		c.mu.Unlock()
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "NATS unavailable, try again"})
		return
	}
	st := &roomState{joining: true}
	c.rooms[room] = st
	c.mu.Unlock()

	undo := func(err error) {
		c.e.log.Warn("join failed", "room", room, "session", c.session, "err", err)
		c.e.hub.leave(room, c)
		c.mu.Lock()
		delete(c.rooms, room)
		c.mu.Unlock()
		c.refuse(req, &proto.Error{Code: proto.CodeUnavailable, Message: "message store unavailable, try again"})
	}
	if err := c.e.hub.join(room, c); err != nil {
		undo(err)
		return
	}
	ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
	// The room's newest seq: from the hub when it has it (the room has
	// other local members), else from the stream, after the subscription.
	last, known := c.e.hub.newest(room)
	var err error
	if !known {
		reconnects := c.e.nc.Stats().Reconnects
		if last, err = store.LastSeq(ctx, c.e.nc, store.Room(room)); err == nil {
			c.e.hub.learned(room, last, reconnects)
		}
	}
	var replayed []store.Stored
	var recovered *bool
	if err == nil && req.Since != nil {
		var ok bool
		replayed, ok, err = c.replay(ctx, room, uint64(*req.Since), last)
		recovered = &ok
	}
	cancel()
	if err != nil {
		undo(err)
		return
	}
	// The replay goes out before joined, with back-pressure; live events
	// meanwhile wait in pending (joining is still set).
	for _, line := range lines(replayed) {
		c.reply(line)
	}
	// The report is published before who is asked, on the same
	// connection, so presence counts this session in its answer.
	c.e.reporter.join(c.session, c.user, room)
	users := c.presentUsers(room)

	// Live events held back meanwhile may show a gap after last (the
	// subscription missed one): read up to the newest held from the
	// stream first, so that joined is followed by no gap.
	sent := last
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if !c.waitSpaceLocked() {
			return // closing
		}
		upTo := pendingGap(st.pending, sent)
		if upTo == 0 {
			break
		}
		c.mu.Unlock()
		ctx, cancel := context.WithTimeout(c.e.ctx, c.e.cfg.Limits.PostTimeout)
		msgs, err := c.e.hub.readRange(ctx, roomKey(room), sent, upTo+1)
		cancel()
		if err == nil {
			for _, line := range lines(msgs) {
				c.reply(line)
			}
			sent = upTo
		}
		c.mu.Lock()
		if err != nil {
			c.mu.Unlock()
			c.e.reporter.leave(c.session, c.user, room)
			undo(err)
			c.mu.Lock()
			return
		}
	}
	// There is room in the queue: replyLocked does not wait.
	c.replyLocked(proto.Encode(proto.Joined{Type: proto.TypeJoined, Room: room, Users: users, Seq: sent, Recovered: recovered}))
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
func (c *client) presentUsers(room string) *[]string {
	users, err := c.e.joinedUsers(room, c.user)
	if err != nil {
		c.e.log.Debug("joined without users", "room", room, "err", err)
		return nil
	}
	return &users
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
	post.From, post.Text, post.Edge, post.Session = c.user, *req.Text, c.e.id, c.session
	if req.ID != nil {
		post.ID = *req.ID
	}
	if perr := proto.CheckPost(post.Text, post.ID, c.e.cfg.Limits.MaxTextChars); perr != nil {
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
		// of the reader, which set heard right after the read that
		// completed it: no clock read of its own at the start.
		c.e.metrics.post.Observe(max(float64(time.Now().UnixNano()-c.heard.Load()), 0) / 1e9)
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
