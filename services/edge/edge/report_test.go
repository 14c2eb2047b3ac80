package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// startReporter runs r until the test ends (or the returned stop). It
// returns once the first heartbeat is out, so the sync endpoint, made
// before it, is in place; beats receives the heartbeats from the first.
func startReporter(t *testing.T, r *reporter) (beats *nats.Subscription, stop func()) {
	t.Helper()
	beats, err := r.nc.SubscribeSync(subject.EdgeHeartbeat(r.edge))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := ops.AddService(r.nc, ops.Service{Name: subject.ServiceEdge})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.serveSync(svc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go r.run(ctx)
	stop = func() {
		_ = svc.Stop()
		cancel()
		<-r.done
	}
	t.Cleanup(stop)
	for {
		if n, _, _ := beats.Pending(); n > 0 {
			return beats, stop
		}
		if err := r.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.done:
			t.Fatal("reporter ended")
		case <-time.After(time.Millisecond):
		}
	}
}

func newTestReporter(nc *nats.Conn, open int) *reporter {
	return newReporter(nc, slog.New(slog.NewTextHandler(io.Discard, nil)), "edge-1",
		func() int { return open }, prometheus.NewCounter(prometheus.CounterOpts{Name: "x"}))
}

func syncPage(t *testing.T, nc *nats.Conn, req string) proto.SyncPage {
	t.Helper()
	msg, err := nc.Request(subject.EdgeSync("edge-1"), []byte(req), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Data) >= 512<<10 {
		t.Fatalf("page of %d bytes, want under 512 KiB", len(msg.Data))
	}
	var p proto.SyncPage
	if err := json.Unmarshal(msg.Data, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

// At 15,000 sessions of 100 rooms each, the heartbeat stays small, and a
// sync gives the whole state in pages under 512 KiB whose digest is the
// heartbeat's. Under the race detector, which makes this ten times
// slower (30 s), a tenth of the sessions: still many pages.
func TestReporterAtScale(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	sessions, rooms := 15000, 100
	if raceEnabled {
		sessions = 1500
	}
	r := newTestReporter(nc, sessions)
	for i := range sessions {
		sid := fmt.Sprintf("%016x", i)
		s := &reportedSession{user: fmt.Sprintf("user-%05d", i), rooms: make(map[string]struct{}, rooms)}
		for j := range rooms {
			room := fmt.Sprintf("room-%04d", (i+j)%2000)
			s.rooms[room] = struct{}{}
			r.digest.Toggle(sid, room)
		}
		r.sessions[sid] = s
	}
	beats, _ := startReporter(t, r)
	m, err := beats.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("heartbeat at %d sessions of %d rooms: %d bytes: %s", sessions, rooms, len(m.Data), m.Data)
	if len(m.Data) > 128 {
		t.Fatalf("heartbeat of %d bytes", len(m.Data))
	}
	var hb proto.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil || hb.Edge != "edge-1" || hb.Sessions != sessions {
		t.Fatalf("heartbeat %s: %v", m.Data, err)
	}

	first := syncPage(t, nc, "")
	if first.Pages < 2 || first.Snapshot == "" {
		t.Fatalf("page 0: %d pages, snapshot %q", first.Pages, first.Snapshot)
	}
	var d proto.Digest
	pairs := 0
	add := func(p proto.SyncPage) {
		for _, s := range p.Sessions {
			for _, room := range s.Rooms {
				d.Toggle(s.Session, room)
				pairs++
			}
		}
	}
	add(first)
	for i := 1; i < first.Pages; i++ {
		p := syncPage(t, nc, fmt.Sprintf(`{"page":%d,"snapshot":%q}`, i, first.Snapshot))
		if p.Page != i || p.Pages != first.Pages || p.Error != "" {
			t.Fatalf("page %d: %+v", i, p.Error)
		}
		add(p)
	}
	t.Logf("sync: %d pages", first.Pages)
	if pairs != sessions*rooms || d.String() != hb.Digest {
		t.Fatalf("sync holds %d pairs, digest %s; heartbeat says %s", pairs, d, hb.Digest)
	}
}

// Sync requests the reporter cannot answer get an error page, never
// silence.
func TestReporterSyncErrors(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	r := newTestReporter(nc, 0)
	startReporter(t, r)
	for _, req := range []string{`{"page":-1}`, `{"page":"x"}`, `{"page":1,"snapshot":"gone"}`, `{"page":5}`} {
		if p := syncPage(t, nc, req); p.Error == "" || p.Edge != "edge-1" {
			t.Errorf("%s: %+v, want an error", req, p)
		}
	}
	if p := syncPage(t, nc, `{"page":0}`); p.Error != "" || p.Pages != 1 || len(p.Sessions) != 0 {
		t.Fatalf("empty edge: %+v", p)
	}
}

// When the edge stops, the reporter reports what is left as leaving and
// then sends an empty heartbeat, so presence need not wait for the expiry.
func TestReporterStopLeavesEverything(t *testing.T) {
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	// One subscription sees reports and heartbeats in publishing order.
	all, err := nc.SubscribeSync(subject.All)
	if err != nil {
		t.Fatal(err)
	}
	r := newTestReporter(nc, 0)
	_, stop := startReporter(t, r)
	r.join("s1", "alice", "lobby")
	r.join("s1", "alice", "dev")
	r.join("s2", "bob", "lobby")
	r.leave("s2", "bob", "lobby")
	stop()
	var got []string
	for {
		m, err := all.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject == subject.EdgeHeartbeat("edge-1") {
			var hb proto.Heartbeat
			if err := json.Unmarshal(m.Data, &hb); err != nil {
				t.Fatal(err)
			}
			got = append(got, fmt.Sprintf("heartbeat %d %s", hb.Sessions, hb.Digest))
		} else {
			var rep proto.SessionReport
			if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Edge != "edge-1" || m.Subject != subject.PresenceSession(rep.Room) {
				t.Fatalf("report %s on %s", m.Data, m.Subject)
			}
			got = append(got, rep.Event+" "+rep.Session+" "+rep.User+" "+rep.Room)
		}
		if n, _, _ := all.Pending(); n == 0 && len(got) >= 8 {
			break
		}
	}
	empty := "heartbeat 0 " + (proto.Digest{}).String()
	want := []string{empty, // at start
		"join s1 alice lobby", "join s1 alice dev", "join s2 bob lobby", "leave s2 bob lobby",
		"leave s1 alice dev", "leave s1 alice lobby", // at stop
		empty}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("published:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
