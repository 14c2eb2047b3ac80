package presence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// Replicas: one active, the others standing by. Every replica follows
// the edges and keeps the full view, but only the one that holds the
// leader key announces, answers who and writes what it announced. The key
// lives in a JetStream key-value bucket; the leader rewrites it every
// second with a compare-and-set on its revision, and a standby that sees
// the revision unchanged for a lease takes it over with the same
// compare-and-set, so two standbys never both win. Partitioning rooms
// between replicas was the other choice: it scales the work, but needs
// NATS subject mapping on both the reports and the who requests and a
// view per partition; one replica holds 15,000 sessions of 100 rooms
// each with ease, so the simpler failover comes first.

// role is what the elector tells the loop.
type role struct {
	leader bool
	// baseline is what the previous leader announced, per room, and edges
	// the edges it knew, when the bucket holds a complete record of them
	// (hasBaseline).
	baseline    map[string]roomRecord
	edges       []string
	hasBaseline bool
}

// renew is how often the leader rewrites its key and a standby looks at
// it. A leader that has not renewed for Lease-renew steps down, a second
// before a standby may take over, so two never announce at once.
const renew = time.Second

// bucket is the presence key-value bucket, opened (or created, or updated
// to the configured replicas) on first use and again after it is lost.
type bucket struct {
	js       jetstream.JetStream
	nc       *nats.Conn
	replicas int

	mu sync.Mutex
	kv jetstream.KeyValue // guarded by mu
}

// get returns the bucket, opening it when needed. The lock is not held
// across the request: the elector and the writer may both open it, and the
// later one's handle wins, which is the same bucket. NATS servers that can
// never hold the replicas get a *store.ReplicasError.
func (b *bucket) get(ctx context.Context) (jetstream.KeyValue, error) {
	b.mu.Lock()
	kv := b.kv
	b.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subject.PresenceBucket,
		Description: "natter presence: the active replica and what it announced per room",
		History:     1,
		// Presence is rebuilt from the edges; the bucket only has to
		// outlive a presence replica, not NATS, so memory is enough. On
		// a cluster its replicas keep it through the loss of a server.
		Storage:  jetstream.MemoryStorage,
		Replicas: b.replicas,
	})
	if err != nil {
		err = fmt.Errorf("presence bucket %s: %w", subject.PresenceBucket, err)
		if refused := store.ReplicasRefused(err, b.replicas, b.nc); refused != nil {
			return nil, refused
		}
		return nil, err
	}
	b.mu.Lock()
	b.kv = kv
	b.mu.Unlock()
	return kv, nil
}

// lost forgets the bucket handle after an error that says it is gone.
func (b *bucket) lost(err error) bool {
	if !errors.Is(err, jetstream.ErrBucketNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) &&
		!errors.Is(err, jetstream.ErrNoStreamResponse) {
		return false
	}
	b.mu.Lock()
	b.kv = nil
	b.mu.Unlock()
	return true
}

// elect campaigns for the leader key until ctx ends, then gives the key
// up if it holds it, so a standby takes over at once. It returns early,
// with the error, only when the bucket's replicas are refused for good.
func (p *Presence) elect(ctx context.Context, b *bucket) error {
	var (
		leading  bool
		held     jetstream.KeyValue // the bucket the key was won in
		rev      uint64             // the key's revision as we last wrote it
		seenRev  uint64             // as a standby: the revision last seen
		seenAt   time.Time          // and when it changed
		lastWarn time.Time
	)
	warn := func(msg string, err error) {
		if time.Since(lastWarn) > 10*time.Second {
			lastWarn = time.Now()
			p.log.Warn(msg, "err", err)
		}
	}
	tell := func(r role) bool {
		select {
		case p.roles <- r:
			return true
		case <-ctx.Done():
			return false
		}
	}
	stepDown := func(why string) bool {
		p.log.Warn("giving up the lead", "why", why)
		leading = false
		p.leaseUntil.Store(0)
		seenRev, seenAt = 0, time.Now()
		return tell(role{})
	}
	t := time.NewTicker(renew)
	defer t.Stop()
	for {
		if leading {
			renewed := p.renew(ctx, b, &rev)
			switch {
			case rev == 0:
				if !stepDown("another replica holds the leader key") {
					return nil
				}
			case !renewed && !p.leading():
				if !stepDown("the leader key could not be renewed in time") {
					return nil
				}
			}
		} else if kv, err := b.get(ctx); err != nil {
			if _, ok := errors.AsType[*store.ReplicasError](err); ok {
				return err
			}
			warn("presence bucket unavailable", err)
		} else if won, r := p.campaign(ctx, kv, b, &seenRev, &seenAt, warn); won {
			base, edges, has, err := loadBaseline(ctx, kv)
			if err != nil {
				// Without the record, announcing from scratch would
				// repeat every join: give the key up and try again.
				warn("announced state not readable", err)
				p.resign(kv, r)
			} else {
				leading, held, rev = true, kv, r
				if !tell(role{leader: true, baseline: base, edges: edges, hasBaseline: has}) {
					p.resign(held, rev)
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			if leading {
				p.resign(held, rev)
			}
			return nil
		case <-t.C:
		}
	}
}

// extendLease lets this replica act as the leader until a second before a
// standby may take over: a standby waits a lease from when it first sees
// a revision, which is after the write was sent.
func (p *Presence) extendLease(sent time.Time) {
	p.leaseUntil.Store(sent.Add(p.cfg.Lease - renew).UnixNano())
}

// renew rewrites the leader key within the lease. It reports whether the
// key is renewed; *rev is set to 0 when another replica holds it (or it is
// gone).
func (p *Presence) renew(ctx context.Context, b *bucket, rev *uint64) bool {
	kv, err := b.get(ctx)
	if err != nil {
		return false
	}
	octx, cancel := context.WithDeadline(ctx, time.Unix(0, p.leaseUntil.Load()))
	defer cancel()
	sent := time.Now()
	r, err := kv.Update(octx, subject.PresenceLeaderKey, []byte(p.token), *rev)
	if err == nil {
		*rev = r
		p.extendLease(sent)
		return true
	}
	// A lost bucket (b.lost) may be a passing error of a cluster; a
	// bucket made again has no key, and the next renewal says so.
	if !b.lost(err) && errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		// An earlier renewal may have been applied although its answer
		// was lost: the key still names us.
		e, gerr := kv.Get(octx, subject.PresenceLeaderKey)
		switch {
		case gerr == nil && string(e.Value()) == p.token:
			*rev = e.Revision()
		case gerr == nil || errors.Is(gerr, jetstream.ErrKeyNotFound):
			*rev = 0
		}
	}
	return false
}

// campaign takes the leader key when it is free, or when its revision has
// not changed for a lease.
func (p *Presence) campaign(ctx context.Context, kv jetstream.KeyValue, b *bucket, seenRev *uint64, seenAt *time.Time,
	warn func(string, error)) (bool, uint64) {
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	e, err := kv.Get(octx, subject.PresenceLeaderKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		sent := time.Now()
		r, err := kv.Create(octx, subject.PresenceLeaderKey, []byte(p.token))
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyExists) {
				b.lost(err)
				warn("leader key not created", err)
			}
			return false, 0
		}
		p.extendLease(sent)
		return true, r
	}
	if err != nil {
		b.lost(err)
		warn("leader key not readable", err)
		return false, 0
	}
	if e.Revision() != *seenRev {
		*seenRev, *seenAt = e.Revision(), time.Now()
		return false, 0
	}
	if time.Since(*seenAt) < p.cfg.Lease {
		return false, 0
	}
	sent := time.Now()
	r, err := kv.Update(octx, subject.PresenceLeaderKey, []byte(p.token), e.Revision())
	if err != nil {
		return false, 0 // another standby was faster
	}
	p.extendLease(sent)
	p.log.Info("took over from a silent leader", "previous", string(e.Value()))
	return true, r
}

// resign deletes the leader key if it is still ours.
func (p *Presence) resign(kv jetstream.KeyValue, rev uint64) {
	p.leaseUntil.Store(0)
	if kv == nil || rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := kv.Delete(ctx, subject.PresenceLeaderKey, jetstream.LastRevision(rev)); err != nil {
		p.log.Debug("leader key not given up", "err", err)
	}
}

// loadBaseline reads what the last leader announced per room and the
// edges it knew. Without the baseline marker the record is incomplete (or
// the bucket new), and there is no baseline.
func loadBaseline(ctx context.Context, kv jetstream.KeyValue) (map[string]roomRecord, []string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*opTimeout)
	defer cancel()
	if _, err := kv.Get(ctx, subject.PresenceBaselineKey); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, false, nil
	} else if err != nil {
		return nil, nil, false, err
	}
	var edges []string
	if e, err := kv.Get(ctx, subject.PresenceEdgesKey); err == nil {
		_ = json.Unmarshal(e.Value(), &edges)
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, false, err
	}
	w, err := kv.Watch(ctx, subject.PresenceRoomKeys, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, nil, false, err
	}
	defer func() { _ = w.Stop() }()
	base := make(map[string]roomRecord)
	for {
		select {
		case <-ctx.Done():
			return nil, nil, false, ctx.Err()
		case e := <-w.Updates():
			if e == nil {
				return base, edges, true, nil
			}
			room, ok := subject.RoomOfPresenceKey(e.Key())
			var rec roomRecord
			if !ok || json.Unmarshal(e.Value(), &rec) != nil {
				continue
			}
			base[room] = rec
		}
	}
}
