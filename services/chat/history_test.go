package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// storeMessages stores n messages in room straight into the stream, as
// the broadcaster would, and returns their seqs.
func storeMessages(t *testing.T, ns *server.Server, room string, n int) []uint64 {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	seqs := make([]uint64, 0, n)
	var acks []jetstream.PubAckFuture
	collect := func() {
		for _, f := range acks {
			select {
			case ack := <-f.Ok():
				seqs = append(seqs, ack.Sequence)
			case err := <-f.Err():
				t.Fatal(err)
			case <-time.After(wait):
				t.Fatal("store not acknowledged")
			}
		}
		acks = acks[:0]
	}
	for i := range n {
		f, err := js.PublishAsync(subject.StoreRoom(room), proto.Encode(proto.Message{
			Type: proto.TypeMessage, Room: room, From: "filler", Text: fmt.Sprintf("m%d", i), TS: time.Now().UnixMilli()}))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
		if len(acks) == 1000 { // below the client's limit of pending publishes
			collect()
		}
	}
	collect()
	return seqs
}

// history sends a history request and returns the answer.
func (c *wsClient) history(req map[string]any) event {
	c.t.Helper()
	req["type"] = "history"
	c.send(req)
	return c.expect("history")
}

// joinSince joins with since and returns the replayed messages and joined.
func (c *wsClient) joinSince(room string, since uint64) ([]event, event) {
	c.t.Helper()
	c.send(map[string]any{"type": "join", "room": room, "since": since})
	var replayed []event
	for {
		ev := c.next()
		switch ev.Type {
		case "message":
			replayed = append(replayed, ev)
		case "joined":
			if ev.Room != room || ev.Recovered == nil || ev.Seq == nil {
				c.t.Fatalf("%s: joined %s", c.name, ev.raw)
			}
			return replayed, ev
		default:
			c.t.Fatalf("%s: got %s while joining with since", c.name, ev.raw)
		}
	}
}

func seqsOf(evs []event) []uint64 {
	out := make([]uint64, len(evs))
	for i, ev := range evs {
		out[i] = ev.seq()
	}
	return out
}

// History pages back to the beginning of a room and forward with after,
// oldest first, with more telling whether to go on; limits are clamped;
// joining is not needed; an empty room answers an empty list.
func TestHistoryPaging(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	seqs := storeMessages(t, ns, "lobby", 230)
	storeMessages(t, ns, "other", 20) // interleaved rooms do not mix
	c := dial(t, e.url, "alice")

	var back []uint64
	before := uint64(0)
	for pages := 0; ; pages++ {
		req := map[string]any{"room": "lobby"}
		if before > 0 {
			req["before"] = before
		}
		h := c.history(req)
		if h.Room != "lobby" || h.More == nil {
			t.Fatalf("history: %s", h.raw)
		}
		page := seqsOf(h.Messages)
		if len(page) == 0 || len(page) > 50 || !slices.IsSorted(page) {
			t.Fatalf("page %d: %v", pages, page)
		}
		back = append(page, back...)
		before = page[0]
		if !*h.More {
			break
		}
	}
	if !slices.Equal(back, seqs) {
		t.Fatalf("paging back gave %d messages, want all %d in order", len(back), len(seqs))
	}

	var fwd []uint64
	after := uint64(0)
	for {
		h := c.history(map[string]any{"room": "lobby", "after": after, "limit": 1000}) // clamped to 200
		page := seqsOf(h.Messages)
		if len(page) > 200 {
			t.Fatalf("limit 1000 gave %d messages, want at most 200", len(page))
		}
		fwd = append(fwd, page...)
		if !*h.More {
			break
		}
		after = page[len(page)-1]
	}
	if !slices.Equal(fwd, seqs) {
		t.Fatalf("paging forward gave %d messages, want all %d in order", len(fwd), len(seqs))
	}
	for _, m := range c.history(map[string]any{"room": "lobby", "limit": 3}).Messages {
		if m.Type != "message" || m.Room != "lobby" || m.From != "filler" || m.TS == nil || m.Seq == nil {
			t.Fatalf("history message %s", m.raw)
		}
	}
	if h := c.history(map[string]any{"room": "lobby", "limit": 0}); len(h.Messages) != 1 {
		t.Fatalf("limit 0 gave %d messages, want 1", len(h.Messages))
	}
	if h := c.history(map[string]any{"room": "empty"}); !strings.Contains(h.raw, `"messages":[]`) || *h.More {
		t.Fatalf("empty room: %s", h.raw)
	}
	if h := c.history(map[string]any{"room": "lobby", "before": seqs[0]}); len(h.Messages) != 0 || *h.More {
		t.Fatalf("before the first: %s", h.raw)
	}
	if h := c.history(map[string]any{"room": "lobby", "before": 0}); len(h.Messages) != 0 || *h.More {
		t.Fatalf("before 0: %s", h.raw)
	}
	// A conversation without dms is empty, like a room.
	if h := c.history(map[string]any{"dm": "bob"}); h.DM != "bob" || !strings.Contains(h.raw, `"messages":[]`) || *h.More {
		t.Fatalf("history of a conversation without dms: %s", h.raw)
	}
}

// A client that rejoins with since gets exactly what it missed, then
// joined with recovered; since 0 asks for everything; an empty room
// recovers with nothing to replay.
func TestJoinSinceReplaysWhatWasMissed(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice := dial(t, e.url, "alice")
	alice.join("lobby")
	first := alice.post("lobby", "before the break", "b1")
	alice.expect("message")
	alice.close()

	bob := dial(t, e.url, "bob")
	bob.join("lobby")
	var missed []uint64
	for i := range 5 {
		missed = append(missed, bob.post("lobby", fmt.Sprintf("while away %d", i), fmt.Sprintf("w%d", i)))
	}

	alice = dial(t, e.url, "alice")
	replayed, j := alice.joinSince("lobby", first)
	if !slices.Equal(seqsOf(replayed), missed) || !*j.Recovered || *j.Seq != missed[4] {
		t.Fatalf("replayed %v, joined %s; want %v, recovered, seq %d", seqsOf(replayed), j.raw, missed, missed[4])
	}
	if replayed[0].Text != "while away 0" || replayed[0].From != "bob" || replayed[0].id() != "w0" {
		t.Fatalf("replayed message %s", replayed[0].raw)
	}
	// bob kept the room's subscription, and with it the room's recent
	// messages: the replay came from memory.
	if n := counterWith(t, e.reg, "natter_edge_replays_total", "from", "memory"); n != 1 {
		t.Fatalf("%v replays from memory, want 1", n)
	}
	// Live again: the next message comes once.
	seq := bob.post("lobby", "welcome back", "wb")
	if ev := alice.expect("message"); ev.seq() != seq {
		t.Fatalf("live after the replay: %s", ev.raw)
	}

	carol := dial(t, e.url, "carol")
	replayed, j = carol.joinSince("lobby", 0)
	if want := append([]uint64{first}, append(missed, seq)...); !slices.Equal(seqsOf(replayed), want) || !*j.Recovered {
		t.Fatalf("since 0: replayed %v, joined %s; want %v, recovered", seqsOf(replayed), j.raw, want)
	}
	// The room's first message came before bob's subscription: from the
	// stream.
	if n := counterWith(t, e.reg, "natter_edge_replays_total", "from", "stream"); n != 1 {
		t.Fatalf("%v replays from the stream, want 1", n)
	}
	// Joining a room already joined, with since: nothing is replayed (it
	// is live on this connection); recovered only for the newest seq sent.
	replayed, j = carol.joinSince("lobby", seq)
	if len(replayed) != 0 || !*j.Recovered || *j.Seq != seq {
		t.Fatalf("rejoin with the newest seq: replayed %d, joined %s", len(replayed), j.raw)
	}
	replayed, j = carol.joinSince("lobby", first)
	if len(replayed) != 0 || *j.Recovered {
		t.Fatalf("rejoin with an older seq: replayed %d, joined %s", len(replayed), j.raw)
	}
	replayed, j = carol.joinSince("empty", 0)
	if len(replayed) != 0 || !*j.Recovered || *j.Seq != 0 {
		t.Fatalf("empty room: replayed %d, joined %s", len(replayed), j.raw)
	}
	// A since beyond the room's newest (the store was reset): no replay,
	// not recovered.
	dave := dial(t, e.url, "dave")
	replayed, j = dave.joinSince("lobby", seq+1000)
	if len(replayed) != 0 || *j.Recovered {
		t.Fatalf("since in the future: replayed %d, joined %s", len(replayed), j.raw)
	}
}

// A replay the edge could take from the room's recent messages, but
// after since retention dropped some of them: the client gets what is
// stored, not recovered, as from the stream; within what is retained,
// the recent messages serve.
func TestJoinSinceFromMemoryKeepsToRetention(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcasterWith(t, ns, config.Retention{MaxMsgs: 5, MaxAge: time.Hour, MaxBytes: 1 << 30})
	e := startEdge(t, ns, nil)
	bob := dial(t, e.url, "bob")
	bob.join("lobby")
	alice := dial(t, e.url, "alice")
	alice.join("lobby")
	seen := alice.post("lobby", "before the break", "b")
	alice.expect("message")
	bob.expect("message")
	alice.close()
	var seqs []uint64
	for i := range 10 {
		seqs = append(seqs, bob.post("lobby", fmt.Sprintf("while away %d", i), fmt.Sprintf("w%d", i)))
		bob.expect("message")
	}

	replayed, j := dial(t, e.url, "alice").joinSince("lobby", seen)
	if !slices.Equal(seqsOf(replayed), seqs[5:]) || *j.Recovered {
		t.Fatalf("replayed %v, joined %s; want the 5 retained %v, not recovered", seqsOf(replayed), j.raw, seqs[5:])
	}
	if n := counterWith(t, e.reg, "natter_edge_replays_total", "from", "stream"); n != 1 {
		t.Fatalf("%v replays from the stream, want 1", n)
	}
	replayed, j = dial(t, e.url, "carol").joinSince("lobby", seqs[6])
	if !slices.Equal(seqsOf(replayed), seqs[7:]) || !*j.Recovered {
		t.Fatalf("since within the retention: replayed %v, joined %s; want %v, recovered", seqsOf(replayed), j.raw, seqs[7:])
	}
	if n := counterWith(t, e.reg, "natter_edge_replays_total", "from", "memory"); n != 1 {
		t.Fatalf("%v replays from memory, want 1", n)
	}
}

// A client that missed more than the cap from a busy room the edge keeps
// gets the newest 1,000 from memory, not recovered, as from the stream.
func TestJoinSinceOverTheCapFromMemory(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	// bob takes the burst live: room for it in his queue.
	e := startEdge(t, ns, func(c *edge.Config) { c.Limits.SendQueue = 10000 })
	bob := dial(t, e.url, "bob")
	bob.join("lobby")
	seqs := storeMessages(t, ns, "lobby", 1500)
	bob.collect(nil, seqs[len(seqs)-1]) // every one dispatched, and kept

	replayed, j := dial(t, e.url, "alice").joinSince("lobby", seqs[0])
	if !slices.Equal(seqsOf(replayed), seqs[len(seqs)-1000:]) || *j.Recovered {
		t.Fatalf("replayed %d, joined %s; want the newest 1000, not recovered", len(replayed), j.raw)
	}
	if n := counterWith(t, e.reg, "natter_edge_replays_total", "from", "memory"); n != 1 {
		t.Fatalf("%v replays from memory, want 1", n)
	}
}

// More missed messages than the cap: the newest 1,000 are replayed, with
// back-pressure (a healthy client that missed 5,000 is not cut off, even
// with a small send queue), and recovered is false.
func TestJoinSinceOverTheCap(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Limits.SendQueue = 64 })
	seqs := storeMessages(t, ns, "lobby", 5001)

	c := dial(t, e.url, "alice")
	replayed, j := c.joinSince("lobby", seqs[0])
	if !slices.Equal(seqsOf(replayed), seqs[len(seqs)-1000:]) || *j.Recovered {
		t.Fatalf("replayed %d, joined %s; want the newest 1000, not recovered", len(replayed), j.raw)
	}
	seq := c.post("lobby", "still connected", "s")
	if ev := c.expect("message"); ev.seq() != seq {
		t.Fatalf("after the replay: %s", ev.raw)
	}
	// Exactly the cap is still whole.
	d := dial(t, e.url, "bob")
	replayed, j = d.joinSince("lobby", seqs[len(seqs)-1001])
	if len(replayed) != 1000 || *j.Recovered {
		// 1,000 stored after since plus the post above: over the cap.
		t.Fatalf("1001 missed: replayed %d, joined %s", len(replayed), j.raw)
	}
	d = dial(t, e.url, "carol")
	replayed, j = d.joinSince("lobby", seqs[len(seqs)-1000])
	if len(replayed) != 1000 || !*j.Recovered {
		t.Fatalf("1000 missed: replayed %d, joined %s", len(replayed), j.raw)
	}
}

// A since older than what the room retains: everything retained is
// replayed, and recovered is false, since messages after since are gone.
func TestJoinSinceOlderThanRetention(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcasterWith(t, ns, config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 30})
	e := startEdge(t, ns, nil)
	old := storeMessages(t, ns, "lobby", 1)[0]
	seqs := storeMessages(t, ns, "lobby", 150)

	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	if first, err := store.First(ctx, js, store.Room("lobby")); err != nil || first != seqs[50] {
		t.Fatalf("retention kept from %d (%v), want %d", first, err, seqs[50])
	}
	c := dial(t, e.url, "alice")
	replayed, j := c.joinSince("lobby", old)
	if !slices.Equal(seqsOf(replayed), seqs[50:]) || *j.Recovered {
		t.Fatalf("replayed %d, joined %s; want the 100 retained, not recovered", len(replayed), j.raw)
	}
	replayed, j = dial(t, e.url, "bob").joinSince("lobby", 0)
	if len(replayed) != 100 || *j.Recovered {
		t.Fatalf("since 0 after a drop: replayed %d, joined %s", len(replayed), j.raw)
	}
	replayed, j = dial(t, e.url, "carol").joinSince("lobby", seqs[60])
	if !slices.Equal(seqsOf(replayed), seqs[61:]) || !*j.Recovered {
		t.Fatalf("since within the retention: replayed %d, joined %s", len(replayed), j.raw)
	}
}
