package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMessageReachesEveryMemberWithAck(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	alice := dial(t, e.url, "alice")
	bob := dial(t, e.url, "bob")
	carol := dial(t, e.url, "carol")
	// seq 0 for an empty room; users left out while presence is
	// unavailable (this rig runs none); recovered only with since.
	if j := alice.join("lobby"); j.seq() != 0 || j.Seq == nil || j.Users != nil || j.Recovered != nil {
		t.Fatalf("joined an empty room: %s, want seq 0 and no users or recovered", j.raw)
	}
	bob.join("lobby")
	carol.join("other")

	before := time.Now().UnixMilli()
	alice.send(map[string]any{"type": "message", "room": "lobby", "text": "hello 👋", "id": "m1"})
	var ack, echo event
	for ack.Type == "" || echo.Type == "" {
		ev := alice.next()
		switch ev.Type {
		case "ack":
			ack = ev
		case "message":
			echo = ev
		default:
			t.Fatalf("alice got %s", ev.raw)
		}
	}
	got := bob.expect("message")
	for _, m := range []event{echo, got} {
		if m.Room != "lobby" || m.From != "alice" || m.Text != "hello 👋" || m.id() != "m1" ||
			m.seq() == 0 || m.TS == nil || *m.TS < before-1000 {
			t.Fatalf("message event %s", m.raw)
		}
	}
	if ack.id() != "m1" || ack.seq() != echo.seq() || got.seq() != echo.seq() {
		t.Fatalf("ack %s does not match message %s", ack.raw, echo.raw)
	}

	// A post without id gets no ack and its events have no id field.
	bob.send(map[string]any{"type": "message", "room": "lobby", "text": "no id"})
	m := alice.expect("message")
	if m.ID != nil || m.From != "bob" || m.seq() <= echo.seq() {
		t.Fatalf("message without id: %s", m.raw)
	}
	if b := bob.expect("message"); b.ID != nil {
		t.Fatalf("bob's echo %s", b.raw)
	}

	// carol, in another room, got nothing: her next event is her own room's.
	seq := carol.post("other", "only here", "c1")
	if ev := carol.expect("message"); ev.Room != "other" || ev.seq() != seq {
		t.Fatalf("carol got %s", ev.raw)
	}
	// A join now reports the newest stored seq.
	dave := dial(t, e.url, "dave")
	if j := dave.join("lobby"); j.seq() != m.seq() {
		t.Fatalf("joined %s, want seq %d", j.raw, m.seq())
	}
	// leave answers left, and the room's events stop.
	bob.send(map[string]any{"type": "leave", "room": "lobby"})
	bob.expect("left")
	alice.post("lobby", "after bob left", "m2")
	bob.send(map[string]any{"type": "join", "room": "lobby"})
	if j := bob.expect("joined"); j.seq() < m.seq() {
		t.Fatalf("rejoin %s", j.raw)
	}
}

func TestRejoinAnswersJoinedAgain(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	a := dial(t, e.url, "alice")
	a.join("lobby")
	seq := a.post("lobby", "x", "1")
	a.expect("message")
	if j := a.join("lobby"); j.seq() != seq {
		t.Fatalf("second join: %s, want seq %d", j.raw, seq)
	}
}

// Seqs strictly increase for every observer while two broadcasters store
// posts from many sessions at once.
func TestSeqsIncreaseWithTwoBroadcasters(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	r1 := startBroadcaster(t, ns)
	r2 := startBroadcaster(t, ns)
	e := startEdge(t, ns, nil)

	raw := natstest.Connect(t, ns)
	natsSeqs := make(chan uint64, 1000)
	sub, err := raw.Subscribe(subject.RoomMsg("race"), func(m *nats.Msg) {
		s, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		natsSeqs <- s
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := raw.Flush(); err != nil {
		t.Fatal(err)
	}

	observer := dial(t, e.url, "observer")
	observer.join("race")
	const posters, each = 4, 50
	clients := make([]*wsClient, posters)
	for i := range clients {
		clients[i] = dial(t, e.url, fmt.Sprintf("poster%d", i))
		clients[i].join("race")
	}
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() {
			for j := range each {
				msg := fmt.Sprintf(`{"type":"message","room":"race","text":"%d-%d","id":"%d-%d"}`, i, j, i, j)
				if err := c.conn.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Errorf("poster %d: %v", i, err) // not Fatal: this is not the test's goroutine
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	var last uint64
	next := map[string]int{} // per poster, the next j expected: a session's posts keep their order
	for range posters * each {
		m := observer.expect("message")
		if m.seq() <= last {
			t.Fatalf("seq %d after %d", m.seq(), last)
		}
		last = m.seq()
		var i, j int
		fmt.Sscanf(m.Text, "%d-%d", &i, &j)
		if want := next[m.From]; j != want {
			t.Fatalf("%s's post %d arrived when %d was expected", m.From, j, want)
		}
		next[m.From] = j + 1
	}
	last = 0
	for range posters * each {
		select {
		case s := <-natsSeqs:
			if s <= last {
				t.Fatalf("NATS observer: seq %d after %d", s, last)
			}
			last = s
		case <-time.After(wait):
			t.Fatal("NATS observer missed messages")
		}
	}
	// A broadcaster counts a store once its ack is back, which may be
	// after the stream has republished the message.
	var s1, s2 float64
	servicetest.Poll(wait, func() bool {
		s1, s2 = counter(t, r1, "natter_broadcaster_messages_stored_total"), counter(t, r2, "natter_broadcaster_messages_stored_total")
		return s1+s2 >= posters*each
	})
	if s1+s2 != posters*each || s1 == 0 || s2 == 0 {
		t.Fatalf("broadcasters stored %v and %v, want both busy and %d in all", s1, s2, posters*each)
	}
}

// An edge subscribes only to the rooms it has members in: another room's
// traffic never reaches it.
func TestEdgeWithoutMembersReceivesNothing(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e1 := startEdge(t, ns, nil)
	e2 := startEdge(t, ns, nil)

	a := dial(t, e1.url, "alice")
	a.join("busy")
	b := dial(t, e2.url, "bob")
	b.join("quiet")
	if e1.Subscriptions() != 1 || e2.Subscriptions() != 1 {
		t.Fatalf("subscriptions %d and %d, want 1 each", e1.Subscriptions(), e2.Subscriptions())
	}
	if err := e2.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	before := e2.nc.Stats().InMsgs
	for i := range 20 {
		a.post("busy", "traffic", strconv.Itoa(i))
	}
	for range 20 {
		a.expect("message")
	}
	if err := e2.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := e2.nc.Stats().InMsgs - before; got != 0 {
		t.Fatalf("edge 2 received %d messages of a room it has no member in", got)
	}
	// The last leave drops the subscription: the room's traffic stops
	// reaching the edge. The first join takes it again.
	b.send(map[string]any{"type": "leave", "room": "quiet"})
	b.expect("left")
	if n := e2.Subscriptions(); n != 0 {
		t.Fatalf("edge 2 holds %d subscriptions after its last member left", n)
	}
	if err := e2.nc.Flush(); err != nil { // the UNSUB has reached the server
		t.Fatal(err)
	}
	a.join("quiet")
	before = e2.nc.Stats().InMsgs
	a.post("quiet", "nobody on edge 2 is here", "q")
	a.expect("message")
	if err := e2.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := e2.nc.Stats().InMsgs - before; got != 0 {
		t.Fatalf("edge 2 received %d messages of a room its last member left", got)
	}
	b.join("busy")
	if n := e2.Subscriptions(); n != 1 {
		t.Fatalf("edge 2 holds %d subscriptions, want 1", n)
	}
	seq := a.post("busy", "now both", "x")
	if m := b.expect("message"); m.seq() != seq {
		t.Fatalf("bob got %s", m.raw)
	}
	if v := counter(t, e2.reg, "natter_edge_room_subscriptions"); v != 1 {
		t.Fatalf("room subscription gauge %v", v)
	}
	// A client that goes away takes its rooms with it.
	b.close()
	servicetest.WaitFor(t, wait, "edge 2 drops its room after bob left", func() bool { return e2.Subscriptions() == 0 })
}

// A repeated client id within the window is stored once; its ack carries
// the original seq. The key is user, room and id.
func TestRetriedIDStoredOnce(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	nc := natstest.Connect(t, ns)
	a := dial(t, e.url, "alice")
	b := dial(t, e.url, "bob")
	a.join("lobby")
	a.join("other")
	b.join("lobby")

	first := a.post("lobby", "once", "retry-1")
	again := a.post("lobby", "different text, same id", "retry-1")
	if again != first {
		t.Fatalf("retry acked with seq %d, want the original %d", again, first)
	}
	if n := streamMsgs(t, nc); n != 1 {
		t.Fatalf("%d messages stored, want 1", n)
	}
	// The same id from another user, or in another room, is another post.
	bobs := b.post("lobby", "bob's", "retry-1")
	elsewhere := a.post("other", "other room", "retry-1")
	if bobs == first || elsewhere == first || bobs == elsewhere {
		t.Fatalf("seqs %d %d %d should differ", first, bobs, elsewhere)
	}
	if n := streamMsgs(t, nc); n != 3 {
		t.Fatalf("%d messages stored, want 3", n)
	}
	// bob saw alice's message once, then his own.
	if m := b.expect("message"); m.seq() != first || m.Text != "once" {
		t.Fatalf("bob got %s", m.raw)
	}
	if m := b.expect("message"); m.seq() != bobs {
		t.Fatalf("bob got %s, want his own post", m.raw)
	}
}

// A bot posting on NATS is handled like a client; an invalid bot post is
// refused and stored nowhere.
func TestBotPostReachesRoom(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	bot := natstest.Connect(t, ns)
	a := dial(t, e.url, "alice")
	a.join("lobby")

	post := func(subj string, v any) {
		t.Helper()
		data, _ := json.Marshal(v)
		if err := bot.Publish(subj, data); err != nil {
			t.Fatal(err)
		}
	}
	post(subject.InRoom("lobby"), map[string]string{"from": "bad name", "text": "refused"})
	post(subject.InRoom("lobby"), map[string]string{"from": "bot", "text": "   "})
	post(subject.InRoom("lobby"), map[string]string{"room": "elsewhere", "from": "bot", "text": "mismatch"})
	post(subject.InRoom("lobby")+".x", map[string]string{"from": "bot", "text": "bad subject"})
	post(subject.InRoom("lobby"), map[string]string{"from": "bot", "text": "beep", "id": "b1"})
	m := a.expect("message")
	if m.From != "bot" || m.Text != "beep" || m.id() != "b1" || m.seq() == 0 {
		t.Fatalf("bot message %s", m.raw)
	}
	if n := streamMsgs(t, bot); n != 1 {
		t.Fatalf("%d stored, want only the valid bot post", n)
	}
	// A bot's request gets the broadcaster's answer, errors included.
	reply, err := bot.Request(subject.InRoom("lobby"), []byte(`{"from":"bot","text":"beep","id":"b1"}`), wait)
	if err != nil {
		t.Fatal(err)
	}
	var r proto.PostReply
	if err := json.Unmarshal(reply.Data, &r); err != nil || r.Seq != m.seq() || !r.Duplicate {
		t.Fatalf("repeated bot post: %s", reply.Data)
	}
	reply, err = bot.Request(subject.InRoom("lobby"), []byte(`{"from":"bot","text":""}`), wait)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(reply.Data, &r); err != nil || r.Code != proto.CodeBadRequest {
		t.Fatalf("blank bot post: %s", reply.Data)
	}
}
