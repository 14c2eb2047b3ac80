package edge

import (
	"context"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/store"
)

// Gap repair on the live path (docs/architecture.md, recovery). Core
// NATS drops messages for a subscription that falls behind, and a NATS
// reconnect loses what was published meanwhile. Each republished message
// names the room's previous one (Nats-Last-Sequence), so a member that has
// not had it shows the gap at once. The hub then holds the room's further
// messages, reads the missing ones from the stream on a goroutine of its
// own, delivers them, and then what it held: "acked means delivered" holds
// end to end.

// dropCheck is how often the hub looks for rooms whose subscription
// dropped messages, and for a NATS reconnect. A gap shows in the next
// message of the room; these checks find the gaps no message follows.
const dropCheck = time.Second

// repairTimeout bounds the read of one gap; a room holds its live
// messages meanwhile.
const repairTimeout = 10 * time.Second

// maxHeld bounds the messages a room holds while its gap is read. Beyond
// it the held ones are dropped and read from the stream as well.
const maxHeld = 1 << 14

// repair is a room or conversation whose gap is being read. Owned by the
// dispatcher.
type repair struct {
	held     []*nats.Msg
	overflow bool // held ones were dropped: read on to the newest
}

func (r *repair) hold(m *nats.Msg) {
	if len(r.held) >= maxHeld {
		r.held, r.overflow = nil, true
		return
	}
	r.held = append(r.held, m)
}

// repairDone is a reader's result: k's messages after from and before
// the message that showed the gap (or up to the newest).
type repairDone struct {
	k    key
	msgs []store.Stored
	err  error
}

// startRepair reads k's messages after from and before seq, holding m
// (the message that showed the gap) and k's next ones meanwhile.
func (h *hub) startRepair(k key, from, seq uint64, m *nats.Msg) {
	h.metrics.gaps.Inc()
	h.log.Info("filling a gap from the stream", "log", k.String(), "after", from, "before", seq)
	h.repairs[k] = &repair{held: []*nats.Msg{m}}
	h.read(k, from, seq)
}

// read starts a reader of k's messages after from and before upTo (0: to
// the newest).
func (h *hub) read(k key, from, upTo uint64) {
	h.repairing.Go(func() {
		d := repairDone{k: k}
		ctx, cancel := context.WithTimeout(h.ctx, repairTimeout)
		d.msgs, d.err = h.readRange(ctx, k, from, upTo)
		cancel()
		select {
		case h.repaired <- d:
		case <-h.ctx.Done():
		}
	})
}

// readRange reads k's messages after from and before upTo (0: to the
// newest).
func (h *hub) readRange(ctx context.Context, k key, from, upTo uint64) ([]store.Stored, error) {
	log := k.log()
	var out []store.Stored
	for {
		batch, more, err := store.After(ctx, h.js, log, from, replayBatch)
		if err != nil {
			return out, err
		}
		for _, m := range batch {
			if upTo > 0 && m.Seq >= upTo {
				return out, nil
			}
			out = append(out, m)
			from = m.Seq
		}
		if !more || len(batch) == 0 {
			return out, nil
		}
	}
}

// finishRepair delivers what was read, then what was held.
func (h *hub) finishRepair(d repairDone) {
	r := h.repairs[d.k]
	delete(h.repairs, d.k)
	if d.err != nil {
		// The stream cannot be read: the members with the gap cannot be
		// served without it. They are closed and come back with since,
		// which replays what they missed.
		h.log.Warn("gap not filled: closing the members that miss messages", "log", d.k.String(), "err", d.err)
		h.metrics.gapFailures.Inc()
	}
	prev := noPrev // the read follows on from a gap's start, not known here
	for _, m := range d.msgs {
		line := eventLine(m.Data, m.Seq) // nil: moved past, not sent
		ts := storedTS(m.Data)           // live, if late: its delivery time counts
		members := h.membersAt(d.k, m.Seq, prev, line)
		prev = m.Seq
		for _, c := range members {
			c.deliver(d.k, m.Seq, 0, ts, line)
		}
	}
	if r.overflow && d.err == nil {
		// Messages were dropped while holding, or more were missed
		// meanwhile: read on to the newest (what was held is in the
		// stream too), holding again.
		h.readOn(d.k)
		return
	}
	for _, m := range r.held {
		if d.err != nil {
			h.closeGapped(d.k, m)
			continue
		}
		h.dispatchMsg(d.k, m)
	}
}

// closeGapped delivers m to the members that can take it and closes those
// that would have a gap.
func (h *hub) closeGapped(k key, m *nats.Msg) {
	seq, err := parseSeq(m)
	if err != nil {
		return
	}
	prev, _ := strconv.ParseUint(m.Header.Get(jetstream.LastSequenceHeader), 10, 64)
	line, ts := eventLine(m.Data, seq), storedTS(m.Data)
	for _, c := range h.members(k) {
		if gap, _ := c.deliver(k, seq, prev, ts, line); gap {
			c.close(ws.CloseInternalError, "missed messages could not be read; rejoin with since")
		}
	}
}

// checkDrops reads on to the newest message of each room whose
// subscription dropped messages since the last check, or of every room
// after a NATS reconnect (what was published meanwhile is lost to the
// subscriptions).
func (h *hub) checkDrops() {
	reconnects := h.nc.Stats().Reconnects
	all := reconnects != h.reconnects
	h.reconnects = reconnects
	h.mu.Lock()
	now := time.Now()
	var rooms []string
	for room, r := range h.rooms {
		r.recent.trim(now)
		select {
		case <-r.ready:
		default:
			continue // still subscribing
		}
		if r.sub == nil {
			continue
		}
		n, err := r.sub.Dropped()
		if err == nil && n != r.dropped {
			r.dropped = n
			rooms = append(rooms, room)
		} else if all {
			rooms = append(rooms, room)
		}
	}
	dropped := make(map[string][]*client) // users whose subscriptions dropped dms, with their sessions
	for user, u := range h.users {
		select {
		case <-u.ready:
		default:
			continue
		}
		lost := all
		for i, sub := range u.subs {
			if n, err := sub.Dropped(); err == nil && n != u.dropped[i] {
				u.dropped[i] = n
				lost = true
			}
		}
		if lost {
			dropped[user] = u.members
		}
	}
	h.mu.Unlock()
	for _, room := range rooms {
		h.readOn(roomKey(room))
	}
	for user, sessions := range dropped {
		if !h.missQueued[user] {
			h.missQueued[user] = true
			h.missQueue = append(h.missQueue, missedUser{user, sessions})
		}
	}
	h.findNext()
	h.readFloor()
}

// readOn reads k's messages after the oldest one its members have, up to
// the newest, holding its live messages meanwhile.
func (h *hub) readOn(k key) {
	if r := h.repairs[k]; r != nil {
		r.overflow = true // the running read goes on to the newest
		return
	}
	from, any := uint64(0), false
	for _, c := range h.members(k) {
		if seq, joined := c.sentSeq(k); joined && (!any || seq < from) {
			from, any = seq, true
		}
	}
	if !any {
		return
	}
	h.repairs[k] = &repair{}
	h.read(k, from, 0)
}
