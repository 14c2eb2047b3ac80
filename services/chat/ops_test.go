package main

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/embedded"
	"github.com/natter-chat/natter/shared/servicetest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestPageAndOpsEndpoints(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	for _, tt := range []struct{ path, want string }{
		{"/", "<title>natter</title>"},
		{"/?user=alice&room=lobby", "app.js"},
		{"/app.js", "new WebSocket"},
		{"/healthz", "ok"},
		{"/readyz", "ready"},
		{"/metrics", "natter_edge_connections"},
	} {
		code, body := get(t, e.url+tt.path)
		if code != http.StatusOK || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s: %d, body without %q", tt.path, code, tt.want)
		}
	}
}

// With CHAT_PPROF_ADDR the profiles are served on a listener of their
// own, logged with listener=pprof, and not on the HTTP address.
func TestPProf(t *testing.T) {
	t.Setenv("CHAT_PPROF_ADDR", "127.0.0.1:0")
	base, logs, _ := runLogged(t)
	pprof := logs.Await(t, "pprof", wait)
	if code, _ := get(t, "http://"+pprof+"/debug/pprof/heap"); code != http.StatusOK {
		t.Errorf("GET /debug/pprof/heap on %s: %d", pprof, code)
	}
	if code, _ := get(t, base+"/debug/pprof/heap"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/heap on the HTTP address %s: %d, want 404", base, code)
	}
}

// While NATS is away, sockets stay open, posts get unavailable and /readyz
// says 503; when it is back, the same sockets chat again. Not parallel:
// while NATS is down, a parallel test could be given its port.
func TestNATSOutageAndReturn(t *testing.T) {
	dir := t.TempDir()
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := embedded.Addr(ns)
	t.Cleanup(func() { embedded.Stop(ns) })
	startBroadcaster(t, ns)
	e := startEdge(t, ns, nil)
	a := dial(t, e.url, "alice")
	b := dial(t, e.url, "bob")
	a.join("lobby")
	b.join("lobby")
	before := a.post("lobby", "before the outage", "1")

	embedded.Stop(ns)
	servicetest.WaitFor(t, wait, "readyz 503", func() bool { code, _ := get(t, e.url+"/readyz"); return code == http.StatusServiceUnavailable })
	a.send(map[string]any{"type": "message", "room": "lobby", "text": "during", "id": "2"})
	for {
		ev := a.next()
		if ev.Type == "message" {
			continue // the echo of the first post
		}
		if ev.Type != "error" || ev.Code != "unavailable" || ev.id() != "2" {
			t.Fatalf("post during the outage: %s", ev.raw)
		}
		break
	}
	if code, _ := get(t, e.url+"/healthz"); code != http.StatusOK {
		t.Fatalf("healthz %d during the outage", code)
	}
	b.send(map[string]any{"type": "join", "room": "other"})
	if ev := b.next(); ev.Type == "message" {
		if ev = b.next(); ev.Type != "error" || ev.Code != "unavailable" {
			t.Fatalf("join during the outage: %s", ev.raw)
		}
	} else if ev.Type != "error" || ev.Code != "unavailable" {
		t.Fatalf("join during the outage: %s", ev.raw)
	}

	// Typing is not kept for later either: it is refused.
	b.send(map[string]any{"type": "typing", "room": "lobby"})
	if ev := b.next(); ev.Type != "error" || ev.Code != "unavailable" {
		t.Fatalf("typing during the outage: %s", ev.raw)
	}

	ns, err = embedded.Start(embedded.Options{Addr: addr, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embedded.Stop(ns) })
	servicetest.WaitFor(t, wait, "readyz 200", func() bool { code, _ := get(t, e.url+"/readyz"); return code == http.StatusOK })
	// The broadcaster and the room subscription come back with the
	// connection; a retry of the refused post is stored once.
	var seq uint64
	var refused string
	if !servicetest.Poll(wait, func() bool {
		a.send(map[string]any{"type": "message", "room": "lobby", "text": "after", "id": "2"})
		for ev := a.next(); ; ev = a.next() {
			switch ev.Type {
			case "ack":
				seq = ev.seq()
				return true
			case "error":
				refused = ev.raw
				return false
			}
		}
	}) {
		t.Fatalf("still refused %v after NATS returned: %s", wait, refused)
	}
	if seq <= before {
		t.Fatalf("seq %d after the outage, want above %d", seq, before)
	}
	for {
		m := b.expect("message")
		if m.seq() == seq {
			break
		}
		if m.seq() != before {
			t.Fatalf("bob got %s", m.raw)
		}
	}
}

func TestDefaultConfigIsTheContract(t *testing.T) {
	// Every variable, not only CHAT_ ones: envconfig falls back to the
	// bare names (LOG_LEVEL for CHAT_LOG_LEVEL).
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // restored when the test ends
		os.Unsetenv(k)
	}
	var cfg Config
	if err := loadConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":8080" || cfg.NATSAddr != "127.0.0.1:4222" || cfg.DataDir != "chat-data" || cfg.URL != "" ||
		cfg.MaxFrameBytes != 64<<10 || cfg.MaxTextChars != 4000 || cfg.MaxRooms != 100 || cfg.SendQueue != 512 ||
		cfg.PingInterval != 25*time.Second || cfg.PongTimeout != 60*time.Second ||
		cfg.MaxMsgs != 10000 || cfg.MaxAge != 720*time.Hour || cfg.MaxBytes != 10<<30 || len(cfg.AllowedOrigins) != 0 ||
		cfg.MaxMembers != 500 || cfg.MessageRate != 10 || cfg.MessageBurst != 20 || cfg.TypingEvery != time.Second ||
		cfg.MaxConnsPerIP != 0 || cfg.AuthSecret != "" || cfg.Log.Format != "text" || cfg.Log.Level != "info" || cfg.PProfAddr != "" {
		t.Fatalf("defaults %+v", cfg)
	}
	t.Setenv("CHAT_ALLOWED_ORIGINS", "https://a.example,https://b.example")
	t.Setenv("CHAT_HISTORY_MAX_AGE", "24h")
	t.Setenv("CHAT_PRESENCE_MAX_MEMBERS", "50")
	if err := loadConfig(&cfg); err != nil {
		t.Fatal(err)
	}
	if len(cfg.AllowedOrigins) != 2 || cfg.MaxAge != 24*time.Hour || cfg.MaxMembers != 50 {
		t.Fatalf("from the environment: %+v", cfg)
	}
	t.Setenv("CHAT_HISTORY_MAX_AGE", "forever")
	if err := loadConfig(&cfg); err == nil {
		t.Fatal("a bad duration was accepted")
	}
}
