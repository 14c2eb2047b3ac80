package deploy

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// With the services as processes (the single binary and the three
// separate ones), a NATS services client finds each instance, as `nats
// micro ls`, `info`, `stats` and `ping` do: two of each service, and an
// edge's stats follow the WebSockets it holds.
func TestMicroProcesses(t *testing.T) {
	ps := startProcesses(t)
	nc, err := nats.Connect(ps.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// Each process registers as it starts serving: wait for all six.
	awaitInstances(t, nc, 6)
	var names []string
	for _, p := range servicetest.Ask[micro.Ping](t, nc, micro.PingVerb, "", "", 6, 10*time.Second) {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	want := []string{subject.ServiceBroadcaster, subject.ServiceBroadcaster, subject.ServiceEdge, subject.ServiceEdge,
		subject.ServicePresence, subject.ServicePresence}
	if !slices.Equal(names, want) {
		t.Fatalf("running %v, want %v", names, want)
	}
	// $SRV.PING.natter-edge: one answer per running edge.
	edges := servicetest.Ask[micro.Ping](t, nc, micro.PingVerb, subject.ServiceEdge, "", 2, 10*time.Second)
	infos := servicetest.Ask[micro.Info](t, nc, micro.InfoVerb, subject.ServiceBroadcaster, "", 2, 10*time.Second)
	for _, info := range infos {
		if len(info.Endpoints) != 2 || info.Endpoints[0].QueueGroup != subject.BroadcasterQueue {
			t.Errorf("broadcaster %s: endpoints %+v", info.ID, info.Endpoints)
		}
	}

	// A client of the separate edge shows in that edge's stats, and only
	// in its.
	// The figures as an operator's tools read them, by their JSON names.
	type stats struct {
		Edge                      string
		Connections, Rooms, Users int
	}
	edgeStats := func() map[string]stats {
		byID := map[string]stats{}
		for _, s := range servicetest.Ask[micro.Stats](t, nc, micro.StatsVerb, subject.ServiceEdge, "", 2, 10*time.Second) {
			st := servicetest.StatsData[stats](t, s)
			byID[st.Edge] = st
		}
		return byID
	}
	before := edgeStats()
	u := url.URL{Scheme: "ws", Host: ps.addrs["edge"], Path: "/ws", RawQuery: "user=alice"}
	ws, _, err := websocket.DefaultDialer.Dial(u.String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteJSON(map[string]any{"type": "join", "room": "lobby"}); err != nil {
		t.Fatal(err)
	}
	for joined := false; !joined; {
		var ev struct{ Type string }
		if err := ws.ReadJSON(&ev); err != nil {
			t.Fatal(err)
		}
		joined = ev.Type == "joined"
	}
	after := edgeStats()
	moved := 0
	for _, p := range edges {
		id := p.Metadata["edge"]
		b, a := before[id], after[id]
		switch {
		case a.Connections == b.Connections+1 && a.Rooms == b.Rooms+1 && a.Users == b.Users+1:
			moved++
		case a != b:
			t.Errorf("edge %s: %+v, then %+v", id, b, a)
		}
	}
	if moved != 1 {
		t.Errorf("one client moved the stats of %d edges, want 1: before %+v, after %+v", moved, before, after)
	}
}

// microThroughMesh: the observer, on the published NATS port, sees every
// natter container of the compose mesh through nats micro: two of each
// service, one presence replica active.
func microThroughMesh(t *testing.T, m *mesh) {
	nc := natsClient(t, m, "observer")
	awaitInstances(t, nc, 6)
	for _, name := range []string{subject.ServiceEdge, subject.ServiceBroadcaster} {
		servicetest.Ask[micro.Ping](t, nc, micro.PingVerb, name, "", 2, 10*time.Second)
	}
	var roles []string
	for _, info := range servicetest.Ask[micro.Info](t, nc, micro.InfoVerb, subject.ServicePresence, "", 2, 10*time.Second) {
		roles = append(roles, info.Metadata["role"])
	}
	slices.Sort(roles)
	if !slices.Equal(roles, []string{"active", "standby"}) {
		t.Errorf("presence replicas %v, want one active and one standby", roles)
	}
	for _, s := range servicetest.Ask[micro.Stats](t, nc, micro.StatsVerb, subject.ServiceEdge, "", 2, 10*time.Second) {
		if len(s.Endpoints) != 1 || len(s.Endpoints[0].Data) == 0 {
			t.Errorf("edge %s: stats without its figures: %+v", s.ID, s)
		}
	}
}

// awaitInstances waits until n service instances answer one bare PING.
func awaitInstances(t *testing.T, nc *nats.Conn, n int) {
	t.Helper()
	got := 0
	if !servicetest.Poll(30*time.Second, func() bool {
		inbox := nc.NewInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest("$SRV.PING", inbox, nil); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		for got = 0; got < n; got++ {
			if _, err := sub.NextMsg(time.Second); err != nil {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("%d service instances answer, want %d", got, n)
	}
}
