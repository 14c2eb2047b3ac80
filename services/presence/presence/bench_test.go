package presence

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// BenchmarkSyncApply makes a whole edge's state of 15,000 sessions of 100
// rooms each (1.5 million pairs, 2,000 rooms) the view, as a sync does,
// and reports the heap the view holds.
func BenchmarkSyncApply(b *testing.B) {
	const sessions, rooms = 15000, 100
	snap := make(map[string]*session, sessions)
	for i := range sessions {
		s := &session{user: fmt.Sprintf("user-%05d", i), rooms: make(map[string]struct{}, rooms)}
		for j := range rooms {
			s.rooms[fmt.Sprintf("room-%04d", (i+j)%2000)] = struct{}{}
		}
		snap[fmt.Sprintf("%016x", i)] = s
	}
	var heap uint64
	for b.Loop() {
		st := newState()
		e := st.edge("edge-1", time.Now())
		st.replace(e, snap, nil)
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		st.drop(e, nil)
		e = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = before.HeapAlloc - after.HeapAlloc
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-view")
	b.ReportMetric(float64(sessions*rooms)*float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

// Sizes of BenchmarkReports: the reports go out in chunks, each followed
// by a who request; at most reportWindow chunks wait for their who's
// answer, so the loop's channel (msgBuffer) always holds reports but never
// overflows. An iteration is reportBurst reports.
const (
	reportChunk  = 1024
	reportWindow = 48
	reportBurst  = 64 * reportChunk
)

// BenchmarkReports measures how many session reports a second the loop of
// a live replica applies with its channel kept full: its service rate,
// the rate below which the channel stops growing. The reports come as
// the edges send them, one message on chat.presence.session.<room> each,
// through a real NATS server. Rooms of `members` present sessions get, in
// turn, a report of one more session joining or leaving, so that every
// report changes who is present: the dearest kind (an event to announce,
// a room to write). Rooms above MaxMembers (500) announce nothing.
//
// Besides reports/s: queued, the mean length of the loop's channel when
// a who was answered while the window was full, and empty, the share of
// those answers that found it empty: the loop, not the publisher, set the pace when it always had
// reports waiting; events/s and event-lag-ms, how fast the measured
// reports' events went out and how long after the last report was
// applied the last one came (the writer stores each changed room in the
// bucket before it announces the room's events); kv-writes/report and
// kv-writes/s, the writer's bucket writes; cpu-us/report, the process's
// CPU per report until the writer is idle; idle-cores, the machine's
// idle cores while the reports were applied (others' load shows as
// fewer). The server, the publisher and presence share the process, its
// GOMAXPROCS and its CPU.
//
//	flock /tmp/natter-bench.lock go test -run '^$' -bench Reports -benchtime 10x -cpu 1,2 ./services/presence/presence
func BenchmarkReports(b *testing.B) {
	for _, c := range []struct{ rooms, members, replicas int }{
		// 100,000 sessions present in rooms of 10 to 10,000...
		{10_000, 10, 1}, {1_000, 100, 1}, {250, 400, 1}, {100, 1_000, 1}, {10, 10_000, 1},
		// ...and a million in rooms of 10: more rooms than the writer
		// writes in a second.
		{100_000, 10, 1},
		// The bucket on three servers (clustered in this process): each
		// write waits for a majority.
		{10_000, 10, 3},
	} {
		name := fmt.Sprintf("rooms=%d/members=%d", c.rooms, c.members)
		if c.replicas > 1 {
			name += fmt.Sprintf("/bucket=R%d", c.replicas)
		}
		b.Run(name, func(b *testing.B) { benchReports(b, c.rooms, c.members, c.replicas) })
	}
}

func benchReports(b *testing.B, rooms, members, replicas int) {
	const maxMembers = 500
	var connect func() *nats.Conn
	if replicas == 1 {
		ns := natstest.Start(b)
		connect = func() *nats.Conn { return natstest.Connect(b, ns) }
	} else {
		c := natstest.StartCluster(b, replicas)
		connect = func() *nats.Conn { return c.Connect(b) }
	}
	// No heartbeats: the edge must not expire during the measure.
	p := runOn(b, connect(), Config{MaxMembers: maxMembers, Replicas: replicas, Fresh: true, EdgeTimeout: time.Hour})
	select {
	case <-p.Live():
	case <-time.After(30 * time.Second):
		b.Fatal("the replica is not live after 30 s")
	}
	var events atomic.Int64
	watcher := connect()
	sub, err := watcher.Subscribe(subject.RoomPresence("*"), func(*nats.Msg) { events.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := watcher.Flush(); err != nil {
		b.Fatal(err)
	}
	f := newFeeder(b, connect(), func() int { return len(p.msgs) })

	report := func(event string, room int, user, sid string) []byte {
		return proto.Encode(proto.SessionReport{Event: event, Room: benchRoom(room), User: user, Edge: "bench-edge", Session: sid})
	}
	for m := range members {
		for r := range rooms {
			user := fmt.Sprintf("u%d-%d", r, m)
			f.send(subject.PresenceSession(benchRoom(r)), report(proto.EventJoin, r, user, "s-"+user))
		}
	}
	f.drain()
	// The rooms are full: their events announced (up to MaxMembers a
	// room), before the measure starts.
	awaitCount(b, &events, int64(rooms*min(members, maxMembers)))

	type churn struct {
		subj        string
		join, leave []byte
	}
	churns := make([]churn, rooms)
	for r := range churns {
		user := fmt.Sprintf("x%d", r)
		churns[r] = churn{subject.PresenceSession(benchRoom(r)),
			report(proto.EventJoin, r, user, "s-"+user), report(proto.EventLeave, r, user, "s-"+user)}
	}
	bucket := openBucketStream(b, connect())
	f.queued, f.samples, f.empty = 0, 0, 0
	ev0, kv0, cpu0, idle0 := events.Load(), bucket.writes(b), cpuTime(b), idleTime(b)
	start := time.Now()
	sent := 0
	for b.Loop() {
		for range reportBurst {
			c := churns[sent%rooms]
			data := c.join
			if (sent/rooms)%2 == 1 {
				data = c.leave
			}
			f.send(c.subj, data)
			sent++
		}
		f.drain()
	}
	applied, idle := time.Now(), idleTime(b)-idle0
	b.ReportMetric(float64(sent)/b.Elapsed().Seconds(), "reports/s")
	b.ReportMetric(float64(f.queued)/float64(f.samples), "queued")
	b.ReportMetric(float64(f.empty)/float64(f.samples), "empty")
	if dropped, _ := p.sessionSub.Dropped(); dropped > 0 {
		b.Fatalf("%d reports dropped: the channel overflowed", dropped)
	}
	// Every report changes presence; a room of members+1 or members is
	// announced while it has at most MaxMembers.
	want := int64(0)
	if members < maxMembers {
		want = int64(sent)
	}
	awaitCount(b, &events, ev0+want)
	announced := time.Now()
	kv, written := awaitWriter(b, bucket)
	cpu := cpuTime(b) - cpu0
	if want > 0 {
		b.ReportMetric(float64(want)/announced.Sub(start).Seconds(), "events/s")
		b.ReportMetric(float64(announced.Sub(applied).Milliseconds()), "event-lag-ms")
	}
	b.ReportMetric(float64(kv-kv0)/float64(sent), "kv-writes/report")
	if written.Before(applied) {
		written = applied
	}
	b.ReportMetric(float64(kv-kv0)/written.Sub(start).Seconds(), "kv-writes/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(sent), "cpu-us/report")
	b.ReportMetric(idle.Seconds()/applied.Sub(start).Seconds(), "idle-cores")
}

func benchRoom(r int) string { return fmt.Sprintf("room-%05d", r) }

// feeder publishes reports with a who request after every reportChunk,
// and keeps at most reportWindow of the requests unanswered: a who is
// answered once the loop has applied every report published before it.
type feeder struct {
	b          *testing.B
	nc         *nats.Conn
	inbox      string
	replies    chan *nats.Msg
	unanswered int // who requests sent and not answered
	inChunk    int // reports since the last who
	// queue is the length of the loop's channel; queued sums it at each
	// answer taken while the window is full, samples counts those
	// answers, empty those that found the channel empty.
	queue                  func() int
	queued, samples, empty int
}

func newFeeder(b *testing.B, nc *nats.Conn, queue func() int) *feeder {
	f := &feeder{b: b, nc: nc, inbox: nc.NewInbox(), replies: make(chan *nats.Msg, reportWindow+1), queue: queue}
	if _, err := nc.ChanSubscribe(f.inbox, f.replies); err != nil {
		b.Fatal(err)
	}
	return f
}

func (f *feeder) send(subj string, data []byte) {
	if err := f.nc.Publish(subj, data); err != nil {
		f.b.Fatal(err)
	}
	if f.inChunk++; f.inChunk == reportChunk {
		f.mark()
	}
}

// mark asks who after the reports sent, and waits while the window is full.
func (f *feeder) mark() {
	if err := f.nc.PublishRequest(subject.PresenceWho("bench-nobody"), f.inbox, nil); err != nil {
		f.b.Fatal(err)
	}
	f.inChunk = 0
	f.unanswered++
	for f.unanswered >= reportWindow {
		f.await(true)
	}
}

// await takes an answer; with sample, while reports are still being
// sent, it notes the channel's length.
func (f *feeder) await(sample bool) {
	select {
	case <-f.replies:
		f.unanswered--
		if !sample {
			return
		}
		n := f.queue()
		f.queued += n
		f.samples++
		if n == 0 {
			f.empty++
		}
	case <-time.After(30 * time.Second):
		f.b.Fatalf("no who answer for 30 s, %d unanswered", f.unanswered)
	}
}

// drain waits until every report sent is applied.
func (f *feeder) drain() {
	if f.inChunk > 0 {
		f.mark()
	}
	for f.unanswered > 0 {
		f.await(false)
	}
}

// awaitCount waits until n reaches want, for at most a minute.
func awaitCount(b *testing.B, n *atomic.Int64, want int64) {
	b.Helper()
	if !servicetest.Poll(time.Minute, func() bool { return n.Load() >= want }) {
		b.Fatalf("%d events, want %d", n.Load(), want)
	}
}

// awaitWriter waits until the writer is idle and returns the bucket's
// writes and when the writer last wrote. Idle: for a second, no poll saw
// more than the elector's renewal of the leader key (one write a second).
func awaitWriter(b *testing.B, bucket kvStream) (uint64, time.Time) {
	b.Helper()
	last, lastWrite := bucket.writes(b), time.Now()
	for limit := time.Now().Add(time.Minute); time.Now().Before(limit); {
		time.Sleep(50 * time.Millisecond)
		n := bucket.writes(b)
		if n > last+1 {
			lastWrite = time.Now()
		}
		last = n
		if time.Since(lastWrite) >= time.Second {
			return n, lastWrite
		}
	}
	b.Fatal("the writer still writes after a minute")
	return 0, time.Time{}
}

// cpuTime is the CPU this process has used, user and system: the server,
// the publisher and presence together.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleTime is the time the machine's cores have been idle (/proc/stat:
// idle and iowait, in clock ticks of 10 ms): on a machine shared with
// others, the cores this process could have had and did not take.
func idleTime(b *testing.B) time.Duration {
	b.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait ...
	if len(f) < 6 || f[0] != "cpu" {
		b.Fatalf("/proc/stat begins %q", line)
	}
	var ticks int64
	for _, v := range f[4:6] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// kvStream is the stream behind the presence bucket.
type kvStream struct{ s jetstream.Stream }

func openBucketStream(b *testing.B, nc *nats.Conn) kvStream {
	b.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bucketStream)
	if err != nil {
		b.Fatal(err)
	}
	return kvStream{s}
}

// writes is the number of writes the bucket has taken: its stream's last
// sequence.
func (k kvStream) writes(b *testing.B) uint64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	info, err := k.s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return info.State.LastSeq
}
