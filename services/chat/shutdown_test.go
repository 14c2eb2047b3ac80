package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/logwatch"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// The single binary stops from the outside in, under one deadline: with
// clients connected and posting, and nothing killed early, Run returns
// within the contract's 10 s; every client is closed with 1001; the edge
// stops before the broadcaster and presence, and they before NATS (the
// "stopped" lines, in order); presence, still running when the edge
// closes its clients, announces every one of them leaving; and every post
// acknowledged is in the stream with its seq when the binary starts
// again on the same data.
func TestShutdownOutsideIn(t *testing.T) {
	const clients, window = 12, 4
	dir := t.TempDir()
	t.Parallel()
	cfg := config.Defaults[Config]()
	cfg.HTTPAddr, cfg.NATSAddr, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", dir
	cfg.Log.Format = "json"
	cfg.MessageRate = 0 // the posters send as fast as the acks come
	logs := logwatch.New()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m, err := Open(ctx, cfg, logs)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	base := "http://" + m.Addr()

	// An observer on NATS counts the presence leaves of the room.
	nc, err := nats.Connect("nats://" + m.NATSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var leftMu sync.Mutex
	left := map[string]bool{}
	if _, err := nc.Subscribe(subject.RoomPresence("lobby"), func(msg *nats.Msg) {
		var ev event
		if json.Unmarshal(msg.Data, &ev) == nil && ev.Event == "leave" {
			leftMu.Lock()
			left[ev.User] = true
			leftMu.Unlock()
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// Each client keeps window posts in flight until its connection ends.
	var acked sync.Map // id -> seq
	var acks atomic.Int64
	codes := make([]int, clients)
	var posters sync.WaitGroup
	for i := range clients {
		c := dial(t, base, fmt.Sprintf("user%d", i))
		c.join("lobby")
		posters.Go(func() {
			sent := 0
			post := func() bool {
				sent++
				req, _ := json.Marshal(map[string]any{"type": "message", "room": "lobby",
					"text": fmt.Sprintf("post %d of %s", sent, c.name), "id": fmt.Sprintf("%s-%d", c.name, sent)})
				return c.conn.WriteMessage(websocket.TextMessage, req) == nil
			}
			for range window {
				post()
			}
			for ev := range c.events {
				if ev.Type == "ack" {
					acked.Store(ev.id(), ev.seq())
					acks.Add(1)
					post()
				}
			}
			codes[i] = -1
			if ce, ok := c.err().(*websocket.CloseError); ok {
				codes[i] = ce.Code
			}
		})
	}
	servicetest.WaitFor(t, wait, "200 posts acknowledged", func() bool { return acks.Load() >= 200 })

	began := time.Now()
	cancel()
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Run still running 15 s after the stop\n%s", logs.String())
	}
	took := time.Since(began)
	if took > 10*time.Second {
		t.Errorf("stopping took %v; the contract allows 10 s", took)
	}
	posters.Wait()
	for i, code := range codes {
		if code != websocket.CloseGoingAway {
			t.Errorf("user%d: closed with %d, want 1001", i, code)
		}
	}
	leftMu.Lock()
	if len(left) != clients {
		t.Errorf("presence announced %d of %d users leaving before it stopped", len(left), clients)
	}
	leftMu.Unlock()

	// The "stopped" lines: the edge, then the broadcaster and presence
	// (in either order), then NATS.
	var order []string
	for line := range strings.SplitSeq(logs.String(), "\n") {
		var l struct{ Msg, Part, Service string }
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "stopped" && l.Service == "chat" {
			order = append(order, l.Part)
		}
	}
	if got := strings.Join(order, " "); got != "edge broadcaster presence nats" && got != "edge presence broadcaster nats" {
		t.Errorf("stopped in the order %q, want the edge, the broadcaster and presence, then nats", got)
	}

	// Every post acknowledged was stored with the seq of its ack.
	m2, _ := startMain(t, dir)
	nc2, err := nats.Connect("nats://" + m2.NATSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js, err := jetstream.New(nc2)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[uint64]string{}
	for after := uint64(0); ; {
		rctx, rcancel := context.WithTimeout(context.Background(), wait)
		msgs, more, err := store.After(rctx, js, store.Room("lobby"), after, 1000)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range msgs {
			var ev event
			if err := json.Unmarshal(s.Data, &ev); err != nil {
				t.Fatalf("stored %q: %v", s.Data, err)
			}
			stored[s.Seq] = ev.id()
			after = s.Seq
		}
		if !more || len(msgs) == 0 {
			break
		}
	}
	n := 0
	acked.Range(func(id, seq any) bool {
		n++
		if got := stored[seq.(uint64)]; got != id {
			t.Errorf("post %s acknowledged with seq %d, which holds %q", id, seq, got)
		}
		return true
	})
	t.Logf("stopped in %v with %d posts acknowledged, %d stored", took.Round(time.Millisecond), n, len(stored))
}
