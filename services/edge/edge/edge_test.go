package edge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// limits are the default limits (config.Defaults) with a send queue of
// queue.
func limits(queue int) config.Limits {
	lim := config.Defaults[config.Limits]()
	lim.SendQueue = queue
	return lim
}

// newTestEdge is an edge without NATS, for what does not need it.
func newTestEdge(t testing.TB, queue int) *Edge {
	t.Helper()
	e, err := New(Config{Limits: limits(queue)}, nil, fstest.MapFS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// unservedClient is a session of user on a connection that is not served
// (ws.Server.Unserved): what it queues stays queued until Take. waited,
// when not nil, runs when a reply begins to wait for room.
func unservedClient(e *Edge, user string, waited func()) *client {
	c := newClient(e, user, "")
	c.conn = e.wire.Unserved(waited)
	return c
}

func TestNewRejectsBadLimits(t *testing.T) {
	bad := limits(512)
	bad.PongTimeout = bad.PingInterval
	if _, err := New(Config{Limits: bad}, nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a pong timeout not above the ping interval was accepted")
	}
	if _, err := New(Config{Limits: limits(0)}, nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a send queue of 0 was accepted")
	}
	if _, err := New(Config{Limits: limits(1), Web: config.Web{TrustedProxies: []string{"10.0.0.0/8", "proxy"}}}, nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry()); err == nil {
		t.Fatal("a trusted proxy that is no address was accepted")
	}
	if _, err := New(Config{ID: "a.b", Limits: limits(1)}, nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry()); err == nil {
		t.Fatal("an edge id with a dot was accepted")
	}
	for name, change := range map[string]func(*Config){
		"a negative rate":                      func(c *Config) { c.Limits.MessageRate = -1 },
		"a burst of 0 with a rate":             func(c *Config) { c.Limits.MessageRate, c.Limits.MessageBurst = 10, 0 },
		"a negative burst with a rate":         func(c *Config) { c.Limits.MessageRate, c.Limits.MessageBurst = 10, -3 },
		"a negative typing interval":           func(c *Config) { c.Limits.TypingEvery = -time.Second },
		"a negative per-address limit":         func(c *Config) { c.Web.MaxConnsPerIP = -1 },
		"an auth secret shorter than the rule": func(c *Config) { c.Web.AuthSecret = "short" },
		"a negative write delay":               func(c *Config) { c.Limits.WriteDelay = -time.Millisecond },
		"a write delay of the write timeout":   func(c *Config) { c.Limits.WriteDelay = c.Limits.WriteTimeout },
	} {
		cfg := Config{Limits: limits(1)}
		change(&cfg)
		if _, err := New(cfg, nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry()); err == nil {
			t.Errorf("%s was accepted", name)
		}
	}
}

// The address a connection counts against: the peer's, or behind a
// trusted proxy the nearest untrusted address of X-Forwarded-For.
func TestClientAddr(t *testing.T) {
	e, err := New(Config{Limits: limits(1), Web: config.Web{TrustedProxies: []string{"10.0.0.0/8", "192.168.1.1"}}},
		nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		remote, xff, want string
	}{
		{"203.0.113.5:4000", "", "203.0.113.5"},
		{"203.0.113.5:4000", "198.51.100.7", "203.0.113.5"}, // not a proxy: the header is ignored
		{"10.1.2.3:4000", "198.51.100.7", "198.51.100.7"},
		{"10.1.2.3:4000", "6.6.6.6, 198.51.100.7, 10.9.9.9", "198.51.100.7"}, // the forged left part is not reached
		{"192.168.1.1:80", "198.51.100.7", "198.51.100.7"},
		{"192.168.1.2:80", "198.51.100.7", "192.168.1.2"},
		{"10.1.2.3:4000", "", "10.1.2.3"},
		{"10.1.2.3:4000", "10.2.2.2", "10.2.2.2"}, // only proxies: the farthest one
		{"10.1.2.3:4000", "garbage, 198.51.100.7", "198.51.100.7"},
		{"10.1.2.3:4000", "198.51.100.7, unknown", "forwarded:unknown"}, // not the proxy's bucket
		{"10.1.2.3:4000", "198.51.100.7:4711", "198.51.100.7"},
		{"10.1.2.3:4000", "[2001:db8::1]:4711", "2001:db8::/64"},
		{"[::ffff:10.1.2.3]:4000", "2001:db8::1", "2001:db8::/64"},
		{"[2001:db8:0:0:1::9]:4000", "", "2001:db8::/64"}, // one /64 is one client
	}
	for _, tc := range tests {
		r := ws.Request{Remote: tc.remote}
		if tc.xff != "" {
			r.Forwarded = []string{tc.xff}
		}
		if got := e.gate.clientAddr(r); got != tc.want {
			t.Errorf("%s with X-Forwarded-For %q: %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}

func TestOriginAllowed(t *testing.T) {
	e, err := New(Config{Limits: limits(1), Web: config.Web{AllowedOrigins: []string{"https://chat.example"}}},
		nil, fstest.MapFS{}, slog.Default(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		origin, host string
		ok           bool
	}{
		{"", "h:1", true},
		{"http://h:1", "h:1", true},
		{"https://h:1", "h:1", true},
		{"http://h:2", "h:1", false},
		{"http://h", "h:1", false},
		{"https://chat.example", "h:1", true},
		{"https://chat.example/", "h:1", false},
		{"null", "h:1", false},
		{"ftp://h:1", "h:1", false},
	}
	for _, tt := range tests {
		if got := e.gate.originAllowed(ws.Request{Host: tt.host, Origin: tt.origin}); got != tt.ok {
			t.Errorf("origin %q on host %q: %v, want %v", tt.origin, tt.host, got, tt.ok)
		}
	}
}

// BenchmarkDispatch measures the hub's fan-out of one stored message to
// the members of a room: one encoding per message, one push per member
// (the session's lock, then its connection's), into connections that are
// not served, whose queues the benchmark takes as a writer would.
func BenchmarkDispatch(b *testing.B) {
	for _, members := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			e := newTestEdge(b, 1<<20)
			clients := make([]*client, members)
			for i := range clients {
				clients[i] = unservedClient(e, fmt.Sprint("u", i), nil)
				clients[i].rooms["lobby"] = &roomState{}
				e.hub.rooms["lobby"] = &hubRoom{members: clients}
			}
			payload := proto.Encode(proto.Message{Type: "message", Room: "lobby", From: "alice",
				Text: strings.Repeat("hello ", 20), ID: "0123456789", TS: time.Now().UnixMilli()})
			msg := &nats.Msg{Subject: subject.RoomMsg("lobby"), Data: payload, Header: nats.Header{}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				msg.Header.Set("Nats-Sequence", strconv.Itoa(i+1))
				e.hub.dispatch(msg)
				if i%256 == 255 {
					for _, c := range clients {
						// The writer's turn: the queue is taken, and its
						// array given back to append to.
						c.conn.Take(c.conn.Take(nil))
					}
				}
			}
			b.ReportMetric(float64(b.N*members)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}

// A repeated join that must wait for room in the queue answers with the
// newest seq sent before its joined, not the one it saw before waiting.
func TestRejoinWhileQueueFullCarriesNewestSeq(t *testing.T) {
	e := newTestEdge(t, 2)
	e.nc = natstest.Connect(t, natstest.Start(t)) // who finds no presence
	waiting := make(chan struct{}, 1)
	c := unservedClient(e, "u", func() {
		select {
		case waiting <- struct{}{}:
		default:
		}
	})
	c.rooms["r"] = &roomState{lastSeq: 10}
	c.reply([]byte(`{"n":1}`))
	c.reply([]byte(`{"n":2}`)) // the queue is full of replies
	room := "r"
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.join(proto.Request{Type: proto.TypeJoin, Room: &room}) // waits for room
	}()
	<-waiting
	c.deliver(roomKey("r"), 11, 10, 0, []byte(`{"type":"message","seq":11}`))
	batch := c.conn.Take(nil) // as the writer takes the queue
	<-done
	sent := append(batch, c.conn.Take(nil)...)
	last := sent[len(sent)-1]
	if string(last) != `{"type":"joined","room":"r","seq":11}` {
		t.Fatalf("sent %q; want joined with seq 11 last", sent)
	}
}

func TestPendingGap(t *testing.T) {
	ev := func(seq, prev uint64) pendingEvent { return pendingEvent{seq: seq, prev: prev} }
	tests := []struct {
		name    string
		pending []pendingEvent
		sent    uint64
		want    uint64
	}{
		{"nothing held", nil, 10, 0},
		{"follows on", []pendingEvent{ev(12, 10), ev(15, 12)}, 10, 0},
		{"already sent", []pendingEvent{ev(9, 7), ev(10, 9)}, 10, 0},
		{"gap first", []pendingEvent{ev(15, 12)}, 10, 15},
		{"gap later", []pendingEvent{ev(12, 10), ev(20, 17), ev(21, 20)}, 10, 21},
		{"presence events do not count", []pendingEvent{ev(0, 0), ev(11, 10)}, 10, 0},
		{"unknown prev", []pendingEvent{ev(14, 0)}, 10, 0},
	}
	for _, tc := range tests {
		if got := pendingGap(tc.pending, tc.sent); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestSortConversations(t *testing.T) {
	convs := []proto.Conversation{{With: "bob", TS: 5}, {With: "zed", TS: 9}, {With: "amy", TS: 5}, {With: "Carl", TS: 5}}
	sortConversations(convs)
	var got []string
	for _, cv := range convs {
		got = append(got, cv.With)
	}
	if want := []string{"zed", "Carl", "amy", "bob"}; !slices.Equal(got, want) { // bytewise: 'C' < 'a'
		t.Fatalf("order %v, want %v", got, want)
	}
}

// A client keeps state for at most maxConvs conversations: the quietest
// goes, and one made again starts after it, so nothing already delivered
// is taken for a gap.
func TestConversationsBounded(t *testing.T) {
	e := newTestEdge(t, 1<<20)
	c := unservedClient(e, "bob", nil)
	c.floorKnown = true
	for i := range maxConvs + 10 {
		if gap, _ := c.deliver(dmKey("bob", fmt.Sprint("u", i)), uint64(i+1), 0, 0, []byte(`{}`)); gap {
			t.Fatalf("conversation %d: a gap", i)
		}
	}
	if len(c.convs) != maxConvs {
		t.Fatalf("%d conversations kept, want %d", len(c.convs), maxConvs)
	}
	if c.convFloor != 10 {
		t.Fatalf("floor after forgetting 10: %d", c.convFloor)
	}
	// A forgotten conversation's next dm, whose previous one (seq 3) was
	// delivered, is not a gap.
	if gap, _ := c.deliver(dmKey("bob", "u2"), 20000, 3, 0, []byte(`{}`)); gap {
		t.Fatal("a forgotten conversation's next dm taken for a gap")
	}
}

// A shared flush serves every caller with a flush that starts after it
// called: the callers that come while one runs share the next one.
func TestSharedFlush(t *testing.T) {
	var s sharedFlush
	var flushes atomic.Int32
	release := make(chan struct{})
	flush := func() error {
		if flushes.Add(1) == 1 {
			<-release // the first one runs while the others gather
		}
		return nil
	}
	const callers = 50
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.do(flush) })
	servicetest.WaitFor(t, 10*time.Second, "the first flush made", func() bool { return flushes.Load() == 1 })
	for range callers - 1 {
		wg.Go(func() { _ = s.do(flush) })
	}
	servicetest.WaitFor(t, 10*time.Second, "the other callers waiting", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting == callers-1
	})
	close(release)
	wg.Wait()
	if n := flushes.Load(); n != 2 {
		t.Fatalf("%d flushes for %d callers, want 2: the first, and one for all who came while it ran", n, callers)
	}
}

// A client back from another edge may have seen messages this edge's
// dispatcher has not handed out yet: its since is newer than the newest
// seq the hub knows. That is not a store that was reset: the stream is
// asked, and the client has recovered with nothing to replay.
func TestJoinSinceAheadOfTheHub(t *testing.T) {
	nc := natstest.Connect(t, natstest.Start(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.EnsureStream(ctx, js, config.Defaults[config.Retention](), 1); err != nil {
		t.Fatal(err)
	}
	storeOne := func(n int) uint64 {
		t.Helper()
		ack, err := js.Publish(ctx, subject.StoreRoom("r"), fmt.Appendf(nil, `{"type":"message","room":"r","from":"u","text":"%d","ts":1}`, n))
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	storeOne(1)
	// The edge's hub is not run: what is stored from now on reaches its
	// subscription but is not dispatched, as on an edge whose dispatcher
	// is behind.
	e, err := New(Config{Limits: limits(512)}, nc, fstest.MapFS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// The reporter runs, as the joins wait for their reports.
	rctx, stop := context.WithCancel(context.Background())
	go e.reporter.run(rctx)
	defer func() { stop(); <-e.reporter.done }()
	e.ctx = ctx
	room := "r"
	first := unservedClient(e, "a", nil)
	first.join(proto.Request{Type: proto.TypeJoin, Room: &room}) // the hub learns the newest seq
	storeOne(2)
	newest := storeOne(3)

	c := unservedClient(e, "b", nil)
	since := int64(newest)
	c.join(proto.Request{Type: proto.TypeJoin, Room: &room, Since: &since})
	sent := c.conn.Take(nil)
	want := fmt.Sprintf(`{"type":"joined","room":"r","seq":%d,"recovered":true}`, newest)
	if len(sent) != 1 || string(sent[0]) != want {
		t.Fatalf("sent %q; want only %s", sent, want)
	}
	first.leaveAll()
	c.leaveAll()
	e.hub.close()
}
