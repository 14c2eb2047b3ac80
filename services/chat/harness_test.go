package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/services/broadcaster/broadcaster"
	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
	"github.com/natter-chat/natter/web"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// wait is the longest any test waits for an event that should come.
const wait = 10 * time.Second

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLimits are the default limits without the rate limit: tests post
// faster than people do. TestRateLimit turns it on.
func testLimits() config.Limits {
	l := config.Defaults[config.Limits]()
	l.MessageRate = 0
	return l
}

// connect opens a service connection like a process would, drained at the
// end of the test.
func connect(t *testing.T, ns *server.Server, name string) *nats.Conn {
	t.Helper()
	nc, err := natsconn.Connect(ns.ClientURL(), name, 2*time.Second, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsconn.Drain(nc) })
	return nc
}

// startBroadcaster runs a broadcaster until the test ends and returns its
// registry.
func startBroadcaster(t *testing.T, ns *server.Server) *prometheus.Registry {
	t.Helper()
	return startBroadcasterWith(t, ns, config.Defaults[config.Retention]())
}

// startBroadcasterWith is startBroadcaster with the stream's retention.
func startBroadcasterWith(t *testing.T, ns *server.Server, r config.Retention) *prometheus.Registry {
	t.Helper()
	return startBroadcasterOn(t, connect(t, ns, "broadcaster"), r)
}

// startBroadcasterOn is startBroadcaster on the connection nc.
func startBroadcasterOn(t *testing.T, nc *nats.Conn, r config.Retention) *prometheus.Registry {
	t.Helper()
	return startBroadcasterCfg(t, nc, broadcaster.Config{Retention: r, Replicas: 1})
}

// startBroadcasterCfg is startBroadcaster on the connection nc, with cfg.
func startBroadcasterCfg(t *testing.T, nc *nats.Conn, cfg broadcaster.Config) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	b, err := broadcaster.New(cfg, nc, quietLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("broadcaster: %v", err)
		}
	})
	select {
	case <-b.Serving():
	case <-time.After(wait):
		t.Fatal("broadcaster not serving")
	}
	return reg
}

type testEdge struct {
	*edge.Edge
	nc  *nats.Conn
	reg *prometheus.Registry
	url string // http://host:port
	// stop stops the edge and returns what Run returned; the test's
	// cleanup calls it too.
	stop func() error
}

// startEdge runs an edge on a random port until the test ends.
func startEdge(t *testing.T, ns *server.Server, tweak func(*edge.Config)) *testEdge {
	t.Helper()
	return startEdgeAt(t, ns.ClientURL(), tweak)
}

// startEdgeAt is startEdge connecting to NATS at url, with opts (a
// user, say).
func startEdgeAt(t *testing.T, url string, tweak func(*edge.Config), opts ...nats.Option) *testEdge {
	t.Helper()
	cfg := edge.Config{Limits: testLimits()}
	if tweak != nil {
		tweak(&cfg)
	}
	nc, err := natsconn.Connect(url, "edge", 2*time.Second, quietLog(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsconn.Drain(nc) })
	reg := prometheus.NewRegistry()
	e, err := edge.New(cfg, nc, web.FS(), quietLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx, ln) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("edge: %v", err)
		}
	})
	return &testEdge{Edge: e, nc: nc, reg: reg, url: "http://" + ln.Addr().String(), stop: stop}
}

// event is any server event, with every field the contract names.
type event struct {
	Type      string          `json:"type"`
	User      string          `json:"user"`
	Session   string          `json:"session"`
	Room      string          `json:"room"`
	From      string          `json:"from"`
	To        string          `json:"to"`
	DM        string          `json:"dm"`
	Text      string          `json:"text"`
	File      *fileRef        `json:"file"`
	ID        json.RawMessage `json:"id"`
	Seq       *uint64         `json:"seq"`
	TS        *int64          `json:"ts"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	Users     []string        `json:"users"`
	Event     string          `json:"event"`
	Messages  []event         `json:"messages"`
	More      *bool           `json:"more"`
	Recovered *bool           `json:"recovered"`
	// Conversations answers dms.
	Conversations []conversation `json:"conversations"`
	raw           string
}

func (ev event) seq() uint64 {
	if ev.Seq == nil {
		return 0
	}
	return *ev.Seq
}

func (ev event) id() string {
	var s string
	_ = json.Unmarshal(ev.ID, &s)
	return s
}

// wsClient is a real WebSocket client; a reader goroutine splits frames
// into events.
type wsClient struct {
	t       *testing.T
	name    string
	conn    *websocket.Conn
	events  chan event
	done    chan struct{}
	mu      sync.Mutex
	readErr error // guarded by mu; set when the reader ends
	session string
	// gate is held to stop the reader from reading the socket (pause).
	gate     sync.Mutex
	paused   atomic.Bool // gate is held
	received int
	// backlog holds events read ahead (post reads past message echoes
	// while it waits for the ack); next returns them first.
	backlog []event
	// presence receives the presence events, which next skips: only the
	// tests about presence look at them.
	presence chan event
}

func wsURL(base, user string) string {
	return strings.Replace(base, "http://", "ws://", 1) + "/ws?user=" + url.QueryEscape(user)
}

// dial connects as user and reads the welcome.
func dial(t *testing.T, base, user string) *wsClient {
	t.Helper()
	return dialWith(t, websocket.DefaultDialer, base, user)
}

func dialWith(t *testing.T, d *websocket.Dialer, base, user string) *wsClient {
	t.Helper()
	return dialSetup(t, d, base, user, nil)
}

// dialSetup lets setup change the connection before its reader starts.
func dialSetup(t *testing.T, d *websocket.Dialer, base, user string, setup func(*websocket.Conn)) *wsClient {
	t.Helper()
	return dialURL(t, d, wsURL(base, user), nil, user, setup)
}

// dialURL connects to the WebSocket url with the request headers h, and
// reads the welcome of user.
func dialURL(t *testing.T, d *websocket.Dialer, url string, h http.Header, user string, setup func(*websocket.Conn)) *wsClient {
	t.Helper()
	conn, resp, err := d.Dial(url, h)
	if err != nil {
		t.Fatalf("dial as %s: %v (%v)", user, err, resp)
	}
	if setup != nil {
		setup(conn)
	}
	c := &wsClient{t: t, name: user, conn: conn, events: make(chan event, 100000), presence: make(chan event, 100000),
		done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.close)
	w := c.next()
	if w.Type != "welcome" || w.User != user || w.Session == "" {
		t.Fatalf("%s: first event %s, want welcome", user, w.raw)
	}
	c.session = w.Session
	return c
}

func (c *wsClient) read() {
	defer close(c.done)
	defer close(c.events)
	for {
		c.gate.Lock()
		c.gate.Unlock() //nolint:staticcheck // an empty critical section: wait while paused
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			var ev event
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				c.t.Errorf("%s: server sent a line that is not JSON: %q", c.name, line)
				continue
			}
			ev.raw = line
			if ev.Type == "presence" {
				c.presence <- ev
				continue
			}
			c.events <- ev
		}
	}
}

func (c *wsClient) close() {
	_ = c.conn.Close()
	<-c.done
}

func (c *wsClient) sendRaw(s string) {
	c.t.Helper()
	if err := c.conn.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
		c.t.Fatalf("%s: write: %v", c.name, err)
	}
}

func (c *wsClient) send(obj map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(obj)
	if err != nil {
		c.t.Fatal(err)
	}
	c.sendRaw(string(b))
}

// next returns the next event, failing the test when none comes.
func (c *wsClient) next() event {
	c.t.Helper()
	if len(c.backlog) > 0 {
		ev := c.backlog[0]
		c.backlog = c.backlog[1:]
		return ev
	}
	select {
	case ev, ok := <-c.events:
		if !ok {
			c.t.Fatalf("%s: connection ended: %v", c.name, c.err())
		}
		return ev
	case <-time.After(wait):
		c.t.Fatalf("%s: no event within %v", c.name, wait)
	}
	return event{}
}

// expect returns the next event and checks its type.
func (c *wsClient) expect(typ string) event {
	c.t.Helper()
	ev := c.next()
	if ev.Type != typ {
		c.t.Fatalf("%s: got %s, want a %s event", c.name, ev.raw, typ)
	}
	return ev
}

func (c *wsClient) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// join joins room and returns the joined event.
func (c *wsClient) join(room string) event {
	c.t.Helper()
	c.send(map[string]any{"type": "join", "room": room})
	ev := c.expect("joined")
	if ev.Room != room {
		c.t.Fatalf("%s: joined %s, want %s", c.name, ev.Room, room)
	}
	return ev
}

// post sends a message with id and returns its ack.
func (c *wsClient) post(room, text, id string) uint64 {
	c.t.Helper()
	return c.acked(map[string]any{"type": "message", "room": room, "text": text, "id": id}, id)
}

// acked sends req, a post with id, and returns the seq of its ack,
// keeping the live events that come meanwhile (its own echo may come
// first) for next.
func (c *wsClient) acked(req map[string]any, id string) uint64 {
	c.t.Helper()
	c.send(req)
	var ahead []event
	defer func() { c.backlog = append(ahead, c.backlog...) }()
	for {
		ev := c.next()
		switch ev.Type {
		case "ack":
			if ev.id() != id {
				c.t.Fatalf("%s: ack for %s, want %s", c.name, ev.raw, id)
			}
			return ev.seq()
		case "message", "dm", "typing":
			ahead = append(ahead, ev)
		default:
			c.t.Fatalf("%s: got %s while waiting for ack of %s", c.name, ev.raw, id)
		}
	}
}

// closeCode waits for the connection to end and returns the close code it
// ended with: 1006 (gorilla's "abnormal closure") or -1 when it ended
// without a close frame.
func (c *wsClient) closeCode() int {
	c.t.Helper()
	deadline := time.After(wait)
	for {
		select {
		case _, ok := <-c.events:
			if ok {
				continue
			}
			var ce *websocket.CloseError
			if errors.As(c.err(), &ce) {
				return ce.Code
			}
			return -1
		case <-deadline:
			c.t.Fatalf("%s: connection still open after %v", c.name, wait)
		}
	}
}

// streamMsgs is the number of messages stored in the room stream.
func streamMsgs(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	return streamCount(t, nc, subject.Stream)
}

// dmStreamMsgs is the number of dms stored.
func dmStreamMsgs(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	return streamCount(t, nc, subject.DMStream)
}

func streamCount(t *testing.T, nc *nats.Conn, stream string) uint64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// counter reads a counter or gauge from a registry, summed over labels.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// counterWith reads the counter name{label=value} from a registry.
func counterWith(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// setup is the usual rig: a NATS server, a broadcaster and an edge.
func setup(t *testing.T) (*server.Server, *testEdge) {
	t.Helper()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	return ns, startEdge(t, ns, nil)
}

func httpStatus(t *testing.T, req *http.Request) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// fileRef is the file a message or dm carries.
type fileRef struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	Type string `json:"type"`
}

// conversation is one entry of a dms answer.
type conversation struct {
	With string `json:"with"`
	Seq  uint64 `json:"seq"`
	TS   int64  `json:"ts"`
}
