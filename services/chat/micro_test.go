package main

import (
	"slices"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natter-chat/natter/services/broadcaster/broadcaster"
	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// The single binary's three services are on the NATS services framework,
// as `nats micro ls`, `info`, `stats` and `ping` see them: each once, with
// the build's version, their endpoints on the subjects of the protocol,
// and figures of their own that follow the traffic.
func TestMicroServices(t *testing.T) {
	t.Parallel()
	m, _ := startMain(t, t.TempDir())
	nc, err := nats.Connect("nats://" + m.NATSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The services register as they start; the edge starts last, once the
	// broadcaster serves and presence is live.
	probe := dial(t, "http://"+m.Addr(), "probe")
	probe.join("probe")
	probe.close()

	// ls: every service answers the bare PING, once.
	var names []string
	for _, p := range servicetest.Ask[micro.Ping](t, nc, micro.PingVerb, "", "", 3, wait) {
		names = append(names, p.Name)
		if p.Version != ops.Version() || p.ID == "" {
			t.Errorf("%s: version %q, id %q; want version %q", p.Name, p.Version, p.ID, ops.Version())
		}
	}
	slices.Sort(names)
	if want := []string{subject.ServiceBroadcaster, subject.ServiceEdge, subject.ServicePresence}; !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
	edgePing := servicetest.Ask[micro.Ping](t, nc, micro.PingVerb, subject.ServiceEdge, "", 1, wait)[0]

	// info: the endpoints are the requests each answers, on the
	// protocol's subjects and queue groups.
	endpoints := func(name string) []string {
		info := servicetest.Ask[micro.Info](t, nc, micro.InfoVerb, name, "", 1, wait)[0]
		if info.Description == "" {
			t.Errorf("%s: no description", name)
		}
		var eps []string
		for _, ep := range info.Endpoints {
			eps = append(eps, ep.Name+" "+ep.Subject+" "+ep.QueueGroup)
		}
		return eps
	}
	for name, want := range map[string][]string{
		subject.ServiceBroadcaster: {"room " + subject.InRoomAll + " " + subject.BroadcasterQueue, "dm " + subject.InDMAll + " " + subject.BroadcasterQueue},
		subject.ServicePresence:    {"who " + subject.PresenceWhoAll + " " + subject.PresenceQueue},
		subject.ServiceEdge:        {"sync " + subject.EdgeSync(m.edge.ID()) + " "},
	} {
		if got := endpoints(name); !slices.Equal(got, want) {
			t.Errorf("%s endpoints %q, want %q", name, got, want)
		}
	}

	// stats: the figures follow the traffic.
	edgeStats := func() (edge.Stats, micro.Stats) {
		s := servicetest.Ask[micro.Stats](t, nc, micro.StatsVerb, subject.ServiceEdge, edgePing.ID, 1, wait)[0]
		return servicetest.StatsData[edge.Stats](t, s), s
	}
	servicetest.WaitFor(t, wait, "the edge's stats to show no client once the probe left", func() bool {
		st, _ := edgeStats()
		return st.Connections == 0 && st.Rooms == 0 && st.Users == 0 && st.Edge == m.edge.ID()
	})
	alice, bob := dial(t, "http://"+m.Addr(), "alice"), dial(t, "http://"+m.Addr(), "bob")
	alice.join("lobby")
	bob.join("lobby")
	alice.join("dev")
	alice.post("lobby", "counted", "c1")
	if st, _ := edgeStats(); st.Connections != 2 || st.Rooms != 2 || st.Users != 2 {
		t.Errorf("edge with two clients in two rooms: %+v", st)
	}

	// A bot's post the broadcaster refuses is an error of its room endpoint.
	if _, err := nc.Request(subject.InRoom("lobby"), []byte(`{"text":"no sender"}`), wait); err != nil {
		t.Fatal(err)
	}
	// The framework counts a request once its handler has returned, which
	// may be after the answer went out: its stats are read until they
	// show both.
	var bs micro.Stats
	var room *micro.EndpointStats
	servicetest.WaitFor(t, wait, "the broadcaster's room endpoint to count the post and the refusal", func() bool {
		bs = servicetest.Ask[micro.Stats](t, nc, micro.StatsVerb, subject.ServiceBroadcaster, "", 1, wait)[0]
		i := slices.IndexFunc(bs.Endpoints, func(ep *micro.EndpointStats) bool { return ep.Name == "room" })
		if i < 0 {
			t.Fatalf("the broadcaster has no room endpoint: %+v", bs.Endpoints)
		}
		room = bs.Endpoints[i]
		return room.NumRequests == 2
	})
	if room.NumErrors != 1 || room.LastError == "" {
		t.Errorf("broadcaster's room endpoint: %d requests, %d errors (%q); want 2 and 1", room.NumRequests, room.NumErrors, room.LastError)
	}
	if st := servicetest.StatsData[broadcaster.Stats](t, bs); st.Stored != 1 || st.Refused != 1 {
		t.Errorf("broadcaster after one post and one refusal: %+v", st)
	}

	// Presence's figures come from its view, which follows the edge's
	// reports on their own time.
	servicetest.WaitFor(t, wait, "presence's stats to show the edge and its two rooms", func() bool {
		ps := servicetest.Ask[micro.Stats](t, nc, micro.StatsVerb, subject.ServicePresence, "", 1, wait)[0]
		st := servicetest.StatsData[presence.Stats](t, ps)
		return st.Role == presence.RoleActive && st.Edges == 1 && st.Rooms == 2 && st.SessionRooms == 3 && st.Replica != ""
	})

	bob.close()
	servicetest.WaitFor(t, wait, "the edge's stats to drop bob", func() bool {
		st, _ := edgeStats()
		return st.Connections == 1 && st.Users == 1
	})
}
