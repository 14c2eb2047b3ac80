package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// dm sends a dm with id and returns its ack's seq (see acked).
func (c *wsClient) dm(to, text, id string) uint64 {
	c.t.Helper()
	return c.acked(map[string]any{"type": "dm", "to": to, "text": text, "id": id}, id)
}

// expectDM reads the next event, a dm with seq from from to to.
func (c *wsClient) expectDM(from, to string, seq uint64) event {
	c.t.Helper()
	ev := c.expect("dm")
	if ev.From != from || ev.To != to || ev.seq() != seq || ev.TS == nil {
		c.t.Fatalf("%s: got %s, want the dm %d from %s to %s", c.name, ev.raw, seq, from, to)
	}
	return ev
}

// dms asks for the conversations: with -> newest seq, and their order,
// which must be the contract's: newest ts first, equal ts by name.
func (c *wsClient) dms() (map[string]uint64, []string) {
	c.t.Helper()
	c.send(map[string]any{"type": "dms"})
	ev := c.expect("dms")
	if !slices.IsSortedFunc(ev.Conversations, func(a, b conversation) int {
		return cmp.Or(cmp.Compare(b.TS, a.TS), strings.Compare(a.With, b.With))
	}) {
		c.t.Fatalf("%s: dms not newest first, then by name: %s", c.name, ev.raw)
	}
	newest := make(map[string]uint64)
	var order []string
	for _, cv := range ev.Conversations {
		newest[cv.With] = cv.Seq
		order = append(order, cv.With)
	}
	return newest, order
}

// A dm to a user who never connected is stored: the sender gets its ack
// and its own copy, and the recipient finds it later with dms and
// history, paging like a room. A note to oneself arrives once.
func TestDMToOfflineUser(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice := dial(t, e.url, "alice")
	var seqs []uint64
	for i := range 5 {
		seq := alice.dm("bob", fmt.Sprintf("are you there? %d", i), fmt.Sprint("a", i))
		alice.expectDM("alice", "bob", seq)
		seqs = append(seqs, seq)
	}
	if !slices.IsSorted(seqs) {
		t.Fatalf("seqs %v not increasing", seqs)
	}
	note := alice.dm("alice", "remember the milk", "n1")
	alice.expectDM("alice", "alice", note)
	// Without an id: no ack, and the dm leaves the id field out.
	alice.send(map[string]any{"type": "dm", "to": "alice", "text": "no id"})
	if ev := alice.expect("dm"); ev.Text != "no id" || strings.Contains(ev.raw, `"id"`) {
		t.Fatalf("a dm without id: %s", ev.raw)
	} else {
		note = ev.seq() // the newest of alice's notes
	}

	bob := dial(t, e.url, "bob")
	newest, order := bob.dms()
	if len(newest) != 1 || newest["alice"] != seqs[4] {
		t.Fatalf("bob's conversations: %v, want alice at %d", newest, seqs[4])
	}
	h := bob.history(map[string]any{"dm": "alice", "limit": 3})
	if h.DM != "alice" || !slices.Equal(seqsOf(h.Messages), seqs[2:]) || !*h.More {
		t.Fatalf("newest 3: %s", h.raw)
	}
	if m := h.Messages[2]; m.Type != "dm" || m.From != "alice" || m.To != "bob" || m.Text != "are you there? 4" || m.id() != "a4" {
		t.Fatalf("stored dm: %s", m.raw)
	}
	h = bob.history(map[string]any{"dm": "alice", "before": seqs[2]})
	if !slices.Equal(seqsOf(h.Messages), seqs[:2]) || *h.More {
		t.Fatalf("older: %s", h.raw)
	}
	h = bob.history(map[string]any{"dm": "alice", "after": seqs[0], "limit": 2})
	if !slices.Equal(seqsOf(h.Messages), seqs[1:3]) || !*h.More {
		t.Fatalf("after the first: %s", h.raw)
	}
	newest, order = alice.dms()
	if !slices.Equal(order, []string{"alice", "bob"}) || newest["alice"] != note {
		t.Fatalf("alice's conversations: %v in order %v; want the note first", newest, order)
	}
	// A retried id is not stored again: the ack carries the first seq.
	if again := alice.dm("bob", "are you there? (retry)", "a4"); again != seqs[4] {
		t.Fatalf("retried id: seq %d, want %d", again, seqs[4])
	}
	// Bad input gets its error code and keeps the connection.
	for _, tc := range []struct{ req, code string }{
		{`{"type":"dm","to":"b ob","text":"x"}`, "invalid_user"},
		{`{"type":"dm","to":"bob","text":"   "}`, "bad_request"},
		{`{"type":"dm","text":"x"}`, "bad_request"},
		{`{"type":"history","dm":"bob","room":"lobby"}`, "bad_request"},
		{`{"type":"history","dm":"-*-"}`, "invalid_user"},
	} {
		alice.sendRaw(tc.req)
		if ev := alice.expect("error"); ev.Code != tc.code {
			t.Errorf("%s: %s, want %s", tc.req, ev.raw, tc.code)
		}
	}
	alice.send(map[string]any{"type": "dm", "to": "bob", "text": strings.Repeat("é", 4001)})
	if ev := alice.expect("error"); ev.Code != "too_long" {
		t.Errorf("a dm of 4,001 characters: %s", ev.raw)
	}
}

// A dm reaches every session of both parties, on two edges of one NATS,
// once each; the seqs of a conversation increase for both parties alike.
func TestDMReachesEverySession(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e1, e2 := startEdge(t, ns, nil), startEdge(t, ns, nil)
	alice := dial(t, e1.url, "alice") // sends
	aliceOthers := []*wsClient{dial(t, e1.url, "alice"), dial(t, e2.url, "alice")}
	bobs := []*wsClient{dial(t, e1.url, "bob"), dial(t, e2.url, "bob"), dial(t, e2.url, "bob")}
	carol := dial(t, e2.url, "carol") // not a party: sees nothing

	var want []uint64
	for i := range 3 {
		want = append(want, alice.dm("bob", fmt.Sprint("hi ", i), fmt.Sprint("a", i)))
		want = append(want, bobs[i].dm("alice", fmt.Sprint("hello ", i), fmt.Sprint("b", i)))
	}
	if !slices.IsSorted(want) {
		t.Fatalf("acks %v not increasing", want)
	}
	every := append(append([]*wsClient{alice}, aliceOthers...), bobs...)
	for _, c := range every {
		var got []uint64
		for range want {
			ev := c.expect("dm")
			if (ev.From != "alice" || ev.To != "bob") && (ev.From != "bob" || ev.To != "alice") {
				t.Fatalf("%s: %s", c.name, ev.raw)
			}
			got = append(got, ev.seq())
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s (%s) got %v, want %v", c.name, c.session, got, want)
		}
	}
	// Nothing doubled, nothing to carol: the next event of each is the
	// answer to dms.
	for _, c := range append(every, carol) {
		newest, _ := c.dms()
		if c != carol && newest[map[string]string{"alice": "bob", "bob": "alice"}[c.name]] != want[len(want)-1] {
			t.Fatalf("%s: conversations %v", c.name, newest)
		}
	}
	// The edges drop a user's subscriptions with its last session.
	if n := counter(t, e2.reg, "natter_edge_user_subscriptions"); n != 3 {
		t.Fatalf("edge 2 subscribes to the dms of %v users, want 3", n)
	}
	for _, c := range bobs[1:] {
		c.close()
	}
	servicetest.WaitFor(t, wait, "edge 2 drops bob's dms", func() bool { return counter(t, e2.reg, "natter_edge_user_subscriptions") == 2 })
}

// A client that was away recovers every dm it missed, in a conversation
// it had and in a new one, with dms and history after.
func TestDMRecoveryAfterReconnect(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice, bob, carol := dial(t, e.url, "alice"), dial(t, e.url, "bob"), dial(t, e.url, "carol")
	first := alice.dm("bob", "before", "a0")
	bob.expectDM("alice", "bob", first)
	seen := map[string]uint64{"alice": first} // what bob's client knows
	bob.close()

	missed := map[string][]uint64{}
	for i := range 3 {
		missed["alice"] = append(missed["alice"], alice.dm("bob", fmt.Sprint("while away ", i), fmt.Sprint("a", i+1)))
		missed["carol"] = append(missed["carol"], carol.dm("bob", fmt.Sprint("new ", i), fmt.Sprint("c", i)))
	}

	bob = dial(t, e.url, "bob")
	newest, order := bob.dms()
	// dms checks the order; carol's newest is later, or in the same
	// millisecond and after alice by name.
	if len(order) != 2 || newest["carol"] != missed["carol"][2] || newest["alice"] != missed["alice"][2] {
		t.Fatalf("conversations %v in order %v", newest, order)
	}
	for with, seq := range newest {
		if seq <= seen[with] {
			continue
		}
		h := bob.history(map[string]any{"dm": with, "after": seen[with]})
		if !slices.Equal(seqsOf(h.Messages), missed[with]) || *h.More {
			t.Fatalf("with %s after %d: %s; want %v", with, seen[with], h.raw, missed[with])
		}
	}
	// And live again.
	live := carol.dm("bob", "welcome back", "c9")
	bob.expectDM("carol", "bob", live)
}

// Dms stored while the edge's NATS connection is down reach the session
// once it is back, in the conversation it had and in a new one, as
// rooms' messages do (TestReconnectLossRepaired).
func TestDMReconnectLossRepaired(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	px := newProxy(t, strings.TrimPrefix(ns.ClientURL(), "nats://"))
	e := startEdgeAt(t, "nats://"+px.addr, nil)
	bob := dial(t, e.url, "bob")
	nc := natstest.Connect(t, ns) // the broadcaster's side, not cut
	send := func(from, text string) uint64 {
		t.Helper()
		m, err := nc.Request(subject.InDM("bob"), fmt.Appendf(nil, `{"from":%q,"text":%q}`, from, text), wait)
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Seq uint64 }
		if err := json.Unmarshal(m.Data, &r); err != nil || r.Seq == 0 {
			t.Fatalf("dm from %s: %s", from, m.Data)
		}
		return r.Seq
	}
	bob.expectDM("carol", "bob", send("carol", "before"))

	px.cut()
	servicetest.WaitFor(t, wait, "the edge disconnected", func() bool { return !e.nc.IsConnected() })
	old, fresh := send("carol", "while away"), send("dave", "hello, new here")
	px.restore()

	got := map[string]uint64{}
	for range 2 {
		ev := bob.expect("dm")
		got[ev.From] = ev.seq()
	}
	if got["carol"] != old || got["dave"] != fresh {
		t.Fatalf("after the outage bob got %v, want carol's %d and dave's %d", got, old, fresh)
	}
}

// Dms missed by the live path are filled from the stream: with a
// dispatch channel of one, a burst of dms overruns the edge's
// subscription, and the recipient still gets every one, in order, once.
func TestDMLiveGapRepaired(t *testing.T) {
	t.Parallel()
	ns, e := gappySetup(t)
	bob := dial(t, e.url, "bob")
	// A first dm starts bob's view of the conversation.
	nc := natstest.Connect(t, ns)
	post := func(i int) uint64 {
		t.Helper()
		m, err := nc.Request(subject.InDM("bob"), fmt.Appendf(nil, `{"from":"bot","text":"n%d","id":"%d"}`, i, i), wait)
		if err != nil {
			t.Fatal(err)
		}
		var r struct{ Seq uint64 }
		if err := json.Unmarshal(m.Data, &r); err != nil || r.Seq == 0 {
			t.Fatalf("post %d: %s", i, m.Data)
		}
		return r.Seq
	}
	firstSeq := post(0)
	bob.expectDM("bot", "bob", firstSeq)
	// A burst, published without waiting for each store.
	const n = 2000
	for i := 1; i <= n; i++ {
		if err := nc.Publish(subject.InDM("bob"), fmt.Appendf(nil, `{"from":"bot","text":"n%d","id":"%d"}`, i, i)); err != nil {
			t.Fatal(err)
		}
	}
	lastSeq := post(n + 1)
	var got []uint64
	deadline := time.Now().Add(wait)
	for len(got) == 0 || got[len(got)-1] < lastSeq {
		ev, ok := bob.nextWithin(time.Until(deadline))
		if !ok {
			t.Fatalf("bob has %d dms up to %d, want up to %d", len(got), last(got), lastSeq)
		}
		if ev.Type == "dm" {
			got = append(got, ev.seq())
		}
	}
	// Every seq between the first and the last is one of the burst (the
	// dm stream holds nothing else), so n+1 increasing seqs are all.
	if len(got) != n+1 || got[0] <= firstSeq {
		t.Fatalf("got %d dms from %d, want %d after %d", len(got), got[0], n+1, firstSeq)
	}
	for i := 1; i < len(got); i++ {
		if got[i] <= got[i-1] {
			t.Fatalf("dm %d after %d: out of order or doubled", got[i], got[i-1])
		}
	}
	if gaps := counter(t, e.reg, "natter_edge_gaps_repaired_total"); gaps == 0 {
		t.Fatal("no dm was dropped: the test did not force a gap")
	}
}

// typing reaches the room's other members, not the sender's sessions; it
// is throttled to one a second per session and room, and never stored.
func TestTyping(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	alice, alice2, bob, carol := dial(t, e.url, "alice"), dial(t, e.url, "alice"), dial(t, e.url, "bob"), dial(t, e.url, "carol")
	for _, c := range []*wsClient{alice, alice2, bob, carol} {
		c.join("lobby")
	}
	nc := natstest.Connect(t, ns)
	stored := streamMsgs(t, nc)
	first := time.Now()
	for range 5 {
		alice.send(map[string]any{"type": "typing", "room": "lobby"})
	}
	seq := alice.post("lobby", "done typing", "m1")
	for _, c := range []*wsClient{bob, carol} {
		if ev := c.expect("typing"); ev.Room != "lobby" || ev.User != "alice" {
			t.Fatalf("%s: %s", c.name, ev.raw)
		}
		// One typing only: the message comes next.
		if ev := c.expect("message"); ev.seq() != seq {
			t.Fatalf("%s: %s, want the message %d", c.name, ev.raw, seq)
		}
	}
	for _, c := range []*wsClient{alice, alice2} {
		if ev := c.expect("message"); ev.seq() != seq {
			t.Fatalf("%s: %s; the sender's sessions get no typing", c.name, ev.raw)
		}
	}
	if n := streamMsgs(t, nc); n != stored+1 {
		t.Fatalf("the stream holds %d messages, want %d: typing is never stored", n, stored+1)
	}
	// The next one goes out a second after the first, at the earliest.
	stop := make(chan struct{})
	var typer sync.WaitGroup
	defer typer.Wait()
	defer close(stop)
	typer.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = alice.conn.WriteMessage(1, []byte(`{"type":"typing","room":"lobby"}`))
			}
		}
	})
	bob.expect("typing")
	if gap := time.Since(first); gap < time.Second {
		t.Fatalf("a second typing reached bob %v after the first was sent; want a second at least", gap)
	}
}

// typing is throttled per session and room, not per session: signals for
// two rooms sent back to back both go out, each to its own room's other
// members only, none to the sender's sessions. A room not joined is
// refused with not_joined, and its members get nothing.
func TestTypingPerRoom(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice, alice2 := dial(t, e.url, "alice"), dial(t, e.url, "alice")
	bob, carol, dave := dial(t, e.url, "bob"), dial(t, e.url, "carol"), dial(t, e.url, "dave")
	// erin is in the room alice has not joined: a signal let through
	// there would reach her.
	erin := dial(t, e.url, "erin")
	for _, m := range []struct {
		c     *wsClient
		rooms []string
	}{
		{alice, []string{"r1", "r2"}},
		{alice2, []string{"r1", "r2"}},
		{bob, []string{"r1", "r2"}},
		{carol, []string{"r1"}},
		{dave, []string{"r2"}},
		{erin, []string{"r3"}},
	} {
		for _, room := range m.rooms {
			m.c.join(room)
		}
	}
	// expectTyping reads the next len(rooms) events of c: a typing from
	// alice for each of rooms, in any order.
	expectTyping := func(c *wsClient, rooms ...string) {
		t.Helper()
		var got []string
		for range rooms {
			ev := c.expect("typing")
			if ev.User != "alice" || !slices.Contains(rooms, ev.Room) || slices.Contains(got, ev.Room) {
				t.Fatalf("%s: %s after typing for %v; want one typing from alice for each of %v", c.name, ev.raw, got, rooms)
			}
			got = append(got, ev.Room)
		}
	}
	// expectMessages reads the next len(seqs) events of c: the messages
	// with seqs, in any order (they are in different rooms). A message
	// coming next shows that no further typing came before it.
	expectMessages := func(c *wsClient, seqs ...uint64) {
		t.Helper()
		var got []uint64
		for range seqs {
			ev := c.expect("message")
			if !slices.Contains(seqs, ev.seq()) || slices.Contains(got, ev.seq()) {
				t.Fatalf("%s: %s after messages %v; want the messages %v", c.name, ev.raw, got, seqs)
			}
			got = append(got, ev.seq())
		}
	}

	alice.send(map[string]any{"type": "typing", "room": "r1"})
	alice.send(map[string]any{"type": "typing", "room": "r2"})
	m1 := alice.post("r1", "done typing in r1", "m1")
	m2 := alice.post("r2", "done typing in r2", "m2")
	expectTyping(bob, "r1", "r2")
	expectMessages(bob, m1, m2)
	expectTyping(carol, "r1")
	expectMessages(carol, m1)
	expectTyping(dave, "r2")
	expectMessages(dave, m2)
	for _, c := range []*wsClient{alice, alice2} {
		expectMessages(c, m1, m2) // the sender's sessions get no typing
	}

	alice.send(map[string]any{"type": "typing", "room": "r3", "id": "t3"})
	if ev := alice.expect("error"); ev.Code != "not_joined" || ev.id() != "t3" {
		t.Fatalf("typing in a room not joined: %s, want not_joined for t3", ev.raw)
	}
	m3 := erin.post("r3", "anyone typing?", "m3")
	expectMessages(erin, m3)
	m4 := alice.post("r1", "after r3", "m4")
	m5 := alice.post("r2", "after r3", "m5")
	for _, c := range []*wsClient{alice, alice2, bob} {
		expectMessages(c, m4, m5)
	}
	expectMessages(carol, m4)
	expectMessages(dave, m5)
}

// A dropped dm that no later dm follows, in a conversation the session
// has had nothing of yet, is found all the same: with a dispatch channel
// of one, a burst of first dms from 300 senders overruns the edge's
// subscription, and the recipient still gets every one, once.
func TestDMDroppedFirstDMsFound(t *testing.T) {
	t.Parallel()
	ns, e := gappySetup(t)
	bob := dial(t, e.url, "bob")
	nc := natstest.Connect(t, ns)
	const n = 300
	replies := make(chan *nats.Msg, n)
	inbox := nats.NewInbox()
	sub, err := nc.ChanSubscribe(inbox, replies)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	for i := range n {
		if err := nc.PublishRequest(subject.InDM("bob"), inbox, fmt.Appendf(nil, `{"from":"bot%d","text":"first"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	want := make(map[uint64]bool)
	for range n {
		select {
		case m := <-replies:
			var r struct{ Seq uint64 }
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Seq == 0 {
				t.Fatalf("store: %s", m.Data)
			}
			want[r.Seq] = true
		case <-time.After(wait):
			t.Fatalf("%d of %d stored", len(want), n)
		}
	}
	got := make(map[uint64]bool)
	deadline := time.Now().Add(wait)
	for len(got) < n {
		ev, ok := bob.nextWithin(time.Until(deadline))
		if !ok {
			t.Fatalf("bob has %d of %d first dms", len(got), n)
		}
		if ev.Type != "dm" {
			continue
		}
		if got[ev.seq()] || !want[ev.seq()] {
			t.Fatalf("dm %d doubled or unknown", ev.seq())
		}
		got[ev.seq()] = true
	}
	if gaps := counter(t, e.reg, "natter_edge_gaps_repaired_total"); gaps == 0 {
		t.Fatal("no dm was dropped: the test did not force a gap")
	}
}
