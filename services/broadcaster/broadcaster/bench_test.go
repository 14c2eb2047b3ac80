package broadcaster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
)

// Sizes of BenchmarkStore.
const (
	storeRooms = 1_000
	storeUsers = 10_000
	// storeText is a post's text: a line of chat as people type it.
	storeText = "a line of chat, about as long as people type them: sixty"
)

// BenchmarkStore measures how many posts a second broadcasters store in
// the CHAT stream, posted as the edges post them: a request on
// chat.in.room.<room> (1,000 rooms) with a user, an id (so a
// Nats-Msg-Id for the stream's de-duplication), the edge and the session,
// answered with the seq once JetStream acked the store. window posts wait
// for their answers at any time, as many edges' users posting at once
// would. The stream has the default retention (10,000 messages a room, 30
// days, 10 GiB) and file storage; R1 on one server, R3 on three servers
// clustered in this process. One operation is one post stored and
// answered; posts/s counts until the last answer. cpu-us/post is the
// process's CPU per post: the servers, the broadcasters and the poster
// share the process, its GOMAXPROCS and its CPU; idle-cores is the
// machine's idle cores meanwhile (others' load shows as fewer);
// catch-up-ms, with R3, how long after the last answer every replica was
// current.
//
//	flock /tmp/natter-bench.lock go test -run '^$' -bench Store -benchtime 200000x -cpu 1,2 ./services/broadcaster/broadcaster
func BenchmarkStore(b *testing.B) {
	for _, c := range []struct{ replicas, broadcasters, window int }{
		{1, 1, 256}, {1, 1, 1024}, {1, 1, 4096},
		{1, 2, 1024},
		{3, 1, 1024}, {3, 2, 1024},
	} {
		b.Run(fmt.Sprintf("R%d/broadcasters=%d/window=%d", c.replicas, c.broadcasters, c.window), func(b *testing.B) {
			benchStore(b, c.replicas, c.broadcasters, c.window)
		})
	}
}

func benchStore(b *testing.B, replicas, broadcasters, window int) {
	var url string
	var nc *nats.Conn
	if replicas == 1 {
		ns := natstest.Start(b)
		url, nc = ns.ClientURL(), natstest.Connect(b, ns)
	} else {
		c := natstest.StartCluster(b, replicas)
		url, nc = c.URL(), c.Connect(b)
	}
	cfg := Config{Retention: config.Defaults[config.Retention](), Replicas: replicas}
	for range broadcasters {
		serving(b, startWith(b, url, cfg))
	}
	natstest.WaitReplicas(b, nc, subject.Stream, replicas)
	// The stream answers: its leader is elected.
	postStored(b, nc, "room-0", "first", "first")

	inbox := nc.NewInbox()
	replies := make(chan *nats.Msg, window)
	if _, err := nc.ChanSubscribe(inbox, replies); err != nil {
		b.Fatal(err)
	}
	subjects := make([]string, storeRooms)
	for r := range subjects {
		subjects[r] = subject.InRoom(fmt.Sprintf("room-%d", r))
	}
	waiting := 0
	await := func() {
		select {
		case m := <-replies:
			waiting--
			if !bytes.Contains(m.Data, []byte(`"seq"`)) {
				b.Fatalf("a post answered %s", m.Data)
			}
		case <-time.After(30 * time.Second):
			b.Fatalf("no answer for 30 s, %d posts waiting", waiting)
		}
	}
	var body []byte
	posted := 0
	cpu0, idle0 := cpuTime(b), idleTime(b)
	start := time.Now()
	for b.Loop() {
		for waiting >= window {
			await()
		}
		body = fmt.Appendf(body[:0], `{"room":"room-%d","from":"u%d","text":%q,"id":"%d","edge":"edge-1","session":"0123456789abcdef"}`,
			posted%storeRooms, posted%storeUsers, storeText, posted)
		if err := nc.PublishRequest(subjects[posted%storeRooms], inbox, body); err != nil {
			b.Fatal(err)
		}
		waiting++
		posted++
	}
	for waiting > 0 {
		await()
	}
	elapsed := time.Since(start)
	cpu, idle := cpuTime(b)-cpu0, idleTime(b)-idle0
	b.ReportMetric(float64(posted)/elapsed.Seconds(), "posts/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(posted), "cpu-us/post")
	b.ReportMetric(idle.Seconds()/elapsed.Seconds(), "idle-cores")
	if replicas > 1 {
		// A store is acked once a majority has it; the others catch up.
		natstest.WaitReplicas(b, nc, subject.Stream, replicas)
		b.ReportMetric(float64(time.Since(start.Add(elapsed)).Milliseconds()), "catch-up-ms")
	}

	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, subject.Stream)
	if err != nil {
		b.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if info.State.Msgs != uint64(posted)+1 {
		b.Fatalf("%d messages in the stream, want %d", info.State.Msgs, posted+1)
	}
}

// cpuTime is the CPU this process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleTime is the time the machine's cores have been idle (/proc/stat:
// idle and iowait, in clock ticks of 10 ms).
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
