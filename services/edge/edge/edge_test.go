package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func limits(queue int) config.Limits {
	return config.Limits{
		MaxFrameBytes: 64 << 10, MaxTextChars: 4000, MaxRooms: 100, SendQueue: queue,
		PostTimeout: time.Second, PingInterval: 25 * time.Second, PongTimeout: 60 * time.Second,
		WriteTimeout: 5 * time.Second,
	}
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
		r := httptest.NewRequest("GET", "/ws", nil)
		r.RemoteAddr = tc.remote
		if tc.xff != "" {
			r.Header.Set("X-Forwarded-For", tc.xff)
		}
		if got := e.clientAddr(ws.RequestOf(r)); got != tc.want {
			t.Errorf("%s with X-Forwarded-For %q: %s, want %s", tc.remote, tc.xff, got, tc.want)
		}
	}
}

// serveOne serves one WebSocket connection with a client that prepare
// sets up before it is served, and dials it. wait returns once the
// server's side has ended.
func serveOne(t *testing.T, e *Edge, prepare func(*client)) (conn *websocket.Conn, wait func()) {
	t.Helper()
	p, err := ws.NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	e.poller = p
	go p.Run()
	ctx, stop := context.WithCancel(context.Background())
	flushersDone := e.runFlushers(ctx)
	t.Cleanup(func() {
		stop()
		flushersDone()
		e.writers.Wait()
		p.Close()
	})
	handlerDone := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		wc, err := e.upgrader.Upgrade(w, r, nil)
		if err != nil {
			t.Error(err)
			close(handlerDone)
			return
		}
		c := newClient(e, wc.NetConn(), "u", "s")
		prepare(c)
		c.serve(nil, func() { close(handlerDone) })
	}))
	t.Cleanup(srv.Close)
	conn, _, err = websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, func() { <-handlerDone }
}

// A client whose queue overflows while its socket still takes data gets
// close 1008, and what was queued is not written after it.
func TestQueueOverflowClosesWith1008(t *testing.T) {
	e := newTestEdge(t, 4)
	conn, wait := serveOne(t, e, func(c *client) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range 5 { // one more live event than the queue holds
			c.enqueueLiveLocked([]byte(`{"type":"test","n":` + strconv.Itoa(i) + `}`))
		}
	})
	_, data, err := conn.ReadMessage()
	ce, ok := err.(*websocket.CloseError)
	if !ok || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("read %q, %v; want close 1008", data, err)
	}
	wait()
}

// A queue of CHAT_SEND_QUEUE live events is full, not over: a client
// holding exactly that many gets them all and stays.
func TestQueueHoldsSendQueueEvents(t *testing.T) {
	e := newTestEdge(t, 4)
	var closing atomic.Bool
	conn, wait := serveOne(t, e, func(c *client) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range 4 {
			c.enqueueLiveLocked([]byte(`{"n":` + strconv.Itoa(i) + `}`))
		}
		closing.Store(c.closing)
	})
	_, data, err := conn.ReadMessage() // after prepare: the events come after it
	if err != nil || string(data) != "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}" {
		t.Fatalf("read %q, %v; want the four events", data, err)
	}
	if closing.Load() {
		t.Fatal("a client with a full queue, not an overflowing one, was cut off")
	}
	conn.Close()
	wait()
}

// CHAT_WRITE_DELAY holds a client's first queued event for those that
// follow: an event queued 20 ms after another, within a delay of 300 ms,
// leaves in the same frame.
func TestWriteDelayCoalesces(t *testing.T) {
	lim := limits(512)
	lim.WriteDelay = 300 * time.Millisecond
	e, err := New(Config{Limits: lim}, nil, fstest.MapFS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan *client, 1)
	conn, wait := serveOne(t, e, func(c *client) { served <- c })
	c := <-served
	c.reply([]byte(`{"n":0}`))
	time.Sleep(20 * time.Millisecond) // the spacing under test, not a wait for something
	c.reply([]byte(`{"n":1}`))
	_, data, err := conn.ReadMessage()
	if err != nil || string(data) != "{\"n\":0}\n{\"n\":1}" {
		t.Fatalf("first frame %q, %v; want both events in it", data, err)
	}
	conn.Close()
	wait()
}

// Events queued together leave in one frame.
func TestWriterCoalesces(t *testing.T) {
	e := newTestEdge(t, 512)
	conn, wait := serveOne(t, e, func(c *client) {
		for i := range 3 {
			c.reply([]byte(`{"n":` + strconv.Itoa(i) + `}`))
		}
	})
	_, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "{\"n\":0}\n{\"n\":1}\n{\"n\":2}" {
		t.Fatalf("frame %q, want the three events in one frame", data)
	}
	// The client's close code comes back (RFC 6455 5.5.1).
	_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"))
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4000 {
		t.Fatalf("after closing with 4000: %v", err)
	}
	conn.Close()
	wait()
}

func TestOriginAllowed(t *testing.T) {
	e := newTestEdge(t, 1)
	e.cfg.Web.AllowedOrigins = []string{"https://chat.example"}
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
		r := httptest.NewRequest("GET", "http://"+tt.host+"/ws", nil)
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		if got := e.originAllowed(ws.RequestOf(r)); got != tt.ok {
			t.Errorf("origin %q on host %q: %v, want %v", tt.origin, tt.host, got, tt.ok)
		}
	}
}

// BenchmarkDispatch measures the hub's fan-out of one stored message to
// the members of a room: one encoding per message, one queue append per
// member.
func BenchmarkDispatch(b *testing.B) {
	for _, members := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("members=%d", members), func(b *testing.B) {
			e := newTestEdge(b, 1<<20)
			clients := make([]*client, members)
			for i := range clients {
				clients[i] = newClient(e, nil, fmt.Sprint("u", i), fmt.Sprint("s", i))
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
						c.mu.Lock()
						clear(c.queue)
						c.queue = c.queue[:0]
						c.mu.Unlock()
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
	c := newClient(e, nil, "u", "s")
	c.rooms["r"] = &roomState{lastSeq: 10}
	c.reply([]byte(`{"n":1}`))
	c.reply([]byte(`{"n":2}`)) // the queue is full of replies
	room := "r"
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.join(proto.Request{Type: proto.TypeJoin, Room: &room}) // waits for room
	}()
	for waiting := false; !waiting; {
		c.mu.Lock()
		waiting = c.waiting
		c.mu.Unlock()
		runtime.Gosched() // polling: the join is on its way to waiting
	}
	c.deliver(roomKey("r"), 11, 10, 0, []byte(`{"type":"message","seq":11}`))
	c.mu.Lock() // the writer takes the queue
	batch := c.queue
	c.queue, c.live = nil, 0
	c.space.Broadcast()
	c.mu.Unlock()
	<-done
	sent := append(batch, c.queue...)
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
	c := newClient(e, nil, "bob", "s")
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

// waitFor waits until cond holds, at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 10 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// A client that stops reading fills its socket: a slow writer takes it
// over, waits for it, and hands it back to the flusher once it has caught
// up; nothing is lost or reordered on the way.
func TestSlowWriterCatchesUp(t *testing.T) {
	const events, size = 8000, 4096 // 32 MiB: more than the socket buffers hold
	e := newTestEdge(t, events+1)
	e.cfg.Limits.WriteTimeout = time.Second // each 64 KiB is read well within it, even under -race
	served := make(chan *client, 1)
	pad := strings.Repeat("x", size)
	conn, wait := serveOne(t, e, func(c *client) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range events {
			c.enqueueLiveLocked([]byte(`{"n":` + strconv.Itoa(i) + `,"pad":"` + pad + `"}`))
		}
		served <- c
	})
	c := <-served
	isSlow := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.slow
	}
	waitFor(t, "slow writer", isSlow)
	next := 0
	read := func(n int) {
		t.Helper()
		for next < n {
			_, data, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("after %d events: %v", next, err)
			}
			for line := range strings.SplitSeq(string(data), "\n") {
				var ev struct{ N int }
				if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.N != next {
					t.Fatalf("event %q, want n=%d", line[:min(len(line), 40)], next)
				}
				next++
			}
		}
	}
	read(events)
	waitFor(t, "hand-back to the flusher", func() bool { return !isSlow() })
	// Past the slow writer's last deadline: a deadline left set would
	// fail the flusher's next write.
	time.Sleep(e.cfg.Limits.WriteTimeout + 500*time.Millisecond)
	c.mu.Lock()
	c.enqueueLiveLocked([]byte(`{"n":` + strconv.Itoa(events) + `}`))
	c.mu.Unlock()
	read(events + 1)
	c.close(ws.CloseNormal, "")
	wait()
}

// Every ping gets a pong with its payload, an empty one too.
func TestPingGetsPong(t *testing.T) {
	e := newTestEdge(t, 16)
	conn, wait := serveOne(t, e, func(*client) {})
	pongs := make(chan string, 2)
	conn.SetPongHandler(func(p string) error {
		pongs <- p
		return nil
	})
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	for _, payload := range []string{"", "x"} {
		if err := conn.WriteControl(websocket.PingMessage, []byte(payload), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-pongs:
			if p != payload {
				t.Fatalf("pong %q, want %q", p, payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no pong for the ping %q", payload)
		}
	}
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	wait()
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
	waitFor(t, "the first flush", func() bool { return flushes.Load() == 1 })
	for range callers - 1 {
		wg.Go(func() { _ = s.do(flush) })
	}
	waitFor(t, "the callers to gather", func() bool {
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

// A request that comes with its connection may be read by the poller
// while the accept loop is still making its handshake: the handshake
// must still end as one, and the client go on reading (its ping gets a
// pong), and the edge still stop. (The accept loop once took such a
// handshake for an aborted one and stopped the client's reading.)
func TestRequestReadBeforeHandshakeIsMade(t *testing.T) {
	nc := natstest.Connect(t, natstest.Start(t))
	e, err := New(Config{Limits: limits(64)}, nc, fstest.MapFS{}, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	// The window is widened, not waited on: the reader may run in it.
	e.testHookWatched = func() { time.Sleep(100 * time.Millisecond) }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx, ln) }()

	conn, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/ws?user=early", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pong := make(chan struct{}, 1)
	conn.SetPongHandler(func(string) error {
		pong <- struct{}{}
		return nil
	})
	read := make(chan struct{})
	go func() {
		defer close(read)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-pong:
	case <-time.After(10 * time.Second):
		t.Fatal("no pong: the client's reading was stopped")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the edge did not stop")
	}
	<-read
}
