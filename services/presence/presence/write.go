package presence

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/subject"
)

// The active replica writes what it announced, per room, to the bucket,
// so that the next one (after a restart or a failover) announces only the
// net change. Writes are batched: the loop hands the rooms changed since
// the last batch to the writer goroutine, one batch at a time, each with
// the events it announces; the writer publishes a room's events right
// after the room is written (or its write has failed: announcing matters
// more than the record), and only while the lease lasts.

// write is one key to put, or to delete when value is nil, and the
// events to publish once it is written.
type write struct {
	key    string
	value  []byte
	events []event
}

// batch is what the loop hands to the writer.
type batch struct {
	writes []write
}

// persistResult is the writer's answer to a batch.
type persistResult struct {
	failed []string // keys not written
	// recreated: the bucket was gone and was made again, empty.
	recreated bool
}

// flush hands the rooms changed since the last batch, and the events
// waiting for them, to the writer when it is idle. The loop calls it after
// everything it handles, so a quiet room's event goes out one write
// later, and a busy one's events share a batch.
func (p *Presence) flush() {
	if !p.live || p.persisting || (len(p.dirty) == 0 && !p.dirtyBase && len(p.held) == 0 &&
		!p.dirtyEdges && p.edgesGen == p.st.edgesGen) {
		return
	}
	p.batches <- p.batch()
	p.persisting = true
}

// batch turns the dirty rooms into writes; the edge list and the baseline
// marker come last, so the marker is only there once every room is.
func (p *Presence) batch() batch {
	events := make(map[string][]event)
	for _, ev := range p.held {
		events[ev.room] = append(events[ev.room], ev)
		p.dirty[ev.room] = struct{}{}
	}
	p.held = nil
	b := batch{writes: make([]write, 0, len(p.dirty)+2)}
	for _, room := range slices.Sorted(maps.Keys(p.dirty)) {
		b.writes = append(b.writes, write{key: subject.PresenceRoomKey(room), value: p.record(room), events: events[room]})
	}
	clear(p.dirty)
	if p.dirtyEdges || p.edgesGen != p.st.edgesGen {
		ids, _ := json.Marshal(slices.Sorted(maps.Keys(p.st.edges)))
		b.writes = append(b.writes, write{key: subject.PresenceEdgesKey, value: ids})
		p.edgesGen, p.dirtyEdges = p.st.edgesGen, false
	}
	if p.dirtyBase {
		b.writes = append(b.writes, write{key: subject.PresenceBaselineKey, value: []byte(p.id)})
		p.dirtyBase = false
	}
	return b
}

// record is the bucket value of room, nil when nobody is present.
func (p *Presence) record(room string) []byte {
	users := p.st.users(room)
	if len(users) == 0 {
		return nil
	}
	rec := roomRecord{Users: users}
	if len(users) > p.cfg.MaxMembers {
		rec = roomRecord{Over: true}
	}
	b, _ := json.Marshal(rec)
	return b
}

// written takes the writer's answer.
func (p *Presence) written(res persistResult) {
	p.persisting = false
	if !p.leader {
		return
	}
	if res.recreated {
		// The bucket lost every room: write them all again, and the
		// marker after them.
		for room := range p.st.rooms {
			p.dirty[room] = struct{}{}
		}
		p.dirtyBase, p.dirtyEdges = true, true
	}
	for _, key := range res.failed {
		if room, ok := subject.RoomOfPresenceKey(key); ok {
			p.dirty[room] = struct{}{}
		} else if key == subject.PresenceEdgesKey {
			p.dirtyEdges = true
		} else {
			p.dirtyBase = true
		}
	}
}

// write is the writer goroutine: it stores each batch, publishes its
// events and answers the loop.
func (p *Presence) write(ctx context.Context, b *bucket) {
	for {
		select {
		case <-ctx.Done():
			return
		case bt := <-p.batches:
			res := p.store(ctx, b, bt)
			select {
			case p.persisted <- res:
			case <-ctx.Done():
				return
			}
		}
	}
}

// store writes a batch, publishing each room's events after its write.
// It stops as soon as this replica may no longer act as the leader (or
// is stopping): the next leader writes and announces from its own view
// what this one did not.
func (p *Presence) store(ctx context.Context, b *bucket, bt batch) persistResult {
	var res persistResult
	failed := false
	for i, w := range bt.writes {
		if !p.leading() || ctx.Err() != nil {
			return res
		}
		if !failed {
			kv, err := b.get(ctx)
			if err == nil {
				octx, cancel := context.WithTimeout(ctx, opTimeout)
				if w.value == nil {
					err = kv.Delete(octx, w.key)
				} else {
					_, err = kv.Put(octx, w.key, w.value)
				}
				cancel()
			}
			if err != nil {
				p.metrics.writeFailures.Inc()
				p.log.Warn("announced presence not written", "key", w.key, "err", err)
				res.recreated = b.lost(err)
				for _, rest := range bt.writes[i:] {
					res.failed = append(res.failed, rest.key)
				}
				// The rest is not written, but still announced while
				// the lease lasts.
				failed = true
			}
		}
		if !p.leading() || ctx.Err() != nil {
			return res
		}
		for _, ev := range w.events {
			if err := p.nc.Publish(ev.subject, ev.data); err != nil {
				p.log.Warn("presence event not sent", "subject", ev.subject, "err", err)
				continue
			}
			p.metrics.events.Inc()
		}
	}
	return res
}

// lastWrite writes and announces what is left when the leader stops,
// waiting for a batch already with the writer first; at most stopWait in
// all, or what the deadline of ctx's stop leaves (ops.Budget).
func (p *Presence) lastWrite(ctx context.Context) {
	deadline := time.After(ops.Budget(ctx, stopWait))
	if p.persisting {
		select {
		case res := <-p.persisted:
			p.written(res)
		case <-deadline:
			return
		}
	}
	p.flush()
	if !p.persisting {
		return
	}
	select {
	case <-p.persisted:
	case <-deadline:
	}
}
