package presence

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// run starts a replica that is live at once (Fresh) and stops with the
// test.
func run(t *testing.T, ns *server.Server) *Presence {
	t.Helper()
	return runWith(t, ns, Config{MaxMembers: 500, Replicas: 1, Fresh: true})
}

func runWith(t testing.TB, ns *server.Server, cfg Config) *Presence {
	t.Helper()
	return runOn(t, natstest.Connect(t, ns), cfg)
}

// runOn starts a replica on nc that stops with the test.
func runOn(t testing.TB, nc *nats.Conn, cfg Config) *Presence {
	t.Helper()
	p, err := New(cfg, nc,
		slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return p
}

// fakeEdge speaks the edge side of the presence subjects (docs/protocol.md) by hand: it holds
// a set of sessions, sends heartbeats on demand and answers syncs from a
// snapshot, and can publish a report between two pages of a sync.
type fakeEdge struct {
	t  *testing.T
	nc *nats.Conn
	id string

	mu       sync.Mutex
	sessions map[string]*proto.SyncSession // guarded by mu
	digest   proto.Digest                  // guarded by mu
	pages    [][]byte                      // guarded by mu: the snapshot
	// betweenPages, when set, runs once after page 0 is answered.
	betweenPages func()
	served       int // guarded by mu: pages answered
}

func newFakeEdge(t *testing.T, ns *server.Server, id string) *fakeEdge {
	t.Helper()
	e := &fakeEdge{t: t, nc: natstest.Connect(t, ns), id: id, sessions: make(map[string]*proto.SyncSession)}
	_, err := e.nc.Subscribe(subject.EdgeSync(id), func(m *nats.Msg) {
		var req proto.SyncRequest
		_ = json.Unmarshal(m.Data, &req)
		e.mu.Lock()
		if req.Page == 0 {
			var list []proto.SyncSession
			for _, sid := range slices.Sorted(maps.Keys(e.sessions)) {
				list = append(list, *e.sessions[sid])
			}
			e.pages = proto.SyncPages(id, "snap", list)
		}
		page := e.pages[req.Page]
		e.served++
		hook := e.betweenPages
		if req.Page == 0 {
			e.betweenPages = nil
		}
		e.mu.Unlock()
		_ = m.Respond(page)
		if req.Page == 0 && hook != nil {
			hook()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// add puts a session in a room without reporting it.
func (e *fakeEdge) add(sid, user, room string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.sessions[sid]
	if s == nil {
		s = &proto.SyncSession{Session: sid, User: user}
		e.sessions[sid] = s
	}
	s.Rooms = append(s.Rooms, room)
	e.digest.Toggle(sid, room)
}

// join adds a session and reports it.
func (e *fakeEdge) join(sid, user, room string) {
	e.add(sid, user, room)
	e.publish(subject.PresenceSession(room), proto.SessionReport{Event: proto.EventJoin, Room: room, User: user, Edge: e.id, Session: sid})
}

func (e *fakeEdge) heartbeat() {
	e.mu.Lock()
	hb := proto.Heartbeat{Edge: e.id, Sessions: len(e.sessions), Digest: e.digest.String()}
	e.mu.Unlock()
	e.publish(subject.EdgeHeartbeat(e.id), hb)
}

func (e *fakeEdge) publish(subj string, v any) {
	if err := e.nc.Publish(subj, proto.Encode(v)); err != nil {
		e.t.Error(err)
	}
}

func whoOf(nc *nats.Conn, room string) ([]string, error) {
	msg, err := nc.Request(subject.PresenceWho(room), nil, 5*time.Second)
	if err != nil {
		return nil, err
	}
	var r proto.WhoReply
	err = json.Unmarshal(msg.Data, &r)
	return r.Users, err
}

// awaitUsers waits until who answers n users for room; until the replica
// leads, nobody answers.
func awaitUsers(t *testing.T, nc *nats.Conn, room string, n int) []string {
	t.Helper()
	var users []string
	var err error
	if !servicetest.Poll(10*time.Second, func() bool { users, err = whoOf(nc, room); return err == nil && len(users) == n }) {
		t.Fatalf("who %s has %d users (%v), want %d", room, len(users), err, n)
	}
	return users
}

// A heartbeat whose digest differs starts a sync over many pages; a
// report published after page 0 is applied on top of the snapshot, and
// the next heartbeat agrees, so no second sync follows. Not parallel: a
// sync of 63,000 sessions keeps a core busy, and beside another test it
// missed its 10 s wait.
func TestSyncManyPagesWithAReportBetween(t *testing.T) {
	ns := natstest.Start(t)
	p := run(t, ns)
	nc := natstest.Connect(t, ns)
	awaitUsers(t, nc, "lobby", 0)

	e := newFakeEdge(t, ns, "edge-1")
	const users = 3000
	for i := range users {
		for r := range 20 {
			e.add(fmt.Sprintf("session-%05d", i), fmt.Sprintf("user-%05d", i), fmt.Sprintf("room-with-a-long-name-%02d", r))
		}
		e.add(fmt.Sprintf("session-%05d", i), fmt.Sprintf("user-%05d", i), "lobby")
	}
	e.betweenPages = func() { e.join("late", "zed", "lobby") }
	e.heartbeat()

	got := awaitUsers(t, nc, "lobby", users+1)
	if got[users] != "zed" {
		t.Fatalf("last user %q, want zed (the report between pages)", got[users])
	}
	e.mu.Lock()
	pages, served := len(e.pages), e.served
	e.mu.Unlock()
	if pages < 3 || served != pages {
		t.Fatalf("%d pages, %d answered; want several, all answered", pages, served)
	}
	if n := testutil.ToFloat64(p.metrics.syncs.WithLabelValues("done")); n != 1 {
		t.Fatalf("%v syncs done, want 1", n)
	}
	e.heartbeat()
	e.join("later", "amy", "lobby") // a plain report after it
	awaitUsers(t, nc, "lobby", users+2)
	e.mu.Lock()
	served = e.served
	e.mu.Unlock()
	if served != pages {
		t.Fatalf("a matching heartbeat started another sync (%d pages served)", served)
	}
}

// Malformed reports and heartbeats are counted and change nothing.
func TestMalformedInputIsIgnored(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	p := run(t, ns)
	nc := natstest.Connect(t, ns)
	awaitUsers(t, nc, "lobby", 0)
	bad := []struct{ subj, data string }{
		{subject.PresenceSession("lobby"), `not json`},
		{subject.PresenceSession("lobby"), `{"event":"join","room":"other","user":"a","edge":"e","session":"s"}`},
		{subject.PresenceSession("lobby"), `{"event":"sit","room":"lobby","user":"a","edge":"e","session":"s"}`},
		{subject.PresenceSession("lobby"), `{"event":"join","room":"lobby","user":"a b","edge":"e","session":"s"}`},
		{subject.PresenceSession("lobby"), `{"event":"join","room":"lobby","user":"a","edge":"e","session":""}`},
		{subject.PresenceSession("Lobby"), `{"event":"join","room":"Lobby","user":"a","edge":"e","session":"s"}`},
		{subject.EdgeHeartbeat("e"), `[]`},
		{subject.EdgeHeartbeat("e"), `{"edge":"other","sessions":0,"digest":""}`},
	}
	for _, b := range bad {
		if err := nc.Publish(b.subj, []byte(b.data)); err != nil {
			t.Fatal(err)
		}
	}
	servicetest.WaitFor(t, 10*time.Second, fmt.Sprintf("the %d malformed messages counted", len(bad)), func() bool {
		return testutil.ToFloat64(p.metrics.bad) >= float64(len(bad))
	})
	if users, err := whoOf(nc, "lobby"); err != nil || len(users) != 0 {
		t.Fatalf("who lobby = %q, %v after malformed input", users, err)
	}
}

// watch returns the presence events published, as "room event user".
func watch(t *testing.T, ns *server.Server) <-chan string {
	t.Helper()
	out := make(chan string, 1000)
	nc := natstest.Connect(t, ns)
	_, err := nc.Subscribe(subject.RoomPresence("*"), func(m *nats.Msg) {
		var ev proto.Presence
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Errorf("presence event %q: %v", m.Data, err)
		}
		out <- ev.Room + " " + ev.Event + " " + ev.User
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return out
}

func expectEvent(t *testing.T, events <-chan string, want string) {
	t.Helper()
	select {
	case got := <-events:
		if got != want {
			t.Fatalf("presence event %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no presence event, want %q", want)
	}
}

// An edge that goes silent has its users leave; when it comes back, its
// heartbeat disagrees with the (empty) view, a sync restores its
// sessions, and they join again.
func TestExpiredEdgeComesBack(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	runWith(t, ns, Config{MaxMembers: 500, Replicas: 1, Fresh: true, EdgeTimeout: time.Second})
	events := watch(t, ns)
	nc := natstest.Connect(t, ns)
	awaitUsers(t, nc, "lobby", 0)

	e := newFakeEdge(t, ns, "edge-1")
	e.join("s1", "alice", "lobby")
	e.heartbeat()
	expectEvent(t, events, "lobby join alice")
	expectEvent(t, events, "lobby leave alice") // no heartbeat for a second
	awaitUsers(t, nc, "lobby", 0)
	e.heartbeat()
	expectEvent(t, events, "lobby join alice")
	awaitUsers(t, nc, "lobby", 1)
}

// A leader that loses its bucket (JetStream gone) stops announcing and
// answering within the lease, so a standby may take over, and still
// stops cleanly. Not parallel: it times the step down to within two
// seconds.
func TestLeaderWithoutBucketStepsDown(t *testing.T) {
	ns := natstest.Start(t)
	p := run(t, ns)
	nc := natstest.Connect(t, ns)
	awaitUsers(t, nc, "lobby", 0)
	ns.DisableJetStream()
	lost := time.Now()
	servicetest.WaitFor(t, p.cfg.Lease+2*time.Second, "who unanswered after losing the bucket", func() bool {
		_, err := whoOf(nc, "lobby")
		return err != nil
	})
	t.Logf("stepped down %v after losing the bucket", time.Since(lost).Round(time.Millisecond))
	if testutil.ToFloat64(p.metrics.active) != 0 {
		t.Fatal("still marked active")
	}
}

// The writer announces only within the lease: a replica whose lease has
// run out (a standby may hold the key by now) writes and publishes
// nothing.
func TestWriterAnnouncesOnlyWithinTheLease(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	p, err := New(Config{MaxMembers: 500, Replicas: 1}, nc, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	b := &bucket{js: js, nc: nc, replicas: 1}
	events := watch(t, ns)
	bt := func(user string) batch {
		return batch{writes: []write{{key: subject.PresenceRoomKey("lobby"), value: []byte(`{"users":["` + user + `"]}`),
			events: []event{{room: "lobby", subject: subject.RoomPresence("lobby"),
				data: proto.Encode(proto.Presence{Type: proto.TypePresence, Room: "lobby", Event: proto.EventJoin, User: user})}}}}}
	}
	p.leaseUntil.Store(time.Now().Add(-time.Millisecond).UnixNano())
	if res := p.store(context.Background(), b, bt("late")); len(res.failed) != 0 {
		t.Fatalf("result %+v", res)
	}
	p.extendLease(time.Now())
	if res := p.store(context.Background(), b, bt("alice")); len(res.failed) != 0 {
		t.Fatalf("result %+v", res)
	}
	expectEvent(t, events, "lobby join alice") // and not "late" before it
	kv, err := b.get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), subject.PresenceRoomKey("lobby"))
	if err != nil || string(e.Value()) != `{"users":["alice"]}` || e.Revision() != 1 {
		t.Fatalf("record %v, %v; want alice's, written once", e, err)
	}
}

// Announcements wait for their rooms to be written, but not without
// bound: with the writer stuck, they go out in order once too many
// wait. Not parallel: its 65,536 announcements keep a core busy for
// seconds.
func TestHeldAnnouncementsAreBounded(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	p, err := New(Config{MaxMembers: 500, Replicas: 1}, nc, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := natstest.Connect(t, ns).SubscribeSync(subject.RoomPresence("lobby"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		t.Fatal(err)
	}
	p.leader, p.live, p.persisting = true, true, true // the writer is busy for good
	for i := range maxHeldEvents {
		p.announce([]change{{room: "lobby", user: fmt.Sprintf("u%d", i), join: true}})
	}
	if len(p.held) != 0 {
		t.Fatalf("%d announcements still held", len(p.held))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for i := range maxHeldEvents {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("announcement %d: %v", i, err)
		}
		var ev proto.Presence
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.User != fmt.Sprintf("u%d", i) {
			t.Fatalf("announcement %d: %s", i, m.Data)
		}
	}
}
