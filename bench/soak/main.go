// Command soak runs natter for a long time under a steady load with
// churn, and tells whether anything drifts or is lost: a room of 1,000
// with publishers, and churn clients in small rooms that connect, join,
// leave, post, send dms, type, drop and come back with since. Every 10 s
// it samples the server's processes (RSS, CPU, goroutines, open files),
// its JetStream streams, its edges' send queues and the delivery
// latency; at the end it checks that every acked message reached every
// member that should have it, fits the drift of RSS, goroutines and open
// files, draws charts and writes a summary. bench/soak.sh runs it.
//
//	soak -target single -addr 127.0.0.1:8080 -nats nats://127.0.0.1:4222 \
//	    -procs chat=1234@127.0.0.1:8080 -duration 1h -out bench/results/DATE-soak-single
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

type config struct {
	target       string
	note         string
	addrs        []string
	natsURL      string
	procs        string
	duration     time.Duration
	every        time.Duration
	fit          time.Duration
	warmup       time.Duration
	grace        time.Duration
	bigRoom      string
	roomSize     int
	publishers   int
	rate         float64
	size         int
	churnClients int
	churnRooms   int
	churnRate    float64
	sources      int
	sourceBase   int
	out          string
	lose         int64
	pprof        string
	heapEvery    time.Duration
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The first signal ends the load early, and the check and the report
	// still come; a second one stops the program.
	go func() { <-ctx.Done(); stop() }()
	code, err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
	}
	os.Exit(code)
}

// run is the soak; its exit code is 0 for a pass, 3 for a fail, 1 when
// it could not run.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	var c config
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.target, "target", "single", "a label: single (the single binary) or procs (the services as processes)")
	fs.StringVar(&c.note, "note", "", "a line for the summary's head (a smoke run, say)")
	addrs := fs.String("addr", "127.0.0.1:8080", "the edges' HTTP addresses, comma-separated")
	fs.StringVar(&c.natsURL, "nats", "nats://127.0.0.1:4222", "the NATS server, for the streams' sizes and the edges' stats")
	fs.StringVar(&c.procs, "procs", "", "the server's processes: name=pid[@host:port of its /metrics],...")
	fs.DurationVar(&c.duration, "duration", time.Hour, "how long the load runs")
	fs.DurationVar(&c.every, "sample", 10*time.Second, "sample interval")
	fs.DurationVar(&c.fit, "fit", 40*time.Minute, "the drift is fitted over the run's last this much")
	fs.DurationVar(&c.warmup, "warmup", 5*time.Minute, "never fit the first this much (capped at a third of the run)")
	fs.DurationVar(&c.grace, "leave-grace", 5*time.Second, "a post acked less than this before a member's leave may or may not reach it")
	fs.StringVar(&c.bigRoom, "room", "big", "the big room's name")
	fs.IntVar(&c.roomSize, "room-size", 1000, "members of the big room")
	fs.IntVar(&c.publishers, "publishers", 10, "of them, publishers")
	fs.Float64Var(&c.rate, "rate", 100, "messages a second per publisher")
	fs.IntVar(&c.size, "size", 64, "message text size in bytes (at least 48)")
	fs.IntVar(&c.churnClients, "churn-clients", 200, "churn clients")
	fs.IntVar(&c.churnRooms, "churn-rooms", 20, "small rooms they move between")
	fs.Float64Var(&c.churnRate, "churn-rate", 40, "churn actions a second, over all churn clients")
	fs.IntVar(&c.sources, "sources", 2, "source addresses 127.0.0.<source-base>..")
	fs.IntVar(&c.sourceBase, "source-base", 201, "the last byte of the first source address")
	fs.StringVar(&c.out, "out", "", "the results' path without extension: PREFIX.jsonl (samples), PREFIX.md, PREFIX-*.png")
	fs.Int64Var(&c.lose, "lose", 0, "to see the check fail: forget one received room message in this many (0: none)")
	fs.StringVar(&c.pprof, "pprof", "", "the server's pprof listeners, name=host:port,...: heap profiles every -heap-every and at the end, and the fit window's heap growth in the summary")
	fs.DurationVar(&c.heapEvery, "heap-every", 10*time.Minute, "how often -pprof's heap profiles are taken")
	redrawOnly := fs.Bool("charts", false, "only draw the charts of -out's samples again (with -sample, -fit, -warmup), and exit")
	if err := fs.Parse(args); err != nil {
		return 1, err
	}
	if *redrawOnly && c.out != "" {
		files, err := redraw(c.out, c.every, c.fit, c.warmup)
		for _, f := range files {
			fmt.Fprintln(stdout, f)
		}
		if err != nil {
			return 1, err
		}
		return 0, nil
	}
	c.addrs = strings.Split(*addrs, ",")
	if c.out == "" || c.sources < 1 || c.sourceBase < 1 || c.sourceBase+c.sources > 255 ||
		c.publishers > c.roomSize || c.rate <= 0 || c.churnRate <= 0 || c.churnRooms < 1 || c.churnClients < 2 {
		return 1, errors.New("need -out; -sources and -source-base within 127.0.0.1-254; publishers within the room; rates above 0; at least 2 churn clients and 1 room")
	}
	c.size = max(c.size, 48)
	procs, err := parseProcs(c.procs)
	if err != nil {
		return 1, err
	}
	heapTargets, err := parsePProf(c.pprof)
	if err != nil {
		return 1, err
	}
	nc, err := nats.Connect(c.natsURL, nats.Name("soak"), nats.MaxReconnects(-1))
	if err != nil {
		return 1, fmt.Errorf("nats %s: %w", c.natsURL, err)
	}
	defer nc.Close()
	// The generator's memory grows with what it must check at the end
	// (a bit per member and seq of the big room): collections are
	// spaced out to leave its core to the connections.
	debug.SetGCPercent(200)

	g := newGen(c)
	defer g.readers.Wait()
	defer g.closeAll()
	started := time.Now()
	fmt.Fprintf(stderr, "soak: connecting the room of %d\n", c.roomSize)
	if err := g.connectBig(ctx); err != nil {
		return 1, err
	}
	fmt.Fprintf(stderr, "soak: joined in %s; load for %s\n", time.Since(started).Round(time.Millisecond), c.duration)

	load, stopLoad := context.WithTimeout(ctx, c.duration)
	defer stopLoad()
	// run outlives load: the clients away at its end come back for the
	// check. A second interrupt still stops everything.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	var actors sync.WaitGroup
	for _, cl := range g.big {
		actors.Go(func() { cl.stay(load, runCtx) })
	}
	for i := range c.publishers {
		pub := g.big[i*len(g.big)/c.publishers]
		actors.Go(func() { pub.publish(load, i) })
	}
	for _, cl := range g.churn {
		actors.Go(func() { cl.runChurn(load, runCtx) })
	}

	smp, err := newSampler(g, procs, nc)
	if err != nil {
		return 1, err
	}
	f, err := os.Create(c.out + ".jsonl")
	if err != nil {
		return 1, err
	}
	defer f.Close()
	bw := bufio.NewWriter(f)
	hp := newHeaps(heapTargets, c.heapEvery, c.out)
	var samples []sample
	tick := time.NewTicker(c.every)
	for load.Err() == nil {
		select {
		case <-load.Done():
		case <-tick.C:
			s := smp.take(ctx)
			samples = append(samples, s)
			line, _ := json.Marshal(s)
			_, _ = bw.Write(append(line, '\n'))
			_ = bw.Flush()
			fmt.Fprintf(stderr, "soak: %5.0fs %s\n", s.T, brief(s))
			hp.due(ctx, s.T)
		}
	}
	tick.Stop()
	ran := time.Since(smp.start)
	if len(samples) > 0 {
		hp.end(context.Background(), ran.Seconds(), samples[len(samples)-1].T)
	}

	fmt.Fprintln(stderr, "soak: load over; the clients away come back, the posts get their acks")
	settled := make(chan struct{})
	go func() { actors.Wait(); close(settled) }()
	select {
	case <-settled:
	case <-time.After(2 * time.Minute):
		fmt.Fprintln(stderr, "soak: some clients are not back after 2 minutes; checking anyway")
	}
	stopRun()
	<-settled
	g.quiet(2*time.Second, time.Minute)

	fmt.Fprintln(stderr, "soak: checking every member's deliveries")
	result := g.check(c.grace)
	end := 0.0
	if len(samples) > 0 {
		end = samples[len(samples)-1].T
	}
	from, to := fitWindow(end, c.fit, c.warmup)
	ds := drifts(samples, from, to)
	pass, why := verdict(ds, result)
	if result.Duplicates > 0 || result.OutOfOrder > 0 {
		pass = false
		why = append(why, fmt.Sprintf("%d duplicate and %d out-of-order room deliveries: seqs must strictly increase for every member", result.Duplicates, result.OutOfOrder))
	}
	heapGrowths, heapErrs := hp.growths(from, 8)
	files, err := charts(c.out, c.every, samples, ds)
	if err != nil {
		fmt.Fprintln(stderr, "soak:", err)
	}
	rep := report{cfg: c, command: os.Getenv("SOAK_COMMAND"), started: started, ran: ran, samples: samples,
		from: from, to: to, drifts: ds, check: result, pass: pass, why: why, errs: g.errs.top(20), notes: g.notes.list(), charts: files,
		heaps: heapGrowths, heapFiles: hp.taken, heapErrs: append(hp.errs, heapErrs...)}
	if rep.command == "" {
		rep.command = "soak " + strings.Join(args, " ")
	}
	md, err := os.Create(c.out + ".md")
	if err != nil {
		return 1, err
	}
	writeSummary(md, rep)
	if err := md.Close(); err != nil {
		return 1, err
	}
	writeSummary(stdout, rep)
	if !pass {
		return 3, nil
	}
	return 0, nil
}

// brief is a sample's progress line.
func brief(s sample) string {
	var b strings.Builder
	for _, p := range s.Procs {
		fmt.Fprintf(&b, "%s %.0fMiB %.2fc g%d f%d  ", p.Name, float64(p.RSS)/(1<<20), p.CPU, p.Goroutines, p.FDs)
	}
	fmt.Fprintf(&b, "| %.0f/s p99 %.1fms (edge %.0f) q%d/%d | gen %.2fc %.0fMiB | conn %d drop %d err %d",
		s.Gen.PerSec, s.Gen.P99ms, s.Edges.P99ms, s.Edges.SendQueue, s.Edges.SendQueueMax,
		s.Gen.CPU, float64(s.Gen.RSS)/(1<<20), s.Gen.Connects, s.Gen.Drops, s.Gen.Errors)
	return b.String()
}

// quiet waits until no room message or dm has arrived for still, at most
// limit: the last deliveries are in.
func (g *gen) quiet(still, limit time.Duration) {
	deadline := time.Now().Add(limit)
	last := g.cnt.live.Load() + g.cnt.replayed.Load() + g.cnt.dms.Load()
	since := time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		n := g.cnt.live.Load() + g.cnt.replayed.Load() + g.cnt.dms.Load()
		if n != last {
			last, since = n, time.Now()
		} else if time.Since(since) >= still {
			return
		}
	}
}

// closeAll closes every connection cleanly, all at once, then waits
// for their readers.
func (g *gen) closeAll() {
	var open []*connState
	for _, c := range append(g.big, g.churn...) {
		c.mu.Lock()
		if c.cs != nil {
			open = append(open, c.cs)
		}
		c.cs = nil
		c.mu.Unlock()
	}
	for _, cs := range open {
		cs.ours.Store(true)
		_ = cs.ws.CloseNormal()
	}
	for _, cs := range open {
		<-cs.done
		_ = cs.ws.Close()
	}
}
