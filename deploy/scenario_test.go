package deploy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/shared/servicetest"
)

// scenario is steady traffic through the mesh: members on both edges
// posting in a room and sending dms, a bot posting on NATS, every event
// each member gets recorded; and the faults done to the mesh meanwhile,
// one row each.
type scenario struct {
	t       *testing.T
	m       *mesh
	room    string
	members []*member
	bot     *bot
	edges   *edges
	rows    []row
}

// row is one fault: how long until messages flowed again, and what
// reached whom.
type row struct {
	fault      string
	flow       time.Duration // until every member got a message stored after the fault
	limit      time.Duration // what the mesh promises (0: nothing)
	acked      int           // posts acked during the phase
	delivered  int           // of those, member views that have them
	missing    int           // member views that lack one
	duplicated int           // messages pushed to a member a second time
	disorder   int           // messages pushed below a seq pushed before
}

// flowWait bounds the wait for messages to flow again: well past every
// promise, so a slow recovery is measured rather than cut short.
const flowWait = 90 * time.Second

func startScenario(t *testing.T, m *mesh) *scenario {
	t.Helper()
	s := &scenario{t: t, m: m, room: "lobby"}
	s.edges = watchEdges(t, natsClient(t, m, "observer"))
	names := []string{"alice", "bob", "carol", "dave"}
	for i, name := range names {
		mb := newMember(m.wsURL(), name, names[(i+1)%len(names)], []string{s.room}, 400*time.Millisecond)
		mb.start()
		t.Cleanup(mb.close)
		s.members = append(s.members, mb)
		// One at a time: the proxy gives each new connection to the edge
		// with fewer, so they alternate.
		servicetest.WaitFor(t, time.Minute, name+" connected and joined", mb.steady)
	}
	s.bot = startBot(natsClient(t, m, "bot"), s.room, time.Second)
	t.Cleanup(s.bot.close)
	servicetest.WaitFor(t, 30*time.Second, "the edges of every member known", func() bool {
		for _, mb := range s.members {
			if s.edges.of(mb.session()) == "" {
				return false
			}
		}
		return true
	})
	for _, edge := range []string{"edge-1", "edge-2"} {
		if len(s.on(edge)) == 0 {
			t.Fatalf("no member on %s: the proxy does not balance", edge)
		}
	}
	// The first member saw the others join: presence is announced, and
	// the members record it (the presence fault counts on both).
	servicetest.WaitFor(t, 20*time.Second, names[0]+" sees the others join", func() bool {
		joined := map[string]bool{}
		for _, p := range s.members[0].presenceSince(time.Time{}) {
			joined[p.user] = joined[p.user] || p.event == "join"
		}
		return joined[names[1]] && joined[names[2]] && joined[names[3]]
	})
	s.resume()
	return s
}

// on is the members whose current session is on edge.
func (s *scenario) on(edge string) []*member {
	var out []*member
	for _, mb := range s.members {
		if s.edges.of(mb.session()) == edge {
			out = append(out, mb)
		}
	}
	return out
}

func (s *scenario) resume() {
	for _, mb := range s.members {
		mb.posting.Store(true)
	}
	s.bot.posting.Store(true)
}

// quiesce stops new posts and waits until every post in flight is acked.
func (s *scenario) quiesce(t testing.TB) {
	for _, mb := range s.members {
		mb.posting.Store(false)
	}
	s.bot.posting.Store(false)
	servicetest.WaitFor(t, time.Minute, "every post in flight acked", func() bool {
		for _, mb := range s.members {
			if mb.inFlight() {
				return false
			}
		}
		return !s.bot.inFlight()
	})
}

// posts is every post acked so far, by members and bot.
func (s *scenario) posts() []post {
	out := s.bot.posts()
	for _, mb := range s.members {
		out = append(out, mb.posts()...)
	}
	return out
}

// flowAfter does the fault and returns how long after its start every
// member was sent a room message first posted once the fault was done:
// once docker kill or docker stop returned (the process is dead), the
// server cut off. A message posted earlier may have reached a member just
// before its edge died, and does not count.
func (s *scenario) flowAfter(t testing.TB, fault func()) time.Duration {
	t.Helper()
	began := time.Now()
	fault()
	at := time.Now()
	key := viewKey(s.room, "")
	var last time.Time
	flowed := servicetest.Poll(flowWait, func() bool {
		var fresh []uint64
		for _, p := range s.posts() {
			if p.room == s.room && p.sent.After(at) {
				fresh = append(fresh, p.seq)
			}
		}
		last = time.Time{}
		for _, mb := range s.members {
			first, ok := mb.firstPushOf(key, fresh)
			if !ok {
				return false
			}
			last = later(last, first)
		}
		return true
	})
	if !flowed {
		var status []string
		for _, mb := range s.members {
			status = append(status, mb.status()+" on "+s.edges.of(mb.session()))
		}
		t.Errorf("messages posted after the fault did not reach every member within %s:\n%s", flowWait, strings.Join(status, "\n"))
		s.m.saveLogs(t, "flow")
		return flowWait
	}
	return last.Sub(began)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// steady waits until the mesh is whole again: every natter container
// healthy, every NATS server current, every member connected.
func (s *scenario) steady(t testing.TB) {
	t.Helper()
	s.m.waitHealthy(t, 2*time.Minute, append(append([]string{}, natterServices...), "caddy")...)
	for _, n := range natsServices {
		servicetest.WaitFor(t, 2*time.Minute, n+" current", func() bool { return s.m.natsCurrent(t, n) })
	}
	for _, mb := range s.members {
		servicetest.WaitFor(t, time.Minute, mb.name+" connected", mb.steady)
	}
}

// phase does one fault under traffic, as a subtest named short, lets
// traffic go on, stops it, and checks that every acked post reached every
// member that should have it, once, in order. The fault returns how long
// messages took to flow again; limit is what the mesh promises (0: no
// promise).
func (s *scenario) phase(short, name string, limit time.Duration, fault func(t *testing.T) time.Duration) {
	s.t.Run(short, func(t *testing.T) {
		if d, ok := t.Deadline(); ok && time.Until(d) < 5*time.Minute {
			t.Fatal("less than 5 minutes left before go test's timeout: stopping here so the mesh is torn down (raise -timeout)")
		}
		s.steady(t)
		s.resume()
		started := time.Now()
		dup0, dis0, unrec0 := s.faults()
		r := row{fault: name, limit: limit}
		r.flow = fault(t)
		// Traffic goes on for a while after the recovery.
		goal := len(s.posts()) + 20
		servicetest.WaitFor(t, time.Minute, "traffic after the fault", func() bool { return len(s.posts()) >= goal })
		s.quiesce(t)
		all := s.posts()
		if len(s.missing(all)) > 0 {
			// Members still recovering get the time they need.
			servicetest.Poll(30*time.Second, func() bool { return len(s.missing(all)) == 0 })
		}
		for _, p := range all {
			if p.acked.Before(started) {
				continue
			}
			r.acked++
			for _, mb := range s.members {
				if mb.expects(p) {
					if mb.has(p) {
						r.delivered++
					} else {
						r.missing++
					}
				}
			}
		}
		dup1, dis1, unrec1 := s.faults()
		r.duplicated, r.disorder = dup1-dup0, dis1-dis0
		s.rows = append(s.rows, r)
		if missing := s.missing(all); len(missing) > 0 {
			t.Errorf("%d acked posts missing from members' views, for example %s", len(missing), strings.Join(missing[:min(5, len(missing))], "; "))
		}
		if r.duplicated > 0 || r.disorder > 0 {
			t.Errorf("%d messages pushed or stored twice, %d out of seq order", r.duplicated, r.disorder)
		}
		if n := unrec1 - unrec0; n > 0 {
			t.Errorf("%d rejoins with since answered recovered: false, with no limit reached", n)
		}
		if limit > 0 && r.flow > limit {
			t.Errorf("messages flowed again after %s, promised within %s", r.flow.Round(100*time.Millisecond), limit)
		}
		for _, mb := range s.members {
			if p := mb.problemsSeen(); len(p) > 0 {
				t.Errorf("%s: %s", mb.name, strings.Join(p, "; "))
			}
		}
		if p := s.bot.problemsSeen(); len(p) > 0 {
			t.Errorf("bot: %s", strings.Join(p, "; "))
		}
		if t.Failed() {
			s.m.saveLogs(t, short)
		}
		s.resume()
	})
}

// missing lists the (member, post) pairs of posts that a member should
// have and lacks.
func (s *scenario) missing(posts []post) []string {
	var out []string
	for _, p := range posts {
		for _, mb := range s.members {
			if mb.expects(p) && !mb.has(p) {
				out = append(out, fmt.Sprintf("%s lacks %s's %s (seq %d)", mb.name, p.from, p.id, p.seq))
			}
		}
	}
	return out
}

func (s *scenario) faults() (dup, disorder, unrecovered int) {
	for _, mb := range s.members {
		d, o, u := mb.faults()
		dup, disorder, unrecovered = dup+d, disorder+o, unrecovered+u
	}
	return dup, disorder, unrecovered
}

// table is the rows as a Markdown table.
func (s *scenario) table() string {
	var b strings.Builder
	b.WriteString("| fault | messages flow again after | acked | delivered | missing | duplicated |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, r := range s.rows {
		promise := ""
		if r.limit > 0 {
			promise = fmt.Sprintf(" (promised %s)", r.limit)
		}
		dup := fmt.Sprint(r.duplicated)
		if r.disorder > 0 {
			dup += fmt.Sprintf(", %d out of order", r.disorder)
		}
		fmt.Fprintf(&b, "| %s | %.1f s%s | %d | %d | %d | %s |\n", r.fault, r.flow.Seconds(), promise, r.acked, r.delivered, r.missing, dup)
	}
	return b.String()
}

// latestLine returns the time and text of the last line of log (docker
// logs -t) that contains one of marks.
func latestLine(log string, marks ...string) (time.Time, string) {
	var at time.Time
	var text string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !slices.ContainsFunc(marks, func(m string) bool { return strings.Contains(line, m) }) {
			continue
		}
		stamp, _, _ := strings.Cut(line, " ")
		if t, err := time.Parse(time.RFC3339Nano, stamp); err == nil {
			at, text = t, line
		}
	}
	return at, text
}

// streamLeader is the NATS server that leads the room stream: the one
// that last logged taking the lead.
func (s *scenario) streamLeader(t testing.TB) string {
	t.Helper()
	var leader string
	var newest time.Time
	for _, n := range natsServices {
		if at, _ := latestLine(s.m.logs(t, n), "new stream leader for 'CHAT > CHAT'"); at.After(newest) {
			leader, newest = n, at
		}
	}
	if leader == "" {
		t.Fatal("no NATS server logged leading the room stream")
	}
	return leader
}

// activePresence is the presence replica that announces: the one whose
// last word on the lead was taking it.
func (s *scenario) activePresence(t testing.TB) string {
	t.Helper()
	var active []string
	for _, p := range []string{"presence-1", "presence-2"} {
		_, line := latestLine(s.m.logs(t, p), "leading: this replica", "live: announcing", "no longer leading", "giving up the lead")
		if strings.Contains(line, "leading: this replica") || strings.Contains(line, "live: announcing") {
			active = append(active, p)
		}
	}
	if len(active) != 1 {
		t.Fatalf("active presence replicas: %v, want one", active)
	}
	return active[0]
}

// oneShot opens a connection of its own as user, sends req and returns
// the first event of type want.
func (s *scenario) oneShot(t testing.TB, user string, req map[string]any, want string) wire {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := d.Dial(s.m.wsURL()+"?user="+user, nil)
	if err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	defer conn.Close()
	b, _ := json.Marshal(req)
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("%s awaiting %s: %v", user, want, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			var w wire
			if json.Unmarshal([]byte(line), &w) == nil && w.Type == want {
				return w
			}
		}
	}
}

// whoIs asks a member who is in the room until the answer is users, for
// up to limit, and reports whether it was.
func (s *scenario) whoIs(mb *member, users []string, limit time.Duration) bool {
	sort.Strings(users)
	return servicetest.Poll(limit, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		got, err := mb.who(ctx, s.room)
		return err == nil && slices.Equal(got, users)
	})
}
