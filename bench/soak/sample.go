package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// sample is one line of the samples file: the server's processes, its
// streams and edges, and the generator, over the interval ending at T.
type sample struct {
	T       float64                 `json:"t"` // seconds since the load started
	Time    string                  `json:"time"`
	Procs   []procSample            `json:"procs"`
	Streams map[string]streamSample `json:"streams"`
	Edges   edgeSample              `json:"edges"`
	Gen     genSample               `json:"gen"`
}

type procSample struct {
	Name       string  `json:"name"`
	RSS        int64   `json:"rss"`                  // bytes, /proc/<pid>/status VmRSS
	CPU        float64 `json:"cpu"`                  // cores over the interval
	Goroutines int     `json:"goroutines,omitempty"` // go_goroutines of its /metrics
	FDs        int     `json:"fds"`                  // process_open_fds of its /metrics, else /proc/<pid>/fd
	Heap       int64   `json:"heap_inuse,omitempty"` // go_memstats_heap_inuse_bytes
	Err        string  `json:"err,omitempty"`
}

type streamSample struct {
	Bytes uint64 `json:"bytes"`
	Msgs  uint64 `json:"msgs"`
}

// edgeSample sums the edges' own figures ($SRV.STATS.natter-edge).
type edgeSample struct {
	Answered     int   `json:"answered"` // edges that answered
	Connections  int64 `json:"connections"`
	SendQueue    int   `json:"send_queue"`     // summed
	SendQueueMax int   `json:"send_queue_max"` // the largest
	// P99ms is natter_edge_delivery_seconds's p99 over the interval, the
	// upper bound of its bucket (0.5 ms to 10 s), from the edges' own
	// clocks: the server's part of the delivery.
	P99ms float64 `json:"p99_ms"`
}

type genSample struct {
	CPU          float64 `json:"cpu"` // the generator's cores
	RSS          int64   `json:"rss"`
	Delivered    int64   `json:"delivered"` // live room messages received in the interval
	PerSec       float64 `json:"per_s"`     // the same per second
	Replayed     int64   `json:"replayed"`  // room messages replayed by since
	DMs          int64   `json:"dms"`       // live dms received
	Posts        int64   `json:"posts"`     // room messages and dms sent
	Acks         int64   `json:"acks"`      // acked
	Connects     int64   `json:"connects"`  // connections opened
	Drops        int64   `json:"drops"`     // dropped without a close
	Closes       int64   `json:"closes"`    // closed cleanly
	ServerCloses int64   `json:"server_closes"`
	Joins        int64   `json:"joins"`   // afresh
	Rejoins      int64   `json:"rejoins"` // with since
	Leaves       int64   `json:"leaves"`
	Typing       int64   `json:"typing"` // typing signals sent
	Errors       int     `json:"errors"` // so far
	Latencies    int64   `json:"latencies"`
	P50ms        float64 `json:"p50_ms"` // live deliveries, send to receive
	P99ms        float64 `json:"p99_ms"`
	Maxms        float64 `json:"max_ms"`
}

// watched is one process of the server.
type watched struct {
	name    string
	pid     int
	metrics string // its /metrics URL, "" for none (the NATS server)
	cpu     time.Duration
	buckets map[float64]float64 // the delivery histogram at the last sample
}

// parseProcs reads -procs: name=pid[@host:port],...
func parseProcs(s string) ([]*watched, error) {
	var out []*watched
	for item := range strings.SplitSeq(s, ",") {
		if item == "" {
			continue
		}
		name, rest, ok := strings.Cut(item, "=")
		pidText, addr, _ := strings.Cut(rest, "@")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			return nil, fmt.Errorf("-procs: %q is not name=pid[@host:port]", item)
		}
		w := &watched{name: name, pid: pid}
		if addr != "" {
			w.metrics = "http://" + addr + "/metrics"
		}
		w.cpu = cpuTime(pid)
		out = append(out, w)
	}
	return out, nil
}

// sampler takes the samples.
type sampler struct {
	g      *gen
	procs  []*watched
	nc     *nats.Conn
	js     jetstream.JetStream
	http   *http.Client
	start  time.Time
	last   time.Time
	prev   genTotals
	ownCPU time.Duration
}

// genTotals are the generator's counters at a sample.
type genTotals struct {
	live, replayed, dms, posts, acks, connects, drops, closes, serverCloses, joins, rejoins, leaves, typing int64
}

func (g *gen) totals() genTotals {
	c := &g.cnt
	return genTotals{
		live: c.live.Load(), replayed: c.replayed.Load(), dms: c.dms.Load(),
		posts: c.posts.Load() + c.dmsSent.Load(), acks: c.acks.Load(),
		connects: c.connects.Load(), drops: c.drops.Load(), closes: c.disconnects.Load(),
		serverCloses: c.serverCloses.Load(), joins: c.joins.Load(), rejoins: c.rejoins.Load(),
		leaves: c.leaves.Load(), typing: c.typingSent.Load(),
	}
}

func newSampler(g *gen, procs []*watched, nc *nats.Conn) (*sampler, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	s := &sampler{g: g, procs: procs, nc: nc, js: js, http: &http.Client{Timeout: 3 * time.Second}, start: now, last: now, prev: g.totals(), ownCPU: ownCPU()}
	for _, p := range procs {
		if p.metrics != "" {
			if m, err := s.scrape(p.metrics); err == nil {
				p.buckets = m.buckets
			}
		}
	}
	g.turn()
	return s, nil
}

// take takes one sample: what changed since the last.
func (s *sampler) take(ctx context.Context) sample {
	now := time.Now()
	interval := now.Sub(s.last).Seconds()
	s.last = now
	out := sample{T: math.Round(now.Sub(s.start).Seconds()*10) / 10, Time: now.UTC().Format(time.RFC3339), Streams: map[string]streamSample{}}
	delta := map[float64]float64{}
	for _, p := range s.procs {
		ps := procSample{Name: p.name, RSS: rss(p.pid)}
		cpu := cpuTime(p.pid)
		ps.CPU = (cpu - p.cpu).Seconds() / interval
		p.cpu = cpu
		if p.metrics == "" {
			ps.FDs = countFDs(p.pid)
		} else if m, err := s.scrape(p.metrics); err != nil {
			ps.Err = err.Error()
			ps.FDs = countFDs(p.pid)
		} else {
			ps.Goroutines, ps.FDs, ps.Heap = int(m.goroutines), int(m.fds), int64(m.heap)
			for le, n := range m.buckets {
				delta[le] += n - p.buckets[le]
			}
			p.buckets = m.buckets
		}
		out.Procs = append(out.Procs, ps)
	}
	out.Edges = s.edgeStats(ctx)
	out.Edges.P99ms = histP99(delta)
	for _, name := range []string{"CHAT", "CHAT_DM"} {
		if st, err := s.stream(ctx, name); err == nil {
			out.Streams[name] = st
		}
	}

	g := s.g
	t := g.totals()
	own := ownCPU()
	n, q := g.turn().quantiles(0.5, 0.99, 1)
	out.Gen = genSample{
		CPU: (own - s.ownCPU).Seconds() / interval, RSS: rss(os.Getpid()),
		Delivered: t.live - s.prev.live, PerSec: float64(t.live-s.prev.live) / interval,
		Replayed: t.replayed - s.prev.replayed, DMs: t.dms - s.prev.dms,
		Posts: t.posts - s.prev.posts, Acks: t.acks - s.prev.acks,
		Connects: t.connects - s.prev.connects, Drops: t.drops - s.prev.drops, Closes: t.closes - s.prev.closes,
		ServerCloses: t.serverCloses - s.prev.serverCloses, Joins: t.joins - s.prev.joins,
		Rejoins: t.rejoins - s.prev.rejoins, Leaves: t.leaves - s.prev.leaves, Typing: t.typing - s.prev.typing,
		Errors: g.errs.total(), Latencies: int64(n), P50ms: q[0], P99ms: q[1], Maxms: q[2],
	}
	s.prev, s.ownCPU = t, own
	return out
}

// stream reads a stream's size from JetStream.
func (s *sampler) stream(ctx context.Context, name string) (streamSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return streamSample{}, err
	}
	info := st.CachedInfo()
	return streamSample{Bytes: info.State.Bytes, Msgs: info.State.Msgs}, nil
}

// edgeStats asks every edge for its figures on the services framework's
// stats subject and sums the answers that come within a second (all of
// them, usually, long before).
func (s *sampler) edgeStats(ctx context.Context) edgeSample {
	var out edgeSample
	inbox := s.nc.NewRespInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return out
	}
	defer func() { _ = sub.Unsubscribe() }()
	// "natter-edge" is the edge's service name (shared/subject.ServiceEdge);
	// the bench module does not import the services' modules.
	if err := s.nc.PublishRequest("$SRV.STATS.natter-edge", inbox, nil); err != nil {
		return out
	}
	deadline := time.Now().Add(time.Second)
	for out.Answered < len(s.g.addrs) {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var st micro.Stats
		if json.Unmarshal(msg.Data, &st) != nil {
			continue
		}
		out.Answered++
		for _, ep := range st.Endpoints {
			var d struct {
				Connections  int64 `json:"connections"`
				SendQueue    int   `json:"send_queue"`
				SendQueueMax int   `json:"send_queue_max"`
			}
			if json.Unmarshal(ep.Data, &d) == nil {
				out.Connections += d.Connections
				out.SendQueue += d.SendQueue
				out.SendQueueMax = max(out.SendQueueMax, d.SendQueueMax)
				break // every endpoint carries the same figures
			}
		}
	}
	return out
}

// metrics are the few series the soak reads from a /metrics.
type metrics struct {
	goroutines, fds, heap float64
	buckets               map[float64]float64 // natter_edge_delivery_seconds_bucket by le
}

func (s *sampler) scrape(url string) (metrics, error) {
	m := metrics{buckets: map[float64]float64{}}
	resp, err := s.http.Get(url)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("%s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch {
		case name == "go_goroutines":
			m.goroutines = v
		case name == "process_open_fds":
			m.fds = v
		case name == "go_memstats_heap_inuse_bytes":
			m.heap = v
		case strings.HasPrefix(name, `natter_edge_delivery_seconds_bucket{le="`):
			le := strings.TrimSuffix(strings.TrimPrefix(name, `natter_edge_delivery_seconds_bucket{le="`), `"}`)
			if b, err := strconv.ParseFloat(le, 64); err == nil {
				m.buckets[b] = v
			}
		}
	}
	return m, sc.Err()
}

// histP99 is the upper bound, in ms, of the bucket holding the 99th
// percentile of a cumulative histogram's growth; 0 without observations,
// and the largest finite bound past it.
func histP99(delta map[float64]float64) float64 {
	les := make([]float64, 0, len(delta))
	for le := range delta {
		les = append(les, le)
	}
	slices.Sort(les)
	if len(les) == 0 || delta[les[len(les)-1]] <= 0 {
		return 0
	}
	total := delta[les[len(les)-1]] // +Inf
	for i, le := range les {
		if delta[le] >= 0.99*total {
			if math.IsInf(le, 1) && i > 0 {
				return les[i-1] * 1000
			}
			return le * 1000
		}
	}
	return 0
}

// rss is the resident set of pid in bytes, 0 when unknown.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// cpuTime is the user and system time pid has used.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command, which may hold spaces, in parentheses.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(utime+stime) * time.Second / clkTck
}

func countFDs(pid int) int {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	return len(entries)
}

func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
