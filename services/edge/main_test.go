package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The edge runs as its own process against CHAT_NATS_URL: it serves its
// endpoints, takes WebSockets, answers unavailable while no broadcaster
// runs, and stops on its context.
func TestRunAlone(t *testing.T) {
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.EnsureStream(context.Background(), js, config.Retention{MaxMsgs: 10, MaxAge: time.Hour, MaxBytes: 1 << 20}, 1); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	addr, stop := servicetest.Run(t, run)
	servicetest.GetOK(t, addr, "/healthz", "/readyz", "/metrics", "/")
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/ws?user=alice", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, want := range []string{`"welcome"`, `"joined"`, `"unavailable"`} {
		switch want {
		case `"joined"`:
			_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"join","room":"lobby"}`))
		case `"unavailable"`:
			_ = conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"message","room":"lobby","text":"hi","id":"1"}`))
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), want) {
			t.Fatalf("got %s, want %s", data, want)
		}
	}
	// Its /metrics timed the handshake (observed by the flusher before
	// it wrote joined), and not the post no broadcaster answered.
	ms := servicetest.Scrape(t, addr)
	if n, _, ok := ms.Histogram("natter_edge_handshake_seconds"); !ok || n != 1 {
		t.Errorf("natter_edge_handshake_seconds: count %d, present %v; want 1", n, ok)
	}
	if n, _, ok := ms.Histogram("natter_edge_post_seconds"); !ok || n != 0 {
		t.Errorf("natter_edge_post_seconds: count %d, present %v; want 0", n, ok)
	}
	stop()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("after stop: %v, want close 1001", err)
	}
}

func TestRunNeedsNATSURL(t *testing.T) {
	t.Setenv("CHAT_NATS_URL", "")
	if err := run(context.Background(), nil, io.Discard, io.Discard); err == nil {
		t.Fatal("ran without CHAT_NATS_URL")
	}
}

// The healthcheck subcommand passes while the edge is ready, and fails while
// its NATS is gone (503) and once it has stopped.
func TestHealthcheck(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	servicetest.CheckHealthcheck(t, run, ns.Shutdown)
}

// Without CHAT_HTTP_ADDR the healthcheck asks the edge's own default address,
// on 127.0.0.1; any other argument is refused before anything starts.
func TestRunArguments(t *testing.T) { servicetest.CheckArguments(t, run, "127.0.0.1:8080") }

// An unknown CHAT_LOG_FORMAT or CHAT_LOG_LEVEL is refused at start, and
// CHAT_LOG_FORMAT=json makes every line one JSON object.
func TestRunLogSettings(t *testing.T) {
	servicetest.CheckLogSettings(t, run, natstest.Start(t).ClientURL(), "edge")
}

// CHAT_PPROF_ADDR, empty by default, opens no listener; set, a listener
// of its own serves /debug/pprof/heap and the HTTP address does not.
func TestPProf(t *testing.T) { servicetest.CheckPProf(t, run, natstest.Start(t).ClientURL()) }
