// Command loadgen drives a chat server over WebSockets and measures it:
// natter (docs/protocol.md) or the gorilla/websocket examples/chat server, the
// seed's design without NATS or storage. N connections, spread over
// 127.0.0.x source addresses, in rooms of S members (gorilla: one room);
// P of them publish at a rate; every message carries its send time and an
// id, and every receiver computes the end-to-end latency. It reports the
// connect rate, deliveries per second against the expected, loss, latency
// percentiles, the server's RSS and CPU over the window (from /proc of its
// pid), the idle RSS per connection and its own CPU: one JSON line, and a
// table for people.
//
//	loadgen -target natter -addr 127.0.0.1:8080 -pid 1234 -conns 1000 -room-size 1000 -publishers 10 -rate 10
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type config struct {
	Scenario    string        `json:"scenario"`
	Target      string        `json:"target"`
	Addr        string        `json:"-"`
	PID         int           `json:"-"`
	Conns       int           `json:"conns"`
	RoomSize    int           `json:"room_size"`
	Publishers  int           `json:"publishers"`
	Rate        float64       `json:"rate_per_publisher"`
	Size        int           `json:"size"`
	Warmup      time.Duration `json:"-"`
	Measure     time.Duration `json:"-"`
	Drain       time.Duration `json:"-"`
	Sources     int           `json:"sources"`
	SourceBase  int           `json:"source_base"`
	Concurrency int           `json:"-"`
	Rejoin      bool          `json:"rejoin"`
	NoJoin      bool          `json:"no_join,omitempty"`
	Out         string        `json:"-"`
	cpuProfile  string
}

// result is the machine-readable line of one run.
type result struct {
	config
	Time              string   `json:"time"`
	Connected         int      `json:"connected"`
	ConnectPerSec     float64  `json:"connect_per_s"`
	ConnectCPUus      float64  `json:"connect_server_cpu_us"` // the server's CPU per connection while connecting
	IdleRSSPerConnKiB float64  `json:"idle_rss_per_conn_kib"`
	Sent              int64    `json:"sent"`
	Expected          int64    `json:"expected_deliveries"`
	Delivered         int64    `json:"deliveries"`
	DeliveriesPerSec  float64  `json:"deliveries_per_s"`
	ExpectedPerSec    float64  `json:"expected_per_s"`
	LossPct           float64  `json:"loss_pct"`
	P50ms             float64  `json:"p50_ms"`
	P90ms             float64  `json:"p90_ms"`
	P99ms             float64  `json:"p99_ms"`
	Maxms             float64  `json:"max_ms"`
	ServerRSSMiB      float64  `json:"server_rss_mib"`
	ServerCPU         float64  `json:"server_cpu_cores"`
	OwnCPU            float64  `json:"own_cpu_cores"`
	Closed            int64    `json:"closed_by_server"`
	RejoinSeconds     float64  `json:"rejoin_s,omitempty"`
	Recovered         int      `json:"recovered_clients,omitempty"`
	Errors            []string `json:"errors,omitempty"`
}

func main() {
	var c config
	flag.StringVar(&c.Scenario, "scenario", "", "a label for the run")
	flag.StringVar(&c.Target, "target", "natter", "natter or gorilla")
	flag.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "the server's HTTP address")
	flag.IntVar(&c.PID, "pid", 0, "the server's pid, for its RSS and CPU (0: not measured)")
	flag.IntVar(&c.Conns, "conns", 1000, "connections")
	flag.IntVar(&c.RoomSize, "room-size", 1000, "members per room (natter; gorilla has one room)")
	flag.IntVar(&c.Publishers, "publishers", 10, "connections that publish (spread over the rooms)")
	flag.Float64Var(&c.Rate, "rate", 10, "messages a second per publisher")
	flag.IntVar(&c.Size, "size", 64, "message text size in bytes (at least 48)")
	flag.DurationVar(&c.Warmup, "warmup", 2*time.Second, "publishing before the window")
	flag.DurationVar(&c.Measure, "measure", 10*time.Second, "the measured window")
	flag.DurationVar(&c.Drain, "drain", 3*time.Second, "how long to wait for the window's last messages")
	flag.IntVar(&c.Sources, "sources", 0, "source addresses 127.0.0.<source-base>.. (0: one per 10,000 connections)")
	flag.IntVar(&c.SourceBase, "source-base", 1, "the last byte of the first source address: a run right after another uses others, whose ports are still in TIME_WAIT")
	flag.IntVar(&c.Concurrency, "concurrency", 200, "connections being opened at once")
	flag.BoolVar(&c.Rejoin, "rejoin", false, "natter: at the window's start every client drops and rejoins with since")
	flag.BoolVar(&c.NoJoin, "no-join", false, "natter: connect without joining a room (the connect alone, as gorilla's runs measure it); no publishing")
	flag.StringVar(&c.Out, "out", "", "append the JSON line to this file too")
	failP99 := flag.Duration("fail-p99", 0, "exit with status 3 when p99 latency is above this (0: never)")
	failLoss := flag.Float64("fail-loss", -1, "exit with status 3 when loss in percent is above this (negative: never)")
	report := flag.String("report", "", "print the Markdown table of the runs in this JSON-lines file, and exit")
	command := flag.String("command", "", "with -report: the command the runs came from, for the table's header")
	cpuProfile := flag.String("cpuprofile", "", "write the generator's own CPU profile of the connect phase to this file")
	flag.Parse()
	if *report != "" {
		if err := printReport(os.Stdout, *report, *command); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		return
	}
	if c.SourceBase < 1 || c.SourceBase+c.Sources > 255 {
		fmt.Fprintln(os.Stderr, "loadgen: -source-base and -sources must keep the addresses within 127.0.0.1-254")
		os.Exit(2)
	}
	if c.NoJoin && (c.Publishers > 0 || c.Rejoin) {
		fmt.Fprintln(os.Stderr, "loadgen: -no-join connects only: it needs -publishers 0 and no -rejoin")
		os.Exit(2)
	}
	if c.Sources <= 0 {
		c.Sources = (c.Conns + 9999) / 10000
	}
	c.Size = max(c.Size, 48)
	if c.Target == "gorilla" {
		c.RoomSize = c.Conns
		c.Size = min(c.Size, 500) // its read limit is 512 bytes
	}
	c.cpuProfile = *cpuProfile
	// The generator's own memory is not measured: fewer collections leave
	// more of its core to the connections (F measures the server's rate,
	// not the generator's).
	debug.SetGCPercent(400)
	r, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	if c.Out != "" {
		f, err := os.OpenFile(c.Out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, _ = f.Write(append(line, '\n'))
			_ = f.Close()
		}
	}
	printTable(os.Stderr, r)
	if (*failP99 > 0 && r.P99ms > ms(*failP99)) || (*failLoss >= 0 && r.LossPct > *failLoss) {
		os.Exit(3)
	}
}

// printReport writes the runs of a JSON-lines file as a Markdown table.
func printReport(w io.Writer, path, command string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var runs []result
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r result
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		return fmt.Errorf("%s: no runs", path)
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	fmt.Fprintf(w, "# Load runs, %s\n\n", runs[0].Time)
	fmt.Fprintf(w, "Command: `%s`. Machine: %s, %d cores; server on CPU 0, generator on CPU 1, GOMAXPROCS=1 for both (M-*: the compose mesh's ten containers on both cores, not measured here).\n\n", command, cpu, runtime.NumCPU())
	fmt.Fprintln(w, "| scenario | target | conns | room | pubs x rate | connect/s | idle KiB/conn | deliveries/s (expected) | loss % | p50 / p99 / max ms | server cores | server MiB | closed |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range runs {
		room := strconv.Itoa(r.RoomSize)
		if r.NoJoin {
			room = "none"
		}
		idle, cores, mib := fmt.Sprintf("%.1f", r.IdleRSSPerConnKiB), fmt.Sprintf("%.2f", r.ServerCPU), fmt.Sprintf("%.0f", r.ServerRSSMiB)
		if r.ServerRSSMiB == 0 {
			idle, cores, mib = "–", "–", "–" // no one server process to measure (the compose mesh)
		}
		fmt.Fprintf(w, "| %s | %s | %d/%d | %s | %d x %g | %.0f | %s | %.0f (%.0f) | %.3f | %.1f / %.1f / %.1f | %s | %s | %d |\n",
			r.Scenario, r.Target, r.Connected, r.Conns, room, r.Publishers, r.Rate, r.ConnectPerSec, idle,
			r.DeliveriesPerSec, r.ExpectedPerSec, r.LossPct, r.P50ms, r.P99ms, r.Maxms, cores, mib, r.Closed)
		if r.Rejoin {
			fmt.Fprintf(w, "|  | (rejoin) | all back in %.2f s, %d recovered |  |  |  |  |  |  |  |  |  |  |\n", r.RejoinSeconds, r.Recovered)
		}
	}
	return nil
}

// client is one connection.
type client struct {
	id        int
	user      string
	room      string
	conn      *wsConn
	lastSeq   atomic.Uint64 // natter: the newest seq received
	joined    chan struct{} // natter: closed at joined
	recovered atomic.Bool   // natter: the last joined said recovered
	publisher bool
}

// stats are the receivers' shared counters.
type stats struct {
	windowStart, windowEnd atomic.Int64 // unix nanos of the window; 0 before
	delivered              atomic.Int64 // deliveries of messages sent in the window
	closed                 atomic.Int64

	mu        sync.Mutex
	latencies []time.Duration // guarded by mu
}

func (s *stats) record(sent int64, now time.Time) {
	ws, we := s.windowStart.Load(), s.windowEnd.Load()
	if ws == 0 || sent < ws || (we != 0 && sent > we) {
		return
	}
	s.delivered.Add(1)
	s.mu.Lock()
	s.latencies = append(s.latencies, now.Sub(time.Unix(0, sent)))
	s.mu.Unlock()
}

func run(c config) (*result, error) {
	res := &result{config: c, Time: time.Now().UTC().Format(time.RFC3339)}
	baseRSS := rss(c.PID)
	clients := make([]*client, c.Conns)
	for i := range clients {
		cl := &client{id: i, user: fmt.Sprintf("u%d", i), joined: make(chan struct{})}
		if c.Target == "natter" {
			cl.room = fmt.Sprintf("r%d", i/c.RoomSize)
		}
		clients[i] = cl
	}
	st := &stats{}
	var readers sync.WaitGroup
	defer readers.Wait()

	// Connect.
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return nil, err
		}
	}
	connectCPU := cpuTime(c.PID)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var errs errList
	var wg sync.WaitGroup
	var connected atomic.Int64
	// Concurrency workers open the connections, each one at a time: a
	// goroutine per connection would grow a stack for each.
	var next atomic.Int64
	for range min(c.Concurrency, len(clients)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(clients)); i = next.Add(1) - 1 {
				cl := clients[i]
				if err := dial(ctx, c, cl); err != nil {
					errs.add(err)
					continue
				}
				connected.Add(1)
				readers.Go(func() { read(c, cl, st) })
				if c.Target != "natter" || c.NoJoin {
					continue
				}
				if err := cl.send(fmt.Sprintf(`{"type":"join","room":%q}`, cl.room)); err != nil {
					errs.add(err)
					continue
				}
				select {
				case <-cl.joined:
				case <-ctx.Done():
					errs.add(fmt.Errorf("%s: no joined", cl.user))
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if c.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	res.Connected = int(connected.Load())
	res.ConnectPerSec = float64(res.Connected) / elapsed.Seconds()
	if res.Connected > 0 {
		res.ConnectCPUus = float64((cpuTime(c.PID) - connectCPU).Microseconds()) / float64(res.Connected)
	}
	defer func() {
		for _, cl := range clients {
			if cl.conn != nil {
				_ = cl.conn.Close()
			}
		}
	}()
	if res.Connected == 0 {
		return res, fmt.Errorf("no connection: %v", errs.list())
	}
	// Idle memory, once the server has settled.
	time.Sleep(2 * time.Second)
	if c.PID > 0 {
		res.IdleRSSPerConnKiB = float64(rss(c.PID)-baseRSS) / 1024 / float64(res.Connected)
	}

	// Publish: warm-up, then the window.
	pubs := publishers(c, clients)
	for _, p := range pubs {
		p.publisher = true
	}
	stop := make(chan struct{})
	var sent, expected atomic.Int64
	var pw sync.WaitGroup
	for i, p := range pubs {
		pw.Go(func() { publish(c, p, i, stop, st, &sent, &expected) })
	}
	time.Sleep(c.Warmup)
	cpu0, own0 := cpuTime(c.PID), ownCPU()
	winStart := time.Now()
	st.windowStart.Store(winStart.UnixNano())
	if c.Rejoin {
		res.RejoinSeconds, res.Recovered = rejoinAll(ctx, c, clients, st, &readers, &errs)
	}
	time.Sleep(time.Until(winStart.Add(c.Measure)))
	winEnd := time.Now()
	st.windowEnd.Store(winEnd.UnixNano())
	cpu1, own1 := cpuTime(c.PID), ownCPU()
	res.ServerRSSMiB = float64(rss(c.PID)) / (1 << 20)
	close(stop)
	pw.Wait()
	time.Sleep(c.Drain)

	window := winEnd.Sub(winStart).Seconds()
	res.Sent = sent.Load()
	res.Expected = expected.Load()
	res.Delivered = st.delivered.Load()
	res.DeliveriesPerSec = float64(res.Delivered) / window
	res.ExpectedPerSec = float64(res.Expected) / window
	if res.Expected > 0 {
		res.LossPct = 100 * float64(max(res.Expected-res.Delivered, 0)) / float64(res.Expected)
	}
	res.ServerCPU = (cpu1 - cpu0).Seconds() / window
	res.OwnCPU = (own1 - own0).Seconds() / window
	res.Closed = st.closed.Load()
	st.mu.Lock()
	lat := slices.Clone(st.latencies)
	st.mu.Unlock()
	slices.Sort(lat)
	res.P50ms, res.P90ms, res.P99ms = pct(lat, 50), pct(lat, 90), pct(lat, 99)
	if len(lat) > 0 {
		res.Maxms = ms(lat[len(lat)-1])
	}
	res.Errors = errs.list()
	return res, nil
}

// dial opens cl's connection, from one of the source addresses when the
// server is on loopback; to another address (a container's, say) the
// system picks the source, and one source holds some 27,000 connections.
func dial(ctx context.Context, c config, cl *client) error {
	var src *net.TCPAddr
	if host, _, err := net.SplitHostPort(c.Addr); err == nil && net.ParseIP(host).IsLoopback() {
		src = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(c.SourceBase+cl.id%c.Sources))}
	}
	path := "/ws"
	if c.Target == "natter" {
		path += "?user=" + cl.user
	}
	conn, err := dialWS(ctx, src, c.Addr, path)
	if err != nil {
		return fmt.Errorf("%s: %w", cl.user, err)
	}
	cl.conn = conn
	return nil
}

func (cl *client) send(s string) error {
	return cl.conn.WriteText([]byte(s))
}

// read is cl's receiver: it finds each message's send time and counts it.
func read(c config, cl *client, st *stats) {
	conn := cl.conn
	joined := cl.joined
	for {
		data, err := conn.ReadMessage()
		if err != nil {
			var ce *closeError
			if errors.As(err, &ce) && ce.code != websocket.CloseNormalClosure {
				st.closed.Add(1)
			}
			return
		}
		now := time.Now()
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			if c.Target == "gorilla" {
				if sent, ok := sendTime(line); ok {
					st.record(sent, now)
				}
				continue
			}
			switch {
			case bytes.Contains(line, []byte(`"type":"message"`)):
				if seq, ok := field(line, `"seq":`); ok {
					cl.lastSeq.Store(max(cl.lastSeq.Load(), seq))
				}
				if text, ok := textOf(line); ok {
					if sent, ok := sendTime(text); ok {
						st.record(sent, now)
					}
				}
			case bytes.Contains(line, []byte(`"type":"joined"`)):
				if seq, ok := field(line, `"seq":`); ok {
					cl.lastSeq.Store(max(cl.lastSeq.Load(), seq))
				}
				cl.recovered.Store(bytes.Contains(line, []byte(`"recovered":true`)))
				select {
				case <-joined:
				default:
					close(joined)
				}
			}
		}
	}
}

// textOf returns the text field of an event line; the generator's texts
// hold no escapes.
func textOf(line []byte) ([]byte, bool) {
	_, after, ok := bytes.Cut(line, []byte(`"text":"`))
	if !ok {
		return nil, false
	}
	text, _, ok := bytes.Cut(after, []byte{'"'})
	return text, ok
}

func field(line []byte, name string) (uint64, bool) {
	_, after, ok := bytes.Cut(line, []byte(name))
	if !ok {
		return 0, false
	}
	end := bytes.IndexFunc(after, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(after)
	}
	n, err := strconv.ParseUint(string(after[:end]), 10, 64)
	return n, err == nil
}

// A message text is "lg <sendUnixNano> <publisher>-<n> <padding>".
func sendTime(text []byte) (int64, bool) {
	rest, ok := bytes.CutPrefix(text, []byte("lg "))
	if !ok {
		return 0, false
	}
	num, _, _ := bytes.Cut(rest, []byte{' '})
	n, err := strconv.ParseInt(string(num), 10, 64)
	return n, err == nil
}

// publishers picks P clients spread over the rooms.
func publishers(c config, clients []*client) []*client {
	var out []*client
	if c.Publishers <= 0 {
		return nil
	}
	step := max(len(clients)/c.Publishers, 1)
	for i := 0; i < len(clients) && len(out) < c.Publishers; i += step {
		if clients[i].conn != nil {
			out = append(out, clients[i])
		}
	}
	return out
}

func publish(c config, p *client, idx int, stop <-chan struct{}, st *stats, sent, expected *atomic.Int64) {
	if c.Rate <= 0 {
		return
	}
	interval := time.Duration(float64(time.Second) / c.Rate)
	// Publishers start spread over one interval, not all at once.
	next := time.Now().Add(interval * time.Duration(idx) / time.Duration(max(c.Publishers, 1)))
	members := int64(c.RoomSize)
	if c.Target == "natter" {
		members = int64(min(c.RoomSize, c.Conns-(p.id/c.RoomSize)*c.RoomSize))
	}
	pad := strings.Repeat("x", max(c.Size-40, 0))
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-time.After(time.Until(next)):
		}
		next = next.Add(interval)
		now := time.Now().UnixNano()
		text := fmt.Sprintf("lg %d %d-%d %s", now, idx, n, pad)
		msg := text
		if c.Target == "natter" {
			msg = fmt.Sprintf(`{"type":"message","room":%q,"text":%q,"id":"%d-%d"}`, p.room, text, idx, n)
		}
		if err := p.send(msg); err != nil {
			return
		}
		ws, we := st.windowStart.Load(), st.windowEnd.Load()
		if ws != 0 && now >= ws && (we == 0 || now <= we) {
			sent.Add(1)
			expected.Add(members)
		}
	}
}

// rejoinAll drops every client at once and has each rejoin with since;
// it returns how long until all were joined again and how many said
// recovered.
func rejoinAll(ctx context.Context, c config, clients []*client, st *stats, readers *sync.WaitGroup, errs *errList) (float64, int) {
	// The publishers stay: messages keep coming while the others are away.
	var away []*client
	for _, cl := range clients {
		if cl.conn != nil && !cl.publisher {
			_ = cl.conn.Close()
			away = append(away, cl)
		}
	}
	start := time.Now()
	var recovered atomic.Int64
	sem := make(chan struct{}, c.Concurrency)
	var wg sync.WaitGroup
	for _, cl := range away {
		since := cl.lastSeq.Load()
		cl.joined = make(chan struct{})
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := dial(ctx, c, cl); err != nil {
				errs.add(err)
				return
			}
			readers.Go(func() { read(c, cl, st) })
			if err := cl.send(fmt.Sprintf(`{"type":"join","room":%q,"since":%d}`, cl.room, since)); err != nil {
				errs.add(err)
				return
			}
			select {
			case <-cl.joined:
				if cl.recovered.Load() {
					recovered.Add(1)
				}
			case <-ctx.Done():
			}
		})
	}
	wg.Wait()
	return time.Since(start).Seconds(), int(recovered.Load())
}

type errList struct {
	mu   sync.Mutex
	errs []string
	n    int
}

func (e *errList) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if len(e.errs) < 5 {
		e.errs = append(e.errs, err.Error())
	}
}

func (e *errList) list() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n > len(e.errs) {
		return append(slices.Clone(e.errs), fmt.Sprintf("and %d more", e.n-len(e.errs)))
	}
	return slices.Clone(e.errs)
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(float64(len(sorted))*p/100), len(sorted)-1)
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// rss is the resident set of pid in bytes, 0 when unknown.
func rss(pid int) int64 {
	if pid <= 0 {
		return 0
	}
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
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses.
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

func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func printTable(w io.Writer, r *result) {
	fmt.Fprintf(w, "%-22s %s\n", "scenario / target", r.Scenario+" / "+r.Target)
	fmt.Fprintf(w, "%-22s %d of %d, %.0f/s, server CPU %.0f µs per connection\n", "connected", r.Connected, r.Conns, r.ConnectPerSec, r.ConnectCPUus)
	fmt.Fprintf(w, "%-22s %.1f KiB\n", "idle RSS per conn", r.IdleRSSPerConnKiB)
	fmt.Fprintf(w, "%-22s %.0f/s of %.0f/s expected, loss %.3f%%\n", "deliveries", r.DeliveriesPerSec, r.ExpectedPerSec, r.LossPct)
	fmt.Fprintf(w, "%-22s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n", "latency", r.P50ms, r.P90ms, r.P99ms, r.Maxms)
	fmt.Fprintf(w, "%-22s %.0f MiB RSS, %.2f cores\n", "server", r.ServerRSSMiB, r.ServerCPU)
	fmt.Fprintf(w, "%-22s %.2f cores\n", "generator", r.OwnCPU)
	if r.Rejoin {
		fmt.Fprintf(w, "%-22s the others joined again in %.2f s, %d of them recovered\n", "rejoin", r.RejoinSeconds, r.Recovered)
	}
	if r.Closed > 0 {
		fmt.Fprintf(w, "%-22s %d\n", "closed by the server", r.Closed)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "%-22s %s\n", "error", e)
	}
}
