package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// testPresence is a presence replica on its own connection.
type testPresence struct {
	*presence.Presence
	nc     *nats.Conn
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	ended  bool
}

// startPresence runs a presence replica until the test ends (or stop).
func startPresence(t *testing.T, ns *server.Server, tweak func(*presence.Config)) *testPresence {
	t.Helper()
	return startPresenceOn(t, connect(t, ns, "presence"), tweak)
}

// startPresenceOn is startPresence on the connection nc.
func startPresenceOn(t *testing.T, nc *nats.Conn, tweak func(*presence.Config)) *testPresence {
	t.Helper()
	cfg := presence.Config{MaxMembers: 500, Replicas: 1}
	if tweak != nil {
		tweak(&cfg)
	}
	reg := prometheus.NewRegistry()
	p, err := presence.New(cfg, nc, quietLog(), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tp := &testPresence{Presence: p, nc: nc, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { tp.done <- p.Run(ctx) }()
	t.Cleanup(func() { tp.stop(t) })
	return tp
}

// stop shuts the replica down as SIGTERM would.
func (p *testPresence) stop(t *testing.T) {
	t.Helper()
	if p.ended {
		return
	}
	p.ended = true
	p.cancel()
	if err := <-p.done; err != nil {
		t.Errorf("presence: %v", err)
	}
}

// crash ends the replica as a killed process would: its connection goes
// first, so it can neither write nor give up the leader key.
func (p *testPresence) crash(t *testing.T) {
	t.Helper()
	p.nc.Close()
	p.stop(t)
}

// active reports whether the replica is the one announcing.
func (p *testPresence) active(t *testing.T) bool {
	return counter(t, p.reg, "natter_presence_active") == 1
}

// presenceWatch records every presence event on NATS, in order: presence
// publishes them all on one connection, so an event that comes after
// another was published after it.
type presenceWatch struct {
	events chan event
}

func watchPresence(t *testing.T, ns *server.Server) *presenceWatch {
	t.Helper()
	w := &presenceWatch{events: make(chan event, 10000)}
	nc := natstest.Connect(t, ns)
	_, err := nc.Subscribe("chat.room.*.presence", func(m *nats.Msg) {
		var ev event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			t.Errorf("presence event is not JSON: %q", m.Data)
			return
		}
		ev.raw = string(m.Data)
		w.events <- ev
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return w
}

// next returns the next event, failing the test when none comes before
// deadline.
func (w *presenceWatch) next(t *testing.T, deadline time.Time) event {
	t.Helper()
	select {
	case ev := <-w.events:
		return ev
	case <-time.After(time.Until(deadline)):
		t.Fatalf("no presence event by the deadline")
	}
	return event{}
}

// expect checks that the next events are exactly want ("room event user"
// each), in any order, all before deadline.
func (w *presenceWatch) expect(t *testing.T, deadline time.Time, want ...string) {
	t.Helper()
	var got []string
	for range want {
		ev := w.next(t, deadline)
		if ev.Type != "presence" || ev.TS == nil {
			t.Fatalf("malformed presence event %s", ev.raw)
		}
		got = append(got, ev.Room+" "+ev.Event+" "+ev.User)
	}
	slices.Sort(got)
	want = slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		t.Fatalf("presence events %q, want %q", got, want)
	}
}

// who asks presence over NATS, as any process may.
func who(nc *nats.Conn, room string) ([]string, error) {
	msg, err := nc.Request(subject.PresenceWho(room), nil, time.Second)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Users []string `json:"users"`
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil || reply.Users == nil {
		return nil, fmt.Errorf("who reply %q: %v", msg.Data, err)
	}
	return reply.Users, nil
}

// awaitWho asks who until it answers want, within d.
func awaitWho(t *testing.T, nc *nats.Conn, room string, want []string, d time.Duration) {
	t.Helper()
	var got []string
	var err error
	if !servicetest.Poll(d, func() bool { got, err = who(nc, room); return err == nil && slices.Equal(got, want) }) {
		t.Fatalf("who %s = %q (%v) after %v, want %q", room, got, err, d, want)
	}
}

// rawClient is a WebSocket client for goroutines other than the test's:
// its methods return errors instead of failing the test.
type rawClient struct {
	conn *websocket.Conn
}

func dialRaw(base, user string) (*rawClient, error) {
	conn, _, err := websocket.DefaultDialer.Dial(wsURL(base, user), nil)
	if err != nil {
		return nil, fmt.Errorf("dial as %s: %w", user, err)
	}
	c := &rawClient{conn: conn}
	if _, err := c.await("welcome"); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

// do sends a request and reads up to the event of type typ, skipping
// others (presence events, messages).
func (c *rawClient) do(req map[string]any, typ string) (event, error) {
	b, _ := json.Marshal(req)
	if err := c.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return event{}, err
	}
	return c.await(typ)
}

func (c *rawClient) await(typ string) (event, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	for {
		_, data, err := c.conn.ReadMessage()
		if err != nil {
			return event{}, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			var ev event
			if json.Unmarshal([]byte(line), &ev) != nil {
				continue
			}
			if ev.Type == "error" {
				return ev, errors.New("error event: " + line)
			}
			if ev.Type == typ {
				return ev, nil
			}
		}
	}
}
