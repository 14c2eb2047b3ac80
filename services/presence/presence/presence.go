package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// Timing defaults, from the protocol (docs/protocol.md): edges send a heartbeat
// every 5 s; an edge silent for three of them has vanished, which keeps
// the promise of announcing its leaves within 20 s (15 s and at most one
// tick). A replica that becomes active waits until it has heard from
// every edge the previous one knew, or for a heartbeat interval and a
// margin when there is no record of them, and never longer than
// maxWarmup: that keeps the promise of a right who within 10 s.
const (
	DefaultEdgeTimeout = 15 * time.Second
	DefaultWarmup      = 6 * time.Second
	DefaultLease       = 5 * time.Second
	maxWarmup          = 8 * time.Second

	// tick is how often the loop expires edges, times out syncs and writes
	// what it announced.
	tick = 250 * time.Millisecond
	// msgBuffer is the capacity of the channel every subscription delivers
	// into. When it is full nats.go drops messages (a slow consumer); the
	// next heartbeat's digest shows the loss and a sync repairs it.
	msgBuffer = 1 << 16
	// maxHeldEvents bounds the announcements waiting for their rooms to be
	// written.
	maxHeldEvents = 1 << 16
	// opTimeout bounds one key-value operation.
	opTimeout = 2 * time.Second
	// stopWait bounds the last write of the announced state on shutdown.
	stopWait = 2 * time.Second
)

// Config is what a presence replica needs; zero durations take the
// defaults above.
type Config struct {
	// ID names the replica in its logs and in the leader key; empty picks
	// a random one.
	ID string
	// MaxMembers: rooms with more present users get no per-user events.
	MaxMembers  int
	EdgeTimeout time.Duration
	Warmup      time.Duration
	// Lease is how long the leader key may stay unchanged before a
	// standby takes over.
	Lease time.Duration
	// Fresh says that the NATS server started with this process (the
	// single binary's embedded one): no edge can hold sessions yet, so
	// there is nothing to wait for before going live.
	Fresh bool
	// Replicas is how many copies JetStream keeps of the bucket, at least
	// 1 (CHAT_STREAM_REPLICAS).
	Replicas int
}

// Presence is one presence replica; see the package documentation.
type Presence struct {
	cfg     Config
	id      string
	nc      *nats.Conn
	log     *slog.Logger
	metrics *metrics
	// inbox prefixes the reply subjects of sync requests.
	inbox string

	msgs      chan *nats.Msg     // every subscription delivers here; read by the loop
	roles     chan role          // from the elector
	batches   chan batch         // to the writer
	persisted chan persistResult // from the writer
	liveOnce  chan struct{}      // closed when the replica first goes live
	// leaseUntil (Unix nanoseconds) is set by the elector: the moment up
	// to which this replica may act as the leader, a second before a
	// standby may take the key over (0: not leading). The writer neither
	// writes nor announces after it.
	leaseUntil atomic.Int64
	// token is the leader key's value: the id and a random part, so that
	// two replicas given the same id never both hold the key.
	token string

	// Owned by the loop goroutine (Run), which is the only one to touch
	// them.
	st          *state
	started     time.Time
	offline     bool // NATS was away at the last tick
	leader      bool
	live        bool // leader, warm, and announcing
	baseline    map[string]roomRecord
	baseEdges   []string // the edges the previous leader knew
	hasBaseline bool
	svc         micro.Service       // this replica on the NATS services framework; with who while live
	dirty       map[string]struct{} // rooms whose announced users are not written yet
	dirtyBase   bool                // the baseline marker is not written yet
	edgesGen    uint64              // state.edgesGen last written
	dirtyEdges  bool                // the edge list must be written again
	held        []event             // announcements waiting for their rooms to be written
	persisting  bool                // a batch is with the writer
	sessionSub  *nats.Subscription
	beatSub     *nats.Subscription
	replySub    *nats.Subscription

	// figures are what the stats answer shows (Stats); the loop sets
	// them, a stats request reads them on its own goroutine.
	figures struct {
		role                       atomic.Value // string: RoleStandby, RoleWarming or RoleActive
		edges, rooms, sessionRooms atomic.Int64
	}
}

// The roles a replica shows in its stats answer.
const (
	RoleStandby = "standby" // another replica leads
	RoleWarming = "warming" // leading, waiting for its view to be complete
	RoleActive  = "active"  // announcing presence and answering who
)

// Stats are a presence replica's own figures in its stats answer.
type Stats struct {
	Replica      string `json:"replica"`
	Role         string `json:"role"`
	Edges        int64  `json:"edges"`
	Rooms        int64  `json:"rooms"`
	SessionRooms int64  `json:"session_rooms"`
}

// roomRecord is what the key-value bucket holds per room: the users
// announced as present, or Over when the room has more than MaxMembers
// (and so no per-user announcements).
type roomRecord struct {
	Users []string `json:"users,omitempty"`
	Over  bool     `json:"over,omitempty"`
}

// New returns a presence replica on nc; its metrics go to reg.
func New(cfg Config, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer) (*Presence, error) {
	if cfg.MaxMembers <= 0 {
		return nil, errors.New("presence: the member limit must be positive")
	}
	if err := store.CheckReplicas(cfg.Replicas); err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	if cfg.EdgeTimeout <= 0 {
		cfg.EdgeTimeout = DefaultEdgeTimeout
	}
	if cfg.Warmup <= 0 {
		cfg.Warmup = DefaultWarmup
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	id := cfg.ID
	if id == "" {
		id = "presence-" + randomID()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("presence: %w", err)
	}
	p := &Presence{
		cfg:       cfg,
		id:        id,
		token:     id + " " + randomID(),
		nc:        nc,
		log:       log.With("replica", id),
		metrics:   m,
		inbox:     nc.NewInbox(), // under the connection's inbox prefix: its permissions allow it
		msgs:      make(chan *nats.Msg, msgBuffer),
		roles:     make(chan role),
		batches:   make(chan batch, 1),
		persisted: make(chan persistResult),
		liveOnce:  make(chan struct{}),
		st:        newState(),
		dirty:     make(map[string]struct{}),
	}
	p.figures.role.Store(RoleStandby)
	return p, nil
}

// Live is closed once this replica first announces presence and answers
// who.
func (p *Presence) Live() <-chan struct{} { return p.liveOnce }

// Ready reports whether presence is connected to NATS.
func (p *Presence) Ready() bool { return p.nc.IsConnected() }

// Run tracks presence until ctx ends. It returns after every goroutine it
// started has ended; as the active replica it first writes what it
// announced and hands the lead over. NATS servers that can never hold the
// bucket's replicas make it return a *store.ReplicasError at once.
func (p *Presence) Run(ctx context.Context) error {
	var err error
	if p.sessionSub, err = p.nc.ChanSubscribe(subject.PresenceSessionAll, p.msgs); err != nil {
		return fmt.Errorf("presence: subscribe %s: %w", subject.PresenceSessionAll, err)
	}
	defer func() { _ = p.sessionSub.Unsubscribe() }()
	if p.beatSub, err = p.nc.ChanSubscribe(subject.EdgeHeartbeatAll, p.msgs); err != nil {
		return fmt.Errorf("presence: subscribe %s: %w", subject.EdgeHeartbeatAll, err)
	}
	defer func() { _ = p.beatSub.Unsubscribe() }()
	if p.replySub, err = p.nc.ChanSubscribe(p.inbox+".>", p.msgs); err != nil {
		return fmt.Errorf("presence: subscribe %s: %w", p.inbox, err)
	}
	defer func() { _ = p.replySub.Unsubscribe() }()

	js, err := jetstream.New(p.nc)
	if err != nil {
		return fmt.Errorf("presence: jetstream: %w", err)
	}
	kv := &bucket{js: js, nc: p.nc, replicas: p.cfg.Replicas}
	lctx, stopLoop := context.WithCancel(ctx)
	defer stopLoop()
	ectx, stopElector := context.WithCancel(context.Background())
	wctx, stopWriter := context.WithCancel(context.Background())
	var elector, writer sync.WaitGroup
	var refused error // set by the elector before it stops the loop
	elector.Go(func() {
		if refused = p.elect(ectx, kv); refused != nil {
			stopLoop()
		}
	})
	writer.Go(func() { p.write(wctx, kv) })

	p.log.Info("presence running", "max_members", p.cfg.MaxMembers, "replicas", p.cfg.Replicas)
	if err := p.register(false); err != nil {
		p.log.Error("not on the NATS services framework", "err", err)
	}
	p.loop(lctx)
	p.takeLast(ctx)
	p.unregister()
	if p.leader {
		p.lastWrite(ctx)
	}
	// The writer ends before the lead is given up: nothing is announced
	// once a standby may take over.
	stopWriter()
	writer.Wait()
	stopElector()
	elector.Wait()
	return refused
}

// takeLast applies, once the loop has ended, the reports and heartbeats
// that reached the replica before it stopped: the single binary stops
// its edge first, whose last reports (its sessions leaving) would
// otherwise be lost with the loop, unannounced. The flush's round trip
// makes sure that what the server sent before it is in the channel (its
// pong comes after them); only then do the subscriptions end, since the
// client drops what arrives for a subscription it has ended. It waits at
// most what the stop leaves (ops.Budget).
func (p *Presence) takeLast(ctx context.Context) {
	if p.nc.IsConnected() {
		_ = p.nc.FlushTimeout(max(ops.Budget(ctx, stopWait), time.Millisecond))
	}
	_ = p.sessionSub.Unsubscribe()
	_ = p.beatSub.Unsubscribe()
	now := time.Now()
	for {
		select {
		case m := <-p.msgs:
			p.handle(m, now)
		default:
			return
		}
	}
}

// leading reports whether this replica may still act as the leader.
func (p *Presence) leading() bool { return time.Now().UnixNano() < p.leaseUntil.Load() }

// loop is the one goroutine that owns the state.
func (p *Presence) loop(ctx context.Context) {
	p.started = time.Now()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.msgs:
			p.handle(m, time.Now())
		case r := <-p.roles:
			p.setRole(r, time.Now())
		case res := <-p.persisted:
			p.written(res)
		case now := <-t.C:
			p.tick(now)
		}
		p.flush()
	}
}

func (p *Presence) handle(m *nats.Msg, now time.Time) {
	switch m.Sub {
	case p.sessionSub:
		p.report(m, now)
	case p.beatSub:
		p.heartbeat(m, now)
	case p.replySub:
		p.syncReply(m, now)
	default:
		// A who request (whoRequest), from the current endpoint or one
		// given up while its requests were queued: the view answers
		// either way.
		p.who(m)
	}
}

// report applies an edge's session report.
func (p *Presence) report(m *nats.Msg, now time.Time) {
	room, ok := subject.RoomOfPresence(m.Subject)
	var r proto.SessionReport
	if !ok || json.Unmarshal(m.Data, &r) != nil || r.Room != room || !names.ValidRoom(room) ||
		!names.ValidUser(r.User) || !names.ValidUser(r.Edge) || !validSession(r.Session) ||
		(r.Event != proto.EventJoin && r.Event != proto.EventLeave) {
		p.metrics.bad.Inc()
		p.log.Warn("ignoring a malformed session report", "subject", m.Subject)
		return
	}
	e := p.st.edge(r.Edge, now)
	if s := e.sync; s != nil && s.buffering {
		// Applied now, so who sees it; kept, to be applied to the
		// snapshot too.
		if len(s.buffer) < maxBuffered {
			s.buffer = append(s.buffer, r)
		} else {
			p.abortSync(e, "too many reports during the sync")
		}
	}
	p.apply(e, r)
}

func (p *Presence) apply(e *edgeState, r proto.SessionReport) {
	if r.Event == proto.EventJoin {
		p.announce(p.st.add(e, r.Session, r.User, r.Room, nil))
	} else {
		p.announce(p.st.remove(e, r.Session, r.Room, nil))
	}
}

func validSession(s string) bool { return s != "" && len(s) <= 128 }

// heartbeat notes that an edge is alive and asks for its state when its
// digest differs from presence's view of it.
func (p *Presence) heartbeat(m *nats.Msg, now time.Time) {
	id, ok := subject.EdgeOfHeartbeat(m.Subject)
	var hb proto.Heartbeat
	if !ok || !names.ValidUser(id) || json.Unmarshal(m.Data, &hb) != nil || (hb.Edge != "" && hb.Edge != id) {
		p.metrics.bad.Inc()
		p.log.Warn("ignoring a malformed heartbeat", "subject", m.Subject)
		return
	}
	e := p.st.edge(id, now)
	e.lastSeen = now
	switch {
	case e.sync != nil:
	case hb.Digest == e.digest.String():
		e.confirmed = true
	default:
		p.startSync(e, now)
	}
}

// register puts this replica on the NATS services framework again, as a
// standby or, live, with who as its endpoint: the framework cannot take
// one endpoint away, so a change of role is a new instance. The role is
// in its metadata too, since a standby has no endpoint to carry stats.
// Owned by the loop.
func (p *Presence) register(live bool) error {
	p.unregister()
	role := RoleStandby
	if live {
		role = RoleActive
	}
	svc, err := ops.AddService(p.nc, ops.Service{
		Name:        subject.ServicePresence,
		Description: "natter presence: joins, leaves and who per room",
		Metadata:    map[string]string{"replica": p.id, "role": role},
		Stats:       p.stats,
	})
	if err != nil {
		return err
	}
	if live {
		err := svc.AddEndpoint("who", micro.HandlerFunc(p.whoRequest),
			micro.WithEndpointSubject(subject.PresenceWhoAll), micro.WithEndpointQueueGroup(subject.PresenceQueue))
		if err != nil {
			_ = svc.Stop()
			return fmt.Errorf("presence: subscribe %s: %w", subject.PresenceWhoAll, err)
		}
	}
	p.svc = svc
	return nil
}

// unregister takes this replica off the NATS services framework. Owned
// by the loop, and by Run once the loop has ended.
func (p *Presence) unregister() {
	if p.svc != nil {
		_ = p.svc.Stop()
		p.svc = nil
	}
}

func (p *Presence) stats() any {
	return Stats{Replica: p.id, Role: p.figures.role.Load().(string), Edges: p.figures.edges.Load(),
		Rooms: p.figures.rooms.Load(), SessionRooms: p.figures.sessionRooms.Load()}
}

// whoRequest hands a who request to the loop, in the one channel that
// keeps NATS's order, so that a who sent after a join report counts it.
// When the channel is full the request is dropped, as NATS drops what a
// full channel subscription cannot take: waiting here would take the
// free slots from the reports and heartbeats, which NATS then drops. The
// asker times out and asks again.
func (p *Presence) whoRequest(req micro.Request) {
	select {
	case p.msgs <- &nats.Msg{Subject: req.Subject(), Reply: req.Reply()}:
	default:
	}
}

// who answers a who request; only the live replica has the endpoint.
func (p *Presence) who(m *nats.Msg) {
	p.metrics.who.Inc()
	users := []string{}
	if room, ok := subject.RoomOfPresence(m.Subject); ok && names.ValidRoom(room) {
		users = p.st.users(room)
	}
	if subject.IsReply(m.Reply) { // never answered on a subject that is no inbox
		_ = p.nc.Publish(m.Reply, proto.Encode(proto.WhoReply{Users: users}))
	}
}

// announce queues the events of changes when this replica is live, and
// marks their rooms for writing while it leads. The events go out once
// their rooms are written (write.go): a leader killed at any moment has
// written everything it announced, so its successor repeats nothing.
func (p *Presence) announce(changes []change) {
	if !p.leader || len(changes) == 0 {
		return
	}
	for _, c := range changes {
		p.dirty[c.room] = struct{}{}
	}
	if !p.live {
		return
	}
	ts := time.Now().UnixMilli()
	for _, c := range changes {
		// The room is counted after the whole change (one report, or an
		// edge's sessions at once).
		if len(p.st.rooms[c.room]) > p.cfg.MaxMembers {
			p.metrics.suppressed.Inc()
			continue
		}
		p.hold(c, ts)
	}
}

// event is an encoded presence event waiting to be published.
type event struct {
	room    string
	subject string
	data    []byte
}

func (p *Presence) hold(c change, ts int64) {
	ev := proto.EventLeave
	if c.join {
		ev = proto.EventJoin
	}
	p.held = append(p.held, event{
		room:    c.room,
		subject: subject.RoomPresence(c.room),
		data:    proto.Encode(proto.Presence{Type: proto.TypePresence, Room: c.room, Event: ev, User: c.user, TS: ts}),
	})
	if len(p.held) >= maxHeldEvents {
		// The writer is far behind (the bucket is slow or away): announce
		// what waits now, in order, rather than hold it without bound. Its
		// rooms stay dirty and are written when the writer catches up; a
		// leader killed before that may repeat these.
		p.log.Warn("announcing before writing: the presence bucket is far behind", "events", len(p.held))
		for _, e := range p.held {
			if err := p.nc.Publish(e.subject, e.data); err != nil {
				p.log.Warn("presence event not sent", "subject", e.subject, "err", err)
				continue
			}
			p.metrics.events.Inc()
		}
		p.held = nil
	}
}

// tick expires vanished edges, times out syncs, goes live when it can and
// writes what was announced.
func (p *Presence) tick(now time.Time) {
	if !p.nc.IsConnected() {
		// Heartbeats cannot reach us: silence now says nothing about the
		// edges.
		p.offline = true
		return
	}
	if p.offline {
		p.offline = false
		for _, e := range p.st.edges {
			e.lastSeen = now
		}
	}
	var out []change
	for _, id := range slices.Sorted(maps.Keys(p.st.edges)) {
		e := p.st.edges[id]
		switch {
		case now.Sub(e.lastSeen) > p.cfg.EdgeTimeout:
			if len(e.sessions) > 0 {
				p.metrics.expired.Inc()
				p.log.Info("edge vanished: its sessions leave", "edge", id, "sessions", len(e.sessions), "silent", now.Sub(e.lastSeen).Round(time.Millisecond))
			}
			e.sync = nil
			out = p.st.drop(e, out)
		case e.sync != nil && now.Sub(e.sync.started) > syncTimeout:
			p.abortSync(e, "timed out")
		}
	}
	p.announce(out)
	p.tryGoLive(now)
	p.metrics.edges.Set(float64(len(p.st.edges)))
	p.metrics.pairs.Set(float64(p.st.pairs))
	p.metrics.rooms.Set(float64(len(p.st.rooms)))
	p.figures.edges.Store(int64(len(p.st.edges)))
	p.figures.sessionRooms.Store(int64(p.st.pairs))
	p.figures.rooms.Store(int64(len(p.st.rooms)))
}

// setRole follows the elector.
func (p *Presence) setRole(r role, now time.Time) {
	switch {
	case r.leader && !p.leader:
		p.leader = true
		p.figures.role.Store(RoleWarming)
		p.baseline, p.baseEdges, p.hasBaseline = r.baseline, r.edges, r.hasBaseline
		p.log.Info("leading: this replica will announce presence once its view is complete")
		p.tryGoLive(now)
	case !r.leader && p.leader:
		p.log.Warn("no longer leading: another replica announces presence")
		p.leader, p.live = false, false
		p.metrics.active.Set(0)
		p.figures.role.Store(RoleStandby)
		if err := p.register(false); err != nil {
			p.log.Error("not on the NATS services framework", "err", err)
		}
		clear(p.dirty)
		p.dirtyBase = false
		// The next leader announces these itself: they are not written.
		p.held = nil
	}
}

// warm reports whether the view is complete enough to announce from.
// With a record of the previous leader, every edge it knew must have
// confirmed its state (a heartbeat that agrees, or a sync): an edge that
// started since is news to both, and its users' joins are real. Without
// one, every edge alive must have had a heartbeat interval to be heard.
// No edge whose sync drags on is waited for beyond maxWarmup.
func (p *Presence) warm(now time.Time) bool {
	if p.cfg.Fresh {
		return true
	}
	since := now.Sub(p.started)
	if since >= maxWarmup {
		return true
	}
	if !p.hasBaseline && since < p.cfg.Warmup {
		return false
	}
	for _, id := range p.baseEdges {
		if e := p.st.edges[id]; e == nil || !e.confirmed {
			return false
		}
	}
	for _, e := range p.st.edges {
		if e.sync != nil {
			return false
		}
	}
	return true
}

// tryGoLive makes the leader live once it is warm: it announces the net
// change between what the previous leader announced (the baseline) and
// its own view, then answers who and announces every change.
func (p *Presence) tryGoLive(now time.Time) {
	if !p.leader || p.live || !p.warm(now) {
		return
	}
	if err := p.register(true); err != nil {
		p.log.Error("subscribe to who; trying again", "subject", subject.PresenceWhoAll, "err", err)
		return
	}
	rooms := maps.Clone(p.st.rooms)
	ts := now.UnixMilli()
	announced := 0
	for room := range p.baseline {
		if _, ok := rooms[room]; !ok {
			rooms[room] = nil
		}
	}
	for _, room := range slices.Sorted(maps.Keys(rooms)) {
		p.dirty[room] = struct{}{}
		if !p.hasBaseline {
			continue // nothing to compare with: adopt the view silently
		}
		old := p.baseline[room]
		users := p.st.users(room)
		if old.Over || len(users) > p.cfg.MaxMembers {
			continue
		}
		for _, u := range old.Users {
			if _, ok := slices.BinarySearch(users, u); !ok {
				p.hold(change{room: room, user: u}, ts)
				announced++
			}
		}
		for _, u := range users {
			if !slices.Contains(old.Users, u) {
				p.hold(change{room: room, user: u, join: true}, ts)
				announced++
			}
		}
	}
	p.baseline, p.baseEdges = nil, nil
	p.dirtyBase, p.dirtyEdges = true, true
	p.live = true
	p.metrics.active.Set(1)
	p.figures.role.Store(RoleActive)
	select {
	case <-p.liveOnce:
	default:
		close(p.liveOnce)
	}
	p.log.Info("live: announcing presence and answering who", "edges", len(p.st.edges),
		"rooms", len(p.st.rooms), "baseline", p.hasBaseline, "net_changes_announced", announced)
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
