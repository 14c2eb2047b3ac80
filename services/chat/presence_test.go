package main

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// Presence promises (docs/protocol.md).
const (
	vanishPromise  = 20 * time.Second // leaves of a vanished edge's users
	restartPromise = 10 * time.Second // who right after a presence restart
)

func (c *wsClient) leave(room string) {
	c.t.Helper()
	c.send(map[string]any{"type": "leave", "room": room})
	if ev := c.expect("left"); ev.Room != room {
		c.t.Fatalf("%s: left %s, want %s", c.name, ev.Room, room)
	}
}

// nextPresence returns the next presence event the client received.
func (c *wsClient) nextPresence() event {
	c.t.Helper()
	select {
	case ev := <-c.presence:
		return ev
	case <-time.After(wait):
		c.t.Fatalf("%s: no presence event within %v", c.name, wait)
	}
	return event{}
}

func soon() time.Time { return time.Now().Add(wait) }

// Two tabs of one user make one join and one leave; joined and who list
// the users present, sorted; members see the events.
func TestTwoTabsJoinOnceLeaveOnce(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	startPresence(t, ns, nil)
	w := watchPresence(t, ns)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{}, restartPromise)

	tab1 := dial(t, e.url, "alice")
	if j := tab1.join("lobby"); !slices.Equal(j.Users, []string{"alice"}) {
		t.Fatalf("joined users %q, want [alice]", j.Users)
	}
	w.expect(t, soon(), "lobby join alice")
	tab2 := dial(t, e.url, "alice")
	if j := tab2.join("lobby"); !slices.Equal(j.Users, []string{"alice"}) {
		t.Fatalf("second tab: joined users %q, want [alice]", j.Users)
	}
	bob := dial(t, e.url, "bob")
	if j := bob.join("lobby"); !slices.Equal(j.Users, []string{"alice", "bob"}) {
		t.Fatalf("bob: joined users %q, want [alice bob]", j.Users)
	}
	w.expect(t, soon(), "lobby join bob")

	tab1.close() // a closed socket counts as leaving
	tab2.leave("lobby")
	w.expect(t, soon(), "lobby leave alice")

	// Nothing else was announced: the next event is this sentinel's.
	carol := dial(t, e.url, "carol")
	carol.join("lobby")
	w.expect(t, soon(), "lobby join carol")

	// bob saw his own join, alice's one leave and carol's join.
	for _, want := range []string{"join bob", "leave alice", "join carol"} {
		ev := bob.nextPresence()
		if got := ev.Event + " " + ev.User; got != want || ev.Room != "lobby" || ev.TS == nil {
			t.Fatalf("bob got %s, want %s", ev.raw, want)
		}
	}
	bob.send(map[string]any{"type": "who", "room": "lobby"})
	if ev := bob.expect("who"); ev.Room != "lobby" || !slices.Equal(ev.Users, []string{"bob", "carol"}) {
		t.Fatalf("who: %s", ev.raw)
	}
	// who needs no join, and an empty room answers an empty list.
	bob.send(map[string]any{"type": "who", "room": "empty"})
	if ev := bob.expect("who"); !strings.Contains(ev.raw, `"users":[]`) {
		t.Fatalf("who of an empty room: %s", ev.raw)
	}
}

// Ten users on two edges joining and leaving at once end in a who list
// equal to the truth, and each one's events alternate join, leave.
func TestConcurrentJoinsAndLeavesEndInTruth(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	edges := []*testEdge{startEdge(t, ns, nil), startEdge(t, ns, nil)}
	startPresence(t, ns, nil)
	w := watchPresence(t, ns)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{}, restartPromise)

	const users, rounds = 10, 5
	var wg sync.WaitGroup
	var mu sync.Mutex
	var truth []string
	var open []*rawClient // guarded by mu; closed when the test ends
	t.Cleanup(func() {
		for _, c := range open {
			_ = c.conn.Close()
		}
	})
	for i := range users {
		wg.Go(func() {
			user := fmt.Sprintf("u%d", i)
			// Every user has two tabs, one on each edge.
			var tabs []*rawClient
			for _, e := range edges {
				c, err := dialRaw(e.url, user)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
				tabs = append(tabs, c)
			}
			for r := range rounds {
				tab := tabs[(i+r)%2]
				if _, err := tab.do(map[string]any{"type": "join", "room": "lobby"}, "joined"); err != nil {
					t.Errorf("%s: %v", user, err)
					return
				}
				if _, err := tab.do(map[string]any{"type": "leave", "room": "lobby"}, "left"); err != nil {
					t.Errorf("%s: %v", user, err)
					return
				}
			}
			for _, tab := range tabs {
				if _, err := tab.do(map[string]any{"type": "join", "room": "lobby"}, "joined"); err != nil {
					t.Errorf("%s: %v", user, err)
					return
				}
			}
			switch i % 3 {
			case 0: // stays, with both tabs
				mu.Lock()
				truth = append(truth, user)
				mu.Unlock()
			case 1: // closes both tabs
				_ = tabs[0].conn.Close()
				_ = tabs[1].conn.Close()
			case 2: // leaves on one tab, closes the other
				if _, err := tabs[0].do(map[string]any{"type": "leave", "room": "lobby"}, "left"); err != nil {
					t.Errorf("%s: %v", user, err)
				}
				_ = tabs[1].conn.Close()
			}
		})
	}
	wg.Wait()
	slices.Sort(truth)
	awaitWho(t, nc, "lobby", truth, wait)

	// Sentinel: once its join is seen, every earlier event is too.
	dial(t, edges[0].url, "zz-sentinel").join("lobby")
	last := map[string]string{}
	for {
		ev := w.next(t, soon())
		if ev.User == "zz-sentinel" {
			break
		}
		if prev := last[ev.User]; prev == ev.Event || (prev == "" && ev.Event != "join") {
			t.Fatalf("%s: %s after %q", ev.User, ev.Event, prev)
		}
		last[ev.User] = ev.Event
	}
	var present []string
	for user, ev := range last {
		if ev == "join" {
			present = append(present, user)
		}
	}
	slices.Sort(present)
	if !slices.Equal(present, truth) {
		t.Fatalf("events say %q are present, truth is %q", present, truth)
	}
}

// An edge that disappears without a word (its NATS connection gone, no
// leave sent) has the leaves of exactly its users announced within 20 s.
func TestVanishedEdgeUsersLeave(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	a, b := startEdge(t, ns, nil), startEdge(t, ns, nil)
	startPresence(t, ns, nil)
	w := watchPresence(t, ns)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{}, restartPromise)

	dial(t, a.url, "alice").join("lobby")
	bob := dial(t, a.url, "bob")
	bob.join("lobby")
	bob.join("dev")
	dial(t, b.url, "carol").join("lobby")
	dial(t, b.url, "bob").join("lobby") // bob is also on the other edge
	w.expect(t, soon(), "lobby join alice", "lobby join bob", "dev join bob", "lobby join carol")

	vanished := time.Now()
	a.nc.Close()
	w.expect(t, vanished.Add(vanishPromise), "lobby leave alice", "dev leave bob")
	t.Logf("leaves announced %v after the edge vanished", time.Since(vanished).Round(time.Millisecond))

	dial(t, b.url, "dave").join("lobby")
	w.expect(t, soon(), "lobby join dave")
	awaitWho(t, nc, "lobby", []string{"bob", "carol", "dave"}, wait)
	awaitWho(t, nc, "dev", []string{}, wait)
}

// After presence restarts (stopped, or killed), who is right within 10 s,
// and the only events are the net changes made while it was down.
func TestPresenceRestart(t *testing.T) {
	t.Parallel()
	for _, kill := range []bool{false, true} {
		name := "stopped"
		if kill {
			name = "killed"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := natstest.Start(t)
			startBroadcaster(t, ns)
			e1, e2 := startEdge(t, ns, nil), startEdge(t, ns, nil)
			p1 := startPresence(t, ns, nil)
			w := watchPresence(t, ns)
			nc := natstest.Connect(t, ns)
			awaitWho(t, nc, "lobby", []string{}, restartPromise)

			alice := dial(t, e1.url, "alice")
			alice.join("lobby")
			bob := dial(t, e2.url, "bob")
			bob.join("lobby")
			erin := dial(t, e2.url, "erin")
			erin.join("lobby")
			dial(t, e1.url, "carol").join("dev")
			// Killed right after: what a replica announced is written
			// before it is announced.
			w.expect(t, soon(), "lobby join alice", "lobby join bob", "lobby join erin", "dev join carol")

			if kill {
				p1.crash(t)
			} else {
				p1.stop(t)
			}
			// While presence is down: chat goes on, joined has no users,
			// who is unavailable, and the changes wait to be announced.
			// (A who that finds presence gone also ends the sharing of
			// the last answer between joins, 250 ms at most.)
			bob.send(map[string]any{"type": "who", "room": "lobby", "id": "w0"})
			if ev := bob.expect("error"); ev.Code != "unavailable" {
				t.Fatalf("who while presence is down: %s", ev.raw)
			}
			dave := dial(t, e2.url, "dave")
			if j := dave.join("lobby"); strings.Contains(j.raw, "users") {
				t.Fatalf("joined while presence is down: %s", j.raw)
			}
			bob.leave("lobby")
			erin.leave("lobby")
			erin.join("lobby") // back again: no net change
			alice.send(map[string]any{"type": "who", "room": "lobby", "id": "w1"})
			if ev := alice.expect("error"); ev.Code != "unavailable" || ev.id() != "w1" {
				t.Fatalf("who while presence is down: %s", ev.raw)
			}
			alice.post("lobby", "still here", "m1")

			restarted := time.Now()
			startPresence(t, ns, nil)
			awaitWho(t, nc, "lobby", []string{"alice", "dave", "erin"}, restartPromise-time.Since(restarted))
			t.Logf("who right %v after the restart", time.Since(restarted).Round(time.Millisecond))
			if got, err := who(nc, "dev"); err != nil || !slices.Equal(got, []string{"carol"}) {
				t.Fatalf("who dev = %q, %v", got, err)
			}
			dial(t, e1.url, "zz-sentinel").join("lobby")
			w.expect(t, soon(), "lobby leave bob", "lobby join dave", "lobby join zz-sentinel")
		})
	}
}

// While presence is away, chatting goes on: joins succeed without users,
// messages flow, who answers unavailable at once.
func TestPresenceOutageLeavesChatUnaffected(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	alice := dial(t, e.url, "alice")
	j := alice.join("lobby")
	if strings.Contains(j.raw, "users") {
		t.Fatalf("joined without presence: %s", j.raw)
	}
	bob := dial(t, e.url, "bob")
	bob.join("lobby")
	seq := alice.post("lobby", "hello", "m1")
	for _, c := range []*wsClient{alice, bob} {
		if ev := c.expect("message"); ev.seq() != seq || ev.Text != "hello" {
			t.Fatalf("%s got %s", c.name, ev.raw)
		}
	}
	asked := time.Now()
	bob.send(map[string]any{"type": "who", "room": "lobby"})
	if ev := bob.expect("error"); ev.Code != "unavailable" {
		t.Fatalf("who without presence: %s", ev.raw)
	}
	t.Logf("who answered unavailable in %v", time.Since(asked).Round(time.Microsecond))

	// Presence comes: it learns who is here from the edge's heartbeat.
	startPresence(t, ns, nil)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{"alice", "bob"}, restartPromise)
	if j := bob.join("lobby"); !slices.Equal(j.Users, []string{"alice", "bob"}) {
		t.Fatalf("joined again: %s", j.raw)
	}
}

// Two replicas announce every change once; when the active one is killed,
// the standby takes over without repeating anything and announces what
// changed meanwhile.
func TestTwoReplicasAnnounceOnce(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	p1, p2 := startPresence(t, ns, nil), startPresence(t, ns, nil)
	w := watchPresence(t, ns)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{}, restartPromise)

	dial(t, e.url, "alice").join("lobby")
	dial(t, e.url, "bob").join("lobby")
	w.expect(t, soon(), "lobby join alice", "lobby join bob")
	if p1.active(t) == p2.active(t) {
		t.Fatalf("active: %v and %v, want exactly one", p1.active(t), p2.active(t))
	}
	leader, standby := p1, p2
	if p2.active(t) {
		leader, standby = p2, p1
	}
	// nats micro info shows both replicas, the active one with who.
	checkPresenceInstances(t, nc, presence.RoleActive, presence.RoleStandby)
	leader.crash(t)
	dial(t, e.url, "carol").join("lobby")
	awaitWho(t, nc, "lobby", []string{"alice", "bob", "carol"}, restartPromise)
	if !standby.active(t) {
		t.Fatal("the standby answers who but is not active")
	}
	checkPresenceInstances(t, nc, presence.RoleActive)
	dial(t, e.url, "zz-sentinel").join("lobby")
	w.expect(t, soon(), "lobby join carol", "lobby join zz-sentinel")
}

// checkPresenceInstances asks the presence replicas for their info, as
// nats micro info does, and checks their roles (sorted) and that only the
// active one has the who endpoint.
func checkPresenceInstances(t *testing.T, nc *nats.Conn, roles ...string) {
	t.Helper()
	var got []string
	for _, info := range servicetest.Ask[micro.Info](t, nc, micro.InfoVerb, subject.ServicePresence, "", len(roles), wait) {
		role := info.Metadata["role"]
		got = append(got, role)
		hasWho := len(info.Endpoints) == 1 && info.Endpoints[0].Subject == subject.PresenceWhoAll
		if hasWho != (role == presence.RoleActive) {
			t.Errorf("replica %s, %s: endpoints %+v", info.Metadata["replica"], role, info.Endpoints)
		}
	}
	slices.Sort(got)
	if !slices.Equal(got, roles) {
		t.Errorf("presence replicas %v, want %v", got, roles)
	}
}

// Rooms over CHAT_PRESENCE_MAX_MEMBERS get no per-user events, counted
// after the change; who still lists everyone.
func TestLargeRoomsGetNoEvents(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	startPresence(t, ns, func(c *presence.Config) { c.MaxMembers = 2 })
	w := watchPresence(t, ns)
	nc := natstest.Connect(t, ns)
	awaitWho(t, nc, "lobby", []string{}, restartPromise)

	dial(t, e.url, "alice").join("lobby")
	dial(t, e.url, "bob").join("lobby")
	carol := dial(t, e.url, "carol")
	if j := carol.join("lobby"); !slices.Equal(j.Users, []string{"alice", "bob", "carol"}) {
		t.Fatalf("joined: %s", j.raw)
	}
	carol.leave("lobby") // back to 2: announced
	dial(t, e.url, "zz-sentinel").join("dev")
	w.expect(t, soon(), "lobby join alice", "lobby join bob", "lobby leave carol", "dev join zz-sentinel")
}
