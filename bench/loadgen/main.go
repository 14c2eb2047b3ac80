// Command loadgen drives a chat server over WebSockets and measures it:
// natter (docs/protocol.md) or the gorilla/websocket examples/chat server, the
// seed's design without NATS or storage. N connections, spread over
// 127.0.0.x source addresses and over one or more server addresses, in
// rooms of S members (gorilla: one room); P of them publish at a rate;
// every message carries its send time and an id, and every receiver
// computes the end-to-end latency. It reports the connect rate,
// deliveries per second against the expected, loss, latency percentiles,
// the RSS and CPU of the server's processes over the window (from /proc of
// their pids), their idle RSS per connection and its own CPU: one JSON
// line, and a table for people. Several generator processes can make one
// run (-parties), and -report merges their lines.
//
//	loadgen -target natter -addr 127.0.0.1:8080 -pid 1234 -conns 1000 -room-size 1000 -publishers 10 -rate 10
//	loadgen -addr 127.0.0.1:8081,127.0.0.1:8082 -pid nats=10,edge-1=11,edge-2=12 ...
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
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/bench/wsclient"
)

type config struct {
	Scenario    string        `json:"scenario"`
	RunID       string        `json:"run_id,omitempty"` // the lines of one run's generators share it
	Layout      string        `json:"layout,omitempty"`
	Target      string        `json:"target"`
	Addr        string        `json:"-"`
	PIDs        string        `json:"-"`
	Edges       int           `json:"edges,omitempty"` // addresses the connections are spread over, when more than one
	Conns       int           `json:"conns"`
	UserBase    int           `json:"user_base,omitempty"`
	Parties     int           `json:"parties,omitempty"`
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
	Sync        string        `json:"-"`
	cpuProfile  string
	addrs       []endpoint
	procs       []proc
}

// result is the machine-readable line of one run.
type result struct {
	config
	Time              string       `json:"time"`
	Connected         int          `json:"connected"`
	ConnectPerSec     float64      `json:"connect_per_s"`
	ConnectSeconds    float64      `json:"connect_s"`
	ConnectCPUus      float64      `json:"connect_server_cpu_us"` // the server's CPU per connection while connecting
	IdleRSSPerConnKiB float64      `json:"idle_rss_per_conn_kib"`
	Sent              int64        `json:"sent"`
	Expected          int64        `json:"expected_deliveries"`
	Delivered         int64        `json:"deliveries"`
	DeliveriesPerSec  float64      `json:"deliveries_per_s"`
	ExpectedPerSec    float64      `json:"expected_per_s"`
	LossPct           float64      `json:"loss_pct"`
	P50ms             float64      `json:"p50_ms"`
	P90ms             float64      `json:"p90_ms"`
	P99ms             float64      `json:"p99_ms"`
	Maxms             float64      `json:"max_ms"`
	ServerRSSMiB      float64      `json:"server_rss_mib"`   // with several processes, their sum
	ServerCPU         float64      `json:"server_cpu_cores"` // with several processes, their sum
	CPUusPerDelivery  float64      `json:"server_cpu_us_per_delivery,omitempty"`
	OwnCPU            float64      `json:"own_cpu_cores"`
	MachineCPU        float64      `json:"machine_busy_cores"` // every process's and the kernel's, over the window
	SoftIRQCPU        float64      `json:"machine_softirq_cores"`
	Procs             []procResult `json:"procs,omitempty"`        // with -pid name=pid,...
	Latency           histogram    `json:"latency_hist,omitempty"` // with -run-id, for merging (measure.go)
	Closed            int64        `json:"closed_by_server"`
	RejoinSeconds     float64      `json:"rejoin_s,omitempty"`
	Recovered         int          `json:"recovered_clients,omitempty"`
	RejoinRetries     int          `json:"rejoin_retries,omitempty"` // joins tried again: refused, or the connection ended first
	Errors            []string     `json:"errors,omitempty"`
}

func main() {
	var c config
	flag.StringVar(&c.Scenario, "scenario", "", "a label for the run")
	flag.StringVar(&c.Target, "target", "natter", "natter or gorilla")
	flag.StringVar(&c.Addr, "addr", "127.0.0.1:8080", "the server's HTTP address, or several, comma-separated (each may be name=host:port; unnamed: edge-1, edge-2, ...): user i connects to address i mod their number")
	flag.StringVar(&c.PIDs, "pid", "", "the server's pid, or name=pid,... of several processes (a name of an -addr holds that address's connections), for RSS and CPU (empty or 0: not measured)")
	flag.IntVar(&c.Conns, "conns", 1000, "connections")
	flag.IntVar(&c.UserBase, "user-base", 0, "the first user's number: users u<base>.., rooms from r<base/room-size> (natter: a multiple of -room-size)")
	flag.StringVar(&c.RunID, "run-id", "", "a label shared by the generator processes of one run; -report merges their lines")
	flag.IntVar(&c.Parties, "parties", 1, "generator processes in this run, which meet in -sync before connecting and before measuring")
	flag.StringVar(&c.Sync, "sync", "", "with -parties > 1: a directory of this run's own for the generators' meeting files")
	flag.StringVar(&c.Layout, "layout", "", "how the servers and generators were laid out (a note for the report)")
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
	var err error
	if c.addrs, err = parseAddrs(c.Addr); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if len(c.addrs) > 1 {
		c.Edges = len(c.addrs)
	}
	if c.procs, err = parsePIDs(c.PIDs); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	if c.Parties > 1 && (c.Sync == "" || c.RunID == "" || c.Rejoin) {
		fmt.Fprintln(os.Stderr, "loadgen: -parties needs -sync and -run-id, and no -rejoin")
		os.Exit(2)
	}
	if c.Parties <= 1 {
		c.Parties = 0 // one process: the JSON line says nothing of parties
	}
	if c.UserBase < 0 || (c.Target == "natter" && c.UserBase%max(c.RoomSize, 1) != 0) {
		fmt.Fprintln(os.Stderr, "loadgen: -user-base must be a multiple of -room-size, so that no room is split between generators")
		os.Exit(2)
	}
	if c.Sources <= 0 {
		c.Sources = (c.Conns + 9999) / 10000
	}
	c.Size = max(c.Size, 48)
	if c.Target == "gorilla" {
		c.RoomSize = c.Conns
		c.UserBase = 0
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

// client is one connection.
type client struct {
	id      int // its index in this generator
	user    string
	edge    int // the index of its address in -addr
	room    string
	conn    *wsclient.Conn
	lastSeq atomic.Uint64 // natter: the newest seq received
	joined  chan struct{} // natter: closed at joined
	// ended is closed when the connection's reader returns, refused at
	// an error event (natter: a join answered unavailable); each
	// connection has its own.
	ended, refused chan struct{}
	recovered      atomic.Bool // natter: the last joined said recovered
	publisher      bool
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
	if c.Parties > 1 {
		if err := os.MkdirAll(c.Sync, 0o755); err != nil {
			return nil, err
		}
	}
	clients := make([]*client, c.Conns)
	for i := range clients {
		n := c.UserBase + i
		cl := &client{id: i, user: fmt.Sprintf("u%d", n), edge: n % len(c.addrs), joined: make(chan struct{}),
			ended: make(chan struct{}), refused: make(chan struct{})}
		if c.Target == "natter" {
			cl.room = fmt.Sprintf("r%d", n/c.RoomSize)
		}
		clients[i] = cl
	}
	st := &stats{}
	var readers sync.WaitGroup
	defer readers.Wait()

	// Connect, once every generator of the run has read what it reads
	// before: the servers' memory before any connection.
	before := measure(c.procs)
	if _, err := meet(c.Sync, "start", strconv.Itoa(os.Getpid()), c.Parties, arrival{At: time.Now().UnixNano()}); err != nil {
		return nil, err
	}
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
	connectStart := measure(c.procs)
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
	connectEnd := time.Now()
	if c.cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	res.Connected = int(connected.Load())
	res.ConnectSeconds = connectEnd.Sub(start).Seconds()
	res.ConnectPerSec = float64(res.Connected) / res.ConnectSeconds
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

	// Every generator of the run connected: from the last one's arrival,
	// the idle memory 2 s later, then the publishing, the window and its
	// end at the same moments in all of them.
	mine := arrival{At: connectEnd.UnixNano(), Conns: map[string]int{}}
	for _, cl := range clients {
		if cl.conn != nil {
			mine.Conns[c.addrs[cl.edge].name]++
		}
	}
	all, err := meet(c.Sync, "connected", strconv.Itoa(os.Getpid()), c.Parties, mine)
	if err != nil {
		return res, err
	}
	connectDone := measure(c.procs)
	held, total, last := map[string]int{}, 0, int64(0)
	for _, a := range all {
		last = max(last, a.At)
		for name, n := range a.Conns {
			held[name] += n
			total += n
		}
	}
	connectCPU := make([]time.Duration, len(c.procs))
	for i := range c.procs {
		connectCPU[i] = connectDone.cpu[i] - connectStart.cpu[i]
	}
	if len(c.procs) > 0 {
		res.ConnectCPUus = float64(sum(connectCPU).Microseconds()) / float64(total)
	}
	idleAt := time.Unix(0, last).Add(2 * time.Second)
	winStart := idleAt.Add(c.Warmup)
	winEnd := winStart.Add(c.Measure)

	// Idle memory, once the servers have settled.
	time.Sleep(time.Until(idleAt))
	idle := measure(c.procs)

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
	time.Sleep(time.Until(winStart))
	w0, own0 := measure(c.procs), ownCPU()
	st.windowStart.Store(winStart.UnixNano())
	if c.Rejoin {
		res.RejoinSeconds, res.Recovered, res.RejoinRetries = rejoinAll(ctx, c, clients, st, &readers, &errs)
	}
	time.Sleep(time.Until(winEnd))
	st.windowEnd.Store(winEnd.UnixNano())
	w1, own1 := measure(c.procs), ownCPU()
	close(stop)
	pw.Wait()
	time.Sleep(c.Drain)

	window := c.Measure.Seconds()
	res.Sent = sent.Load()
	res.Expected = expected.Load()
	res.Delivered = st.delivered.Load()
	res.DeliveriesPerSec = float64(res.Delivered) / window
	res.ExpectedPerSec = float64(res.Expected) / window
	if res.Expected > 0 {
		res.LossPct = 100 * float64(max(res.Expected-res.Delivered, 0)) / float64(res.Expected)
	}
	res.OwnCPU = (own1 - own0).Seconds() / w1.at.Sub(w0.at).Seconds()
	res.MachineCPU = (w1.machine - w0.machine).Seconds() / w1.at.Sub(w0.at).Seconds()
	res.SoftIRQCPU = (w1.softirq - w0.softirq).Seconds() / w1.at.Sub(w0.at).Seconds()
	res.Closed = st.closed.Load()
	st.mu.Lock()
	lat := slices.Clone(st.latencies)
	st.mu.Unlock()
	slices.Sort(lat)
	res.P50ms, res.P90ms, res.P99ms = pct(lat, 50), pct(lat, 90), pct(lat, 99)
	if len(lat) > 0 {
		res.Maxms = ms(lat[len(lat)-1])
	}
	if c.RunID != "" {
		res.Latency = newHistogram(lat)
	}

	// The servers' processes: an edge's figures per connection it holds,
	// the others' per connection in all.
	if len(c.procs) > 0 {
		cpu := cores(w0, w1)
		res.ServerCPU = sum(cpu)
		res.ServerRSSMiB = float64(sum(w1.rss)) / (1 << 20)
		res.IdleRSSPerConnKiB = float64(sum(idle.rss)-sum(before.rss)) / 1024 / float64(total)
		if res.DeliveriesPerSec > 0 && c.Parties <= 1 {
			res.CPUusPerDelivery = res.ServerCPU * 1e6 / res.DeliveriesPerSec
		}
		named := len(c.procs) > 1 || c.procs[0].name != serverProc
		for i, p := range c.procs {
			if !named {
				break
			}
			conns := total
			if slices.ContainsFunc(c.addrs, func(e endpoint) bool { return e.name == p.name }) {
				conns = held[p.name]
			}
			pr := procResult{Name: p.name, PID: p.pid, Conns: conns, IdleRSSMiB: float64(idle.rss[i]) / (1 << 20),
				RSSMiB: float64(w1.rss[i]) / (1 << 20), CPU: cpu[i]}
			if conns > 0 {
				pr.IdleRSSPerConnKiB = float64(idle.rss[i]-before.rss[i]) / 1024 / float64(conns)
				pr.ConnectCPUus = float64(connectCPU[i].Microseconds()) / float64(conns)
			}
			res.Procs = append(res.Procs, pr)
		}
	}
	res.Errors = errs.list()
	return res, nil
}

// dial opens cl's connection to its address, from one of the source
// addresses when the server is on loopback; to another address (a
// container's, say) the system picks the source, and one source holds
// some 27,000 connections.
func dial(ctx context.Context, c config, cl *client) error {
	addr := c.addrs[cl.edge].addr
	var src *net.TCPAddr
	if host, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(host).IsLoopback() {
		src = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(c.SourceBase+cl.id%c.Sources))}
	}
	path := "/ws"
	if c.Target == "natter" {
		path += "?user=" + cl.user
	}
	conn, err := wsclient.Dial(ctx, src, addr, path)
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
	joined, refused := cl.joined, cl.refused
	defer close(cl.ended)
	for {
		data, err := conn.ReadMessage()
		if err != nil {
			var ce *wsclient.CloseError
			if errors.As(err, &ce) && ce.Code != websocket.CloseNormalClosure {
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
				closeOnce(joined)
			case bytes.Contains(line, []byte(`"type":"error"`)):
				closeOnce(refused)
			}
		}
	}
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
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

// rejoinAll drops every client at once and has each rejoin with since,
// as the page does: a join refused (unavailable) or a connection ended
// before joined (cut off as slow, say) is tried again, with since the
// newest seq received, after a short back-off. It returns how long until
// all were joined again, how many said recovered, and how many joins were
// tried again.
func rejoinAll(ctx context.Context, c config, clients []*client, st *stats, readers *sync.WaitGroup, errs *errList) (float64, int, int) {
	// The publishers stay: messages keep coming while the others are away.
	var away []*client
	for _, cl := range clients {
		if cl.conn != nil && !cl.publisher {
			_ = cl.conn.Close()
			away = append(away, cl)
		}
	}
	start := time.Now()
	var recovered, retries atomic.Int64
	sem := make(chan struct{}, c.Concurrency)
	var wg sync.WaitGroup
	for _, cl := range away {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for attempt := 0; ctx.Err() == nil; attempt++ {
				if attempt > 0 {
					retries.Add(1)
					select {
					case <-time.After(time.Duration(min(attempt, 5)) * 200 * time.Millisecond): // the page's back-off
					case <-ctx.Done():
						return
					}
				}
				if rejoin(ctx, c, cl, st, readers, errs) {
					if cl.recovered.Load() {
						recovered.Add(1)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start).Seconds(), int(recovered.Load()), int(retries.Load())
}

// rejoin connects cl again and joins its room with since; it reports
// whether joined came.
func rejoin(ctx context.Context, c config, cl *client, st *stats, readers *sync.WaitGroup, errs *errList) bool {
	cl.joined, cl.ended, cl.refused = make(chan struct{}), make(chan struct{}), make(chan struct{})
	if err := dial(ctx, c, cl); err != nil {
		errs.add(err)
		return false
	}
	readers.Go(func() { read(c, cl, st) })
	if err := cl.send(fmt.Sprintf(`{"type":"join","room":%q,"since":%d}`, cl.room, cl.lastSeq.Load())); err != nil {
		errs.add(err)
		_ = cl.conn.Close()
		return false
	}
	select {
	case <-cl.joined:
		return true
	case <-cl.refused:
		_ = cl.conn.Close()
	case <-cl.ended:
	case <-ctx.Done():
	}
	return false
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

func printTable(w io.Writer, r *result) {
	fmt.Fprintf(w, "%-22s %s\n", "scenario / target", r.Scenario+" / "+r.Target)
	fmt.Fprintf(w, "%-22s %d of %d, %.0f/s, server CPU %.0f µs per connection\n", "connected", r.Connected, r.Conns, r.ConnectPerSec, r.ConnectCPUus)
	fmt.Fprintf(w, "%-22s %.1f KiB\n", "idle RSS per conn", r.IdleRSSPerConnKiB)
	fmt.Fprintf(w, "%-22s %.0f/s of %.0f/s expected, loss %.3f%%\n", "deliveries", r.DeliveriesPerSec, r.ExpectedPerSec, r.LossPct)
	fmt.Fprintf(w, "%-22s p50 %.2f  p90 %.2f  p99 %.2f  max %.2f ms\n", "latency", r.P50ms, r.P90ms, r.P99ms, r.Maxms)
	fmt.Fprintf(w, "%-22s %.0f MiB RSS, %.2f cores\n", "server", r.ServerRSSMiB, r.ServerCPU)
	for _, p := range r.Procs {
		fmt.Fprintf(w, "%-22s %d conns, %.1f KiB idle per conn, %.0f MiB RSS, %.2f cores\n", "  "+p.Name, p.Conns, p.IdleRSSPerConnKiB, p.RSSMiB, p.CPU)
	}
	if r.CPUusPerDelivery > 0 {
		fmt.Fprintf(w, "%-22s %.2f µs\n", "server CPU/delivery", r.CPUusPerDelivery)
	}
	fmt.Fprintf(w, "%-22s %.2f cores\n", "generator", r.OwnCPU)
	fmt.Fprintf(w, "%-22s %.2f cores busy, %.2f of them in softirq\n", "machine", r.MachineCPU, r.SoftIRQCPU)
	if r.Rejoin {
		fmt.Fprintf(w, "%-22s the others joined again in %.2f s, %d of them recovered, %d joins tried again\n", "rejoin", r.RejoinSeconds, r.Recovered, r.RejoinRetries)
	}
	if r.Closed > 0 {
		fmt.Fprintf(w, "%-22s %d\n", "closed by the server", r.Closed)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "%-22s %s\n", "error", e)
	}
}
