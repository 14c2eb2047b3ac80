package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// nextWithin returns the next event, or false when none comes within d.
func (c *wsClient) nextWithin(d time.Duration) (event, bool) {
	c.t.Helper()
	if len(c.backlog) > 0 {
		ev := c.backlog[0]
		c.backlog = c.backlog[1:]
		return ev, true
	}
	select {
	case ev, ok := <-c.events:
		if !ok {
			c.t.Fatalf("%s: connection ended: %v", c.name, c.err())
		}
		return ev, true
	case <-time.After(d):
		return event{}, false
	}
}

// collect reads messages until it has every seq up to want, failing after
// wait.
func (c *wsClient) collect(got []uint64, want uint64) []uint64 {
	c.t.Helper()
	deadline := time.Now().Add(wait)
	for len(got) == 0 || got[len(got)-1] < want {
		ev, ok := c.nextWithin(time.Until(deadline))
		if !ok {
			c.t.Fatalf("%s: has up to %v, want up to %d", c.name, last(got), want)
		}
		if ev.Type == "message" {
			got = append(got, ev.seq())
		}
	}
	return got
}

func last(s []uint64) uint64 {
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}

// botPoster posts to room on NATS at a steady rate until stop, as a bot
// would (the broadcaster stores each), and returns how many it posted.
func botPoster(t *testing.T, nc interface {
	Publish(string, []byte) error
}, room string, every time.Duration, stop <-chan struct{}) func() int {
	var n int
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				n++
				if err := nc.Publish(subject.InRoom(room), proto.Encode(proto.Post{From: "bot", Text: fmt.Sprintf("tick %d", n), ID: fmt.Sprint(n)})); err != nil {
					t.Error(err)
					return
				}
			}
		}
	})
	return func() int { wg.Wait(); return n }
}

// A client that keeps disconnecting and rejoining with since, while
// messages keep coming, receives every stored message exactly once and in
// seq order: the same list as an observer that never disconnected.
func TestRejoinLoopLosesNothing(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	nc := natstest.Connect(t, ns)
	observer := dial(t, e.url, "observer")
	start := *observer.join("lobby").Seq

	stop := make(chan struct{})
	posted := botPoster(t, nc, "lobby", 2*time.Millisecond, stop)

	var got []uint64
	since := start
	for i := range 25 {
		c := dial(t, e.url, "flaky")
		replayed, j := c.joinSince("lobby", since)
		if !*j.Recovered {
			t.Fatalf("round %d: not recovered: %s", i, j.raw)
		}
		got = append(got, seqsOf(replayed)...)
		// Live for a moment, then gone without a word.
		deadline := time.Now().Add(time.Duration(5+i%4*10) * time.Millisecond)
		for {
			ev, ok := c.nextWithin(time.Until(deadline))
			if !ok {
				break
			}
			if ev.Type == "message" {
				got = append(got, ev.seq())
			}
		}
		if len(got) > 0 {
			since = got[len(got)-1]
		}
		c.close()
		time.Sleep(time.Duration(i%3) * 10 * time.Millisecond) // away for a while: messages are missed
	}
	close(stop)
	n := uint64(posted())
	servicetest.WaitFor(t, wait, "every post stored", func() bool { return streamMsgs(t, nc) >= n })
	stored := roomSeqs(t, ns, "lobby", start)
	want := observer.collect(nil, stored[len(stored)-1])
	if !slices.Equal(want, stored) {
		dup, missing := diff(want, stored)
		t.Fatalf("the observer has %d messages, the stream %d; out of order or doubled %v, missing %v", len(want), len(stored), dup, missing)
	}
	c := dial(t, e.url, "flaky")
	replayed, _ := c.joinSince("lobby", since)
	got = append(got, seqsOf(replayed)...)
	if !slices.Equal(got, want) {
		dup, missing := diff(got, want)
		t.Fatalf("the reconnecting client got %d messages, the observer %d; duplicates or disorder %v, missing %v", len(got), len(want), dup, missing)
	}
	t.Logf("%d messages over 25 reconnects, none lost or doubled", len(got))
}

// roomSeqs reads every seq of room after from in the stream.
func roomSeqs(t *testing.T, ns *server.Server, room string, from uint64) []uint64 {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		msgs, more, err := store.After(ctx, js, store.Room(room), from, 500)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			out = append(out, m.Seq)
			from = m.Seq
		}
		if !more {
			return out
		}
	}
}

// A stored message that is not an event (anyone allowed to publish on
// the stream's subjects may store one) is skipped, not taken for a gap:
// the room goes on.
func TestBadStoredMessageSkipped(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	c := dial(t, e.url, "alice")
	c.join("lobby")
	nc := natstest.Connect(t, ns)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), subject.StoreRoom("lobby"), []byte(`[1]`)); err != nil {
		t.Fatal(err)
	}
	seq := c.post("lobby", "after the bad one", "a")
	if ev := c.expect("message"); ev.seq() != seq {
		t.Fatalf("got %s", ev.raw)
	}
	if n := counter(t, e.reg, "natter_edge_gaps_repaired_total"); n != 0 {
		t.Fatalf("%v gaps repaired for a skipped message", n)
	}
	h := c.history(map[string]any{"room": "lobby"})
	if len(h.Messages) != 1 || h.Messages[0].seq() != seq {
		t.Fatalf("history: %s", h.raw)
	}
}

// diff lists the seqs out of order or repeated in got and those of want
// missing from it.
func diff(got, want []uint64) (bad, missing []uint64) {
	seen := map[uint64]bool{}
	var prev uint64
	for _, s := range got {
		if seen[s] || s <= prev {
			bad = append(bad, s)
		}
		seen[s] = true
		prev = max(prev, s)
	}
	for _, s := range want {
		if !seen[s] {
			missing = append(missing, s)
		}
	}
	return bad, missing
}

// gappySetup is setup with an edge whose subscriptions drop messages
// under any burst: its dispatch channel holds one. The send queue is
// large, as these tests are about gaps, not slow clients.
func gappySetup(t *testing.T) (*server.Server, *testEdge) {
	t.Helper()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	return ns, startEdge(t, ns, func(c *edge.Config) {
		c.DispatchBuffer = 1
		c.Limits.SendQueue = 100000
	})
}

// An edge whose room subscription drops messages (its dispatch channel
// holds one) notices each gap from the previous seq that RePublish names
// and fills it from the stream before delivering further: its members get
// every message once, in order.
func TestLiveGapRepaired(t *testing.T) {
	t.Parallel()
	ns, e := gappySetup(t)
	c := dial(t, e.url, "alice")
	c.join("lobby")
	seqs := storeMessages(t, ns, "lobby", 3000) // a burst the dispatcher cannot keep up with
	got := c.collect(nil, seqs[len(seqs)-1])
	if !slices.Equal(got, seqs) {
		dup, missing := diff(got, seqs)
		t.Fatalf("got %d of %d; out of order or doubled %v, missing %v", len(got), len(seqs), dup, missing)
	}
	gaps := counter(t, e.reg, "natter_edge_gaps_repaired_total")
	if gaps == 0 {
		t.Fatal("no message was dropped: the test did not force a gap")
	}
	t.Logf("%v gaps filled from the stream", gaps)
}

// History survives a restart of the single binary: a client that left
// before it rejoins after it with since and gets what it missed on both
// sides of the restart.
func TestRejoinAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, stop := startMain(t, dir)
	alice := dial(t, "http://"+m.Addr(), "alice")
	alice.join("lobby")
	seen := alice.post("lobby", "before", "a1")
	alice.expect("message")
	alice.close()
	bob := dial(t, "http://"+m.Addr(), "bob")
	bob.join("lobby")
	m1 := bob.post("lobby", "while alice is away", "b1")
	bob.close()
	stop()

	m, _ = startMain(t, dir)
	bob = dial(t, "http://"+m.Addr(), "bob")
	bob.join("lobby")
	m2 := bob.post("lobby", "after the restart", "b2")
	alice = dial(t, "http://"+m.Addr(), "alice")
	replayed, j := alice.joinSince("lobby", seen)
	if !slices.Equal(seqsOf(replayed), []uint64{m1, m2}) || !*j.Recovered || *j.Seq != m2 {
		t.Fatalf("replayed %v, joined %s; want [%d %d], recovered", seqsOf(replayed), j.raw, m1, m2)
	}
}

// proxy forwards TCP connections to a NATS server; cut drops them and
// refuses new ones until restore, so a client loses its connection while
// the server goes on.
type proxy struct {
	t      *testing.T
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener // guarded by mu
	conns []net.Conn   // guarded by mu
	wg    sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	p := &proxy{t: t, target: target}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(func() {
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(s, c); _ = s.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, s); _ = c.Close() })
		}
	})
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.serve(ln)
}

// What is stored while an edge's NATS connection is away never reaches
// its room subscriptions; after the reconnect the edge reads it from the
// stream, even when no later message shows the gap.
func TestReconnectLossRepaired(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	px := newProxy(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	e := startEdgeAt(t, "nats://"+px.addr, nil)
	c := dial(t, e.url, "alice")
	c.join("lobby")
	c.post("lobby", "before", "b")
	c.expect("message")

	px.cut()
	servicetest.WaitFor(t, wait, "the edge disconnected", func() bool { return !e.nc.IsConnected() })
	seqs := storeMessages(t, ns, "lobby", 20) // stored while the edge is away
	px.restore()

	got := c.collect(nil, seqs[len(seqs)-1])
	if !slices.Equal(got, seqs) {
		dup, missing := diff(got, seqs)
		t.Fatalf("got %v; out of order or doubled %v, missing %v", got, dup, missing)
	}
}
