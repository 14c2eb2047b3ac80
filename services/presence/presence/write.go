package presence

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/natter-chat/natter/shared/subject"
)

// The active replica writes what it announced, per room, to the bucket,
// so that the next one (after a restart or a failover) announces only
// the net change. Writes are batched: the loop hands the rooms changed
// since the last batch to the writer goroutine, one batch at a time.

// write is one key to put, or to delete when value is nil.
type write struct {
	key   string
	value []byte
}

// persistResult is the writer's answer to a batch.
type persistResult struct {
	failed []string // keys not written
	// recreated: the bucket was gone and was made again, empty.
	recreated bool
}

// flush hands the rooms changed since the last batch to the writer, when
// it is idle.
func (p *Presence) flush() {
	if !p.live || p.persisting || (len(p.dirty) == 0 && !p.dirtyBase) {
		return
	}
	p.batches <- p.batch()
	p.persisting = true
}

// batch turns the dirty rooms into writes; the baseline marker comes
// last, so it is only there once every room before it is.
func (p *Presence) batch() []write {
	ws := make([]write, 0, len(p.dirty)+1)
	for _, room := range slices.Sorted(maps.Keys(p.dirty)) {
		ws = append(ws, write{key: subject.PresenceRoomKey(room), value: p.record(room)})
	}
	clear(p.dirty)
	if p.dirtyBase {
		ws = append(ws, write{key: subject.PresenceBaselineKey, value: []byte(p.id)})
		p.dirtyBase = false
	}
	return ws
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
		p.dirtyBase = true
	}
	for _, key := range res.failed {
		if room, ok := subject.RoomOfPresenceKey(key); ok {
			p.dirty[room] = struct{}{}
		} else {
			p.dirtyBase = true
		}
	}
}

// write is the writer goroutine: it stores each batch and answers the
// loop.
func (p *Presence) write(ctx context.Context, b *bucket) {
	for {
		select {
		case <-ctx.Done():
			return
		case ws := <-p.batches:
			res := p.store(ctx, b, ws)
			select {
			case p.persisted <- res:
			case <-ctx.Done():
				return
			}
		}
	}
}

func (p *Presence) store(ctx context.Context, b *bucket, ws []write) persistResult {
	var res persistResult
	for i, w := range ws {
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
			if b.lost(err) {
				res.recreated = true
			}
			for _, rest := range ws[i:] {
				res.failed = append(res.failed, rest.key)
			}
			return res
		}
	}
	return res
}

// lastWrite writes what is left when the leader stops, waiting for a
// batch already with the writer first; at most stopWait in all.
func (p *Presence) lastWrite() {
	deadline := time.After(stopWait)
	if p.persisting {
		select {
		case res := <-p.persisted:
			p.written(res)
		case <-deadline:
			return
		}
	}
	if len(p.dirty) == 0 && !p.dirtyBase {
		return
	}
	if !p.live {
		return
	}
	p.batches <- p.batch()
	select {
	case <-p.persisted:
	case <-deadline:
	}
}
