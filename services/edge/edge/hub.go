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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// dispatchBuffer is the capacity of the channel every room subscription
// delivers into. When it is full nats.go drops messages for the
// subscription (a slow consumer) instead of blocking the connection.
const dispatchBuffer = 1 << 16

// hub maps rooms to their local members and owns the room subscriptions.
type hub struct {
	nc      *nats.Conn
	log     *slog.Logger
	metrics *metrics

	// msgs receives the messages of every room subscription; only run
	// reads it.
	msgs chan *nats.Msg

	mu    sync.Mutex
	rooms map[string]*hubRoom // guarded by mu
}

// hubRoom is one room with local members.
type hubRoom struct {
	sub *nats.Subscription
	// members is replaced, never changed in place, so the dispatcher can
	// use a snapshot without holding the lock.
	members []*client
}

func newHub(nc *nats.Conn, log *slog.Logger, m *metrics) *hub {
	return &hub{
		nc:      nc,
		log:     log,
		metrics: m,
		msgs:    make(chan *nats.Msg, dispatchBuffer),
		rooms:   make(map[string]*hubRoom),
	}
}

// join adds c to room, subscribing to the room's messages on its first
// local member. nats.go's Subscribe only queues the SUB line for the
// connection's writer, so holding mu across it does not wait on the
// network.
func (h *hub) join(room string, c *client) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[room]
	if r == nil {
		sub, err := h.nc.ChanSubscribe(subject.RoomMsg(room), h.msgs)
		if err != nil {
			return fmt.Errorf("subscribe room %s: %w", room, err)
		}
		r = &hubRoom{sub: sub}
		h.rooms[room] = r
		h.metrics.roomSubs.Inc()
	}
	if !slices.Contains(r.members, c) {
		r.members = append(slices.Clip(r.members), c)
	}
	return nil
}

// leave removes c from room and drops the subscription after the last
// local member.
func (h *hub) leave(room string, c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.rooms[room]
	if r == nil {
		return
	}
	i := slices.Index(r.members, c)
	if i < 0 {
		return
	}
	r.members = slices.Delete(slices.Clone(r.members), i, i+1)
	if len(r.members) > 0 {
		return
	}
	delete(h.rooms, room)
	h.metrics.roomSubs.Dec()
	if err := r.sub.Unsubscribe(); err != nil {
		h.log.Warn("unsubscribe room", "room", room, "err", err)
	}
}

// members returns the current member list of room; the caller must not
// change it.
func (h *hub) members(room string) []*client {
	h.mu.Lock()
	defer h.mu.Unlock()
	if r := h.rooms[room]; r != nil {
		return r.members
	}
	return nil
}

// subscriptions is the number of room subscriptions held.
func (h *hub) subscriptions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.rooms)
}

// close drops every subscription; the clients are gone by then.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for room, r := range h.rooms {
		_ = r.sub.Unsubscribe()
		delete(h.rooms, room)
		h.metrics.roomSubs.Dec()
	}
}

// run is the dispatch goroutine: it turns each stored room message into
// one encoded event and hands it to the room's local members.
func (h *hub) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-h.msgs:
			h.dispatch(m)
		}
	}
}

func (h *hub) dispatch(m *nats.Msg) {
	room, ok := subject.RoomOfRoomMsg(m.Subject)
	if !ok {
		return
	}
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil || seq == 0 || !validObject(m.Data) {
		// Only the stream's RePublish may publish here; anything else is
		// not a stored message.
		h.log.Warn("dropping a room event that is not a stored message", "room", room)
		return
	}
	data := m.Data
	if bytes.ContainsAny(data, "\r\n") {
		// A line break would split the event in the frame; the
		// broadcaster never writes one, anyone else may.
		var buf bytes.Buffer
		if json.Compact(&buf, data) != nil {
			return
		}
		data = buf.Bytes()
	}
	line := proto.WithSeq(data, seq)
	for _, c := range h.members(room) {
		c.deliver(room, seq, line)
	}
}

// validObject reports whether data is one JSON object, so that WithSeq can
// splice a field into it.
func validObject(data []byte) bool {
	return len(data) >= 2 && data[0] == '{' && data[len(data)-1] == '}' && json.Valid(data)
}
