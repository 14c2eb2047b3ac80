package deploy

import (
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/servicetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// What the mesh promises: messages flow again within 10 s of a natter
// process's death and within 15 s of a NATS server's.
const processLoss, serverLoss = 10 * time.Second, 15 * time.Second

// The compose mesh, brought up from the repository's docker-compose.yml,
// keeps every acked message through the loss of any one of its parts.
// Under steady traffic (members on both edges posting and sending dms
// through the proxy, a bot posting on NATS) it loses one part at a time,
// each a subtest, and every member ends with every acked message and dm,
// once, in order, with messages flowing again within the promised time.
// The table of what happened is logged, and written to
// NATTER_MESH_REPORT when that names a file.
func TestMesh(t *testing.T) {
	m := startMesh(t)
	t.Run("browsers", func(t *testing.T) { browsersThroughMesh(t, m) })
	t.Run("micro", func(t *testing.T) { microThroughMesh(t, m) })

	s := startScenario(t, m)
	s.phase("edge-kill", "SIGKILL edge-1", processLoss, func(t *testing.T) time.Duration {
		moved := s.on("edge-1")
		if len(moved) == 0 {
			t.Fatal("no member on edge-1")
		}
		flow := s.flowAfter(t, func() { m.kill(t, "edge-1") })
		for _, mb := range moved {
			servicetest.WaitFor(t, 30*time.Second, mb.name+" back through the other edge", func() bool {
				return s.edges.of(mb.session()) == "edge-2"
			})
		}
		// Its start must not stop the flow either.
		return max(flow, s.flowAfter(t, func() { m.start(t, "edge-1") }))
	})

	s.phase("broadcaster-kill", "SIGKILL broadcaster-1", processLoss, func(t *testing.T) time.Duration {
		flow := s.flowAfter(t, func() { m.kill(t, "broadcaster-1") })
		return max(flow, s.flowAfter(t, func() { m.start(t, "broadcaster-1") }))
	})

	s.phase("presence-kill", "SIGKILL the active presence", processLoss, func(t *testing.T) time.Duration {
		active := s.activePresence(t)
		standby := map[string]string{"presence-1": "presence-2", "presence-2": "presence-1"}[active]
		var killed time.Time
		flow := s.flowAfter(t, func() {
			killed = time.Now()
			m.kill(t, active)
		})
		// The contract: who is right within 10 s of a presence restart,
		// and nobody is announced who did not join or leave.
		var users []string
		for _, mb := range s.members {
			users = append(users, mb.name)
		}
		if !s.whoIs(s.members[0], users, 10*time.Second-time.Since(killed)) {
			t.Errorf("who is not %v within 10 s of the active presence's (%s) death", users, active)
		}
		servicetest.WaitFor(t, 30*time.Second, standby+" takes over", func() bool {
			at, _ := latestLine(m.logs(t, standby), "live: announcing")
			return at.After(killed)
		})
		flow = max(flow, s.flowAfter(t, func() { m.start(t, active) }))
		m.waitHealthy(t, time.Minute, active)
		// Past the 20 s in which presence announces the leaves of an edge
		// it thinks gone: nothing was announced, as nobody joined or left.
		time.Sleep(time.Until(killed.Add(25 * time.Second))) // watching for events that must not come
		for _, mb := range s.members {
			if seen := mb.presenceSince(killed); len(seen) > 0 {
				t.Errorf("%s was sent presence events while nobody joined or left: %+v", mb.name, seen)
			}
		}
		return flow
	})

	s.phase("nats-kill", "SIGKILL the room stream's NATS leader", serverLoss, func(t *testing.T) time.Duration {
		leader := s.streamLeader(t)
		t.Logf("killing %s", leader)
		flow := s.flowAfter(t, func() { m.kill(t, leader) })
		return max(flow, s.flowAfter(t, func() { m.start(t, leader) }))
	})

	s.phase("nats-cut-off", "the room stream's NATS leader off the network for 20 s", serverLoss, func(t *testing.T) time.Duration {
		leader := s.streamLeader(t)
		t.Logf("cutting %s off", leader)
		var cut time.Time
		flow := s.flowAfter(t, func() {
			cut = time.Now()
			m.cutOff(t, leader)
		})
		time.Sleep(time.Until(cut.Add(20 * time.Second))) // the fault lasts 20 s
		return max(flow, s.flowAfter(t, func() { m.reconnect(t, leader) }))
	})

	s.phase("rolling-restart", "rolling restart of the six natter containers", processLoss, func(t *testing.T) time.Duration {
		var worst time.Duration
		for _, svc := range natterServices {
			worst = max(worst, s.flowAfter(t, func() { m.stop(t, svc) }))
			// SIGTERM: a clean stop within docker's 10 s, or it would have
			// been killed (137).
			if code := m.exitCode(t, svc); code != "0" {
				t.Errorf("%s exited %s on SIGTERM, want 0", svc, code)
			}
			worst = max(worst, s.flowAfter(t, func() { m.start(t, svc) }))
			m.waitHealthy(t, 2*time.Minute, svc)
		}
		return worst
	})

	s.phase("down-up", "docker compose down, then up (flow counted from up)", 0, func(t *testing.T) time.Duration {
		before := s.posts()
		m.stopAll(t)
		flow := s.flowAfter(t, func() { m.up(t) })
		// What was stored before is there, for someone new and for a
		// party of the dms.
		var newestRoom, newestDM post
		for _, p := range before {
			if p.room == s.room && p.seq > newestRoom.seq {
				newestRoom = p
			}
			if p.room == "" && p.from == "alice" && p.seq > newestDM.seq {
				newestDM = p
			}
		}
		h := s.oneShot(t, "zed", map[string]any{"type": "history", "room": s.room, "limit": 200}, "history")
		found := false
		for _, raw := range h.Messages {
			found = found || strings.Contains(string(raw), `"id":"`+newestRoom.id+`"`)
		}
		if !found {
			t.Errorf("after down and up, the room's history lacks %s (seq %d)", newestRoom.id, newestRoom.seq)
		}
		d := s.oneShot(t, "alice", map[string]any{"type": "dms"}, "dms")
		ok := false
		for _, c := range d.Conversations {
			ok = ok || (c.With == newestDM.to && c.Seq >= newestDM.seq)
		}
		if !ok {
			t.Errorf("after down and up, alice's dms %+v lack the one with %s (seq %d)", d.Conversations, newestDM.to, newestDM.seq)
		}
		return flow
	})

	table := s.table()
	t.Logf("the mesh under faults:\n%s", table)
	if path := os.Getenv("NATTER_MESH_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
			t.Error(err)
		}
	}
}
