package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// Presence reporting (docs/protocol.md).
const (
	// heartbeatInterval is how often an edge tells presence it is alive;
	// presence expires an edge after three missed heartbeats.
	heartbeatInterval = 5 * time.Second
	// reportQueue bounds the session changes waiting for the reporter; a
	// client that finds it full waits.
	reportQueue = 1024
	// syncQueue bounds the sync requests waiting for the reporter; more are
	// dropped, and presence asks again.
	syncQueue = 256
	// Snapshots of the state are kept for the later pages of a sync: at
	// most maxSnapshots of them, for snapshotTTL.
	maxSnapshots = 4
	snapshotTTL  = time.Minute
)

// reporter tells presence which sessions of this edge are in which rooms.
// One goroutine (run) owns the state, publishes every session report, the
// heartbeats and the sync pages, so a heartbeat's digest always covers
// exactly the reports published before it, and a sync snapshot is
// consistent with them: presence, reading them in order, can tell a lost
// report from a report still in flight.
type reporter struct {
	nc       *nats.Conn
	log      *slog.Logger
	edge     string
	open     func() int // open sockets, for the heartbeat
	failures prometheus.Counter

	changes chan sessionChange
	syncs   chan *nats.Msg
	// done is closed when run has returned: nothing reads changes after.
	done chan struct{}

	// Owned by run.
	sessions  map[string]*reportedSession
	digest    proto.Digest
	snapshots []*snapshot
}

type reportedSession struct {
	user  string
	rooms map[string]struct{}
}

type sessionChange struct {
	join                bool
	session, user, room string
	// published is closed once the report is published (or dropped).
	published chan struct{}
}

type snapshot struct {
	id    string
	taken time.Time
	pages [][]byte
}

func newReporter(nc *nats.Conn, log *slog.Logger, edge string, open func() int, failures prometheus.Counter) *reporter {
	return &reporter{
		nc:       nc,
		log:      log,
		edge:     edge,
		open:     open,
		failures: failures,
		changes:  make(chan sessionChange, reportQueue),
		syncs:    make(chan *nats.Msg, syncQueue),
		done:     make(chan struct{}),
		sessions: make(map[string]*reportedSession),
	}
}

// join reports that session of user joined room. It returns once the
// report is published, so that a who sent after it counts the session.
func (r *reporter) join(session, user, room string) { r.report(true, session, user, room) }

// leave reports that session left room, and returns once it is published.
func (r *reporter) leave(session, user, room string) { r.report(false, session, user, room) }

func (r *reporter) report(join bool, session, user, room string) {
	ch := sessionChange{join: join, session: session, user: user, room: room, published: make(chan struct{})}
	select {
	case r.changes <- ch:
	case <-r.done:
		return
	}
	select {
	case <-ch.published:
	case <-r.done:
	}
}

// run publishes reports and heartbeats and answers syncs until ctx ends.
// The edge cancels ctx only once its clients are gone; run then reports
// whatever is left as leaving and sends a last, empty heartbeat, so that
// presence forgets the edge at once rather than after the expiry.
func (r *reporter) run(ctx context.Context) {
	defer close(r.done)
	tick := time.NewTicker(heartbeatInterval)
	defer tick.Stop()
	r.heartbeat()
	for {
		select {
		case ch := <-r.changes:
			r.apply(ch)
		case m := <-r.syncs:
			r.answerSync(m)
		case <-tick.C:
			r.heartbeat()
		case <-ctx.Done():
			r.finish()
			return
		}
	}
}

// finish reports every session still held as leaving and sends an empty
// heartbeat.
func (r *reporter) finish() {
	for drained := false; !drained; {
		select {
		case ch := <-r.changes:
			r.apply(ch)
		default:
			drained = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(r.sessions)) {
		s := r.sessions[id]
		for _, room := range slices.Sorted(maps.Keys(s.rooms)) {
			r.apply(sessionChange{session: id, user: s.user, room: room})
		}
	}
	r.heartbeat()
}

func (r *reporter) apply(ch sessionChange) {
	if ch.published != nil {
		defer close(ch.published)
	}
	s := r.sessions[ch.session]
	if ch.join {
		if s == nil {
			s = &reportedSession{user: ch.user, rooms: make(map[string]struct{})}
			r.sessions[ch.session] = s
		}
		if _, ok := s.rooms[ch.room]; ok {
			return
		}
		s.rooms[ch.room] = struct{}{}
	} else {
		if s == nil {
			return
		}
		if _, ok := s.rooms[ch.room]; !ok {
			return
		}
		delete(s.rooms, ch.room)
		if len(s.rooms) == 0 {
			delete(r.sessions, ch.session)
		}
	}
	r.digest.Toggle(ch.session, ch.room)
	event := proto.EventLeave
	if ch.join {
		event = proto.EventJoin
	}
	r.publish(subject.PresenceSession(ch.room), proto.Encode(proto.SessionReport{
		Event: event, Room: ch.room, User: ch.user, Edge: r.edge, Session: ch.session}))
}

func (r *reporter) heartbeat() {
	r.publish(subject.EdgeHeartbeat(r.edge), proto.Encode(proto.Heartbeat{
		Edge: r.edge, Sessions: r.open(), Digest: r.digest.String()}))
}

// publish sends a report. A report lost to a NATS outage is not retried:
// the next heartbeat's digest shows presence the difference, and presence
// asks for the full state.
func (r *reporter) publish(subj string, data []byte) {
	if err := r.nc.Publish(subj, data); err != nil {
		r.failures.Inc()
		r.log.Debug("presence report not sent", "subject", subj, "err", err)
	}
}

// serveSync adds the edge's sync endpoint to svc: presence's requests
// for the edge's full state, answered by run. No queue group: the
// subject is this edge's alone.
func (r *reporter) serveSync(svc micro.Service) error {
	return svc.AddEndpoint("sync", micro.HandlerFunc(r.syncRequest),
		micro.WithEndpointSubject(subject.EdgeSync(r.edge)), micro.WithEndpointQueueGroupDisabled())
}

// syncRequest hands a sync request from the edge's sync endpoint to run.
// When run is behind by syncQueue requests, the request is dropped and
// presence asks again.
func (r *reporter) syncRequest(req micro.Request) {
	select {
	case r.syncs <- &nats.Msg{Subject: req.Subject(), Reply: req.Reply(), Data: req.Data()}:
	default:
		r.log.Warn("presence sync request dropped: too many waiting", "waiting", syncQueue)
	}
}

// answerSync answers one page request. Page 0 without a snapshot id takes
// a new snapshot; later pages come from the snapshot the request names (or
// the newest one), so that all pages of one sync show the same moment.
func (r *reporter) answerSync(m *nats.Msg) {
	if !subject.IsReply(m.Reply) {
		return // none, or a subject that is no inbox: never answered there
	}
	var req proto.SyncRequest
	if len(bytes.TrimSpace(m.Data)) > 0 {
		if err := json.Unmarshal(m.Data, &req); err != nil || req.Page < 0 {
			r.syncError(m, req.Page, "bad sync request: want {\"page\": N} with N >= 0")
			return
		}
	}
	now := time.Now()
	r.snapshots = slices.DeleteFunc(r.snapshots, func(s *snapshot) bool { return now.Sub(s.taken) > snapshotTTL })
	var snap *snapshot
	switch {
	case req.Snapshot != "":
		i := slices.IndexFunc(r.snapshots, func(s *snapshot) bool { return s.id == req.Snapshot })
		if i < 0 {
			r.syncError(m, req.Page, "snapshot "+req.Snapshot+" has expired; start again at page 0")
			return
		}
		snap = r.snapshots[i]
	case req.Page > 0 && len(r.snapshots) > 0:
		snap = r.snapshots[len(r.snapshots)-1]
	default:
		snap = r.takeSnapshot(now)
	}
	if req.Page >= len(snap.pages) {
		r.syncError(m, req.Page, "no such page")
		return
	}
	if err := r.nc.Publish(m.Reply, snap.pages[req.Page]); err != nil {
		r.failures.Inc()
	}
}

func (r *reporter) takeSnapshot(now time.Time) *snapshot {
	sessions := make([]proto.SyncSession, 0, len(r.sessions))
	for _, id := range slices.Sorted(maps.Keys(r.sessions)) {
		s := r.sessions[id]
		sessions = append(sessions, proto.SyncSession{Session: id, User: s.user, Rooms: slices.Sorted(maps.Keys(s.rooms))})
	}
	id := randomID()
	snap := &snapshot{id: id, taken: now, pages: proto.SyncPages(r.edge, id, sessions)}
	if len(r.snapshots) >= maxSnapshots {
		r.snapshots = slices.Delete(r.snapshots, 0, 1)
	}
	r.snapshots = append(r.snapshots, snap)
	return snap
}

func (r *reporter) syncError(m *nats.Msg, page int, msg string) {
	_ = r.nc.Publish(m.Reply, proto.Encode(proto.SyncPage{Edge: r.edge, Page: page, Sessions: []proto.SyncSession{}, Error: msg}))
}
