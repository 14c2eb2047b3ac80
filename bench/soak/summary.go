package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// report is everything the summary says.
type report struct {
	cfg      config
	command  string
	started  time.Time
	ran      time.Duration
	samples  []sample
	from, to float64
	drifts   []drift
	check    checkResult
	pass     bool
	why      []string
	errs     []string
	notes    []string
	charts   []string
	// heaps is each profiled process's heap growth over the fit window;
	// heapFiles every profile taken.
	heaps     []heapGrowth
	heapFiles []heapProfile
	heapErrs  []string
}

// writeSummary writes the Markdown summary of a run.
func writeSummary(w io.Writer, r report) {
	c := r.cfg
	fmt.Fprintf(w, "# Soak, %s, %s\n\n", c.target, r.started.UTC().Format("2006-01-02 15:04 UTC"))
	if c.note != "" {
		fmt.Fprintf(w, "%s\n\n", c.note)
	}
	fmt.Fprintf(w, "Command: `%s`. Machine: %s, %d cores.\n\n", r.command, cpuModel(), cpuCount())
	fmt.Fprintf(w, "Load for %s (asked: %s): a room of %d, %d publishers x %g msgs/s (%s deliveries/s expected); %d churn clients in %d small rooms, %g actions/s (posts, dms, typing, leaves and joins, drops back with `since`, clean closes back afresh).\n\n",
		r.ran.Round(time.Second), c.duration, c.roomSize, c.publishers, c.rate, thousands(float64(c.publishers)*c.rate*float64(c.roomSize)),
		c.churnClients, c.churnRooms, c.churnRate)

	verdict := "PASS"
	if !r.pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "## Verdict: %s\n\n", verdict)
	for _, why := range r.why {
		fmt.Fprintf(w, "- %s\n", why)
	}
	if len(r.why) > 0 {
		fmt.Fprintln(w)
	}

	k := r.check
	fmt.Fprintln(w, "## Delivery check")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| what | count |")
	fmt.Fprintln(w, "| --- | --- |")
	rows := [][2]string{
		{"room posts acked", thousands(float64(k.RoomAcked))},
		{"stays in a room checked (ended or not)", thousands(float64(k.Memberships))},
		{"room deliveries expected", thousands(float64(k.Expected))},
		{"**lost** (acked, expected, not received)", fmt.Sprint(k.Lost)},
		{"duplicates (one member, one seq, twice)", fmt.Sprint(k.Duplicates)},
		{"out of order (after a newer seq)", fmt.Sprint(k.OutOfOrder)},
		{"rejoins with since answered recovered: false", fmt.Sprint(k.NotRecovered)},
		{fmt.Sprintf("acked within %s before a leave, not received (not counted)", c.grace), fmt.Sprint(k.Uncertain)},
		{"dms acked", thousands(float64(k.DMAcked))},
		{"dm deliveries expected (both parties)", thousands(float64(k.DMExpected))},
		{"**dms lost** (neither live nor from history)", fmt.Sprint(k.DMLost)},
		{"dms received twice (history overlapping live, allowed)", fmt.Sprint(k.DMRepeats)},
		{"churn clients not back at the end (dms unchecked)", fmt.Sprint(k.Unchecked)},
		{"posts never answered", fmt.Sprint(k.Pending)},
	}
	if c.lose > 0 {
		rows = append(rows, [2]string{fmt.Sprintf("room messages forgotten on purpose (-lose %d)", c.lose), fmt.Sprint(k.Forgotten)})
	}
	for _, row := range rows {
		fmt.Fprintf(w, "| %s | %s |\n", row[0], row[1])
	}
	fmt.Fprintln(w)
	for _, e := range append(k.LostExamples, k.DMLostExamples...) {
		fmt.Fprintf(w, "- lost: %s\n", e)
	}
	for _, n := range r.notes {
		fmt.Fprintf(w, "- %s\n", n)
	}

	fmt.Fprintf(w, "\n## Drift (least squares over minutes %.1f to %.1f)\n\n", r.from/60, r.to/60)
	fmt.Fprintln(w, "| process | series | samples | mean | slope per 10 min | pass (< 1%) |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- |")
	for _, d := range r.drifts {
		mean := fmt.Sprintf("%.0f", d.Mean)
		if d.Series == "rss" {
			mean = fmt.Sprintf("%.1f MiB", d.Mean/(1<<20))
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s |\n", d.Proc, d.Series, d.Samples, mean, fmtPct(d.Pct10m), yes(d.Pass))
	}

	writeHeaps(w, r)

	fmt.Fprintln(w, "\n## Over the run")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| | first sample | last sample | mean | max |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- |")
	row := func(name string, f func(sample) float64, format string) {
		if len(r.samples) == 0 {
			return
		}
		var sum, top float64
		for _, s := range r.samples {
			v := f(s)
			sum += v
			top = max(top, v)
		}
		first, last := f(r.samples[0]), f(r.samples[len(r.samples)-1])
		fmt.Fprintf(w, "| %s | "+format+" | "+format+" | "+format+" | "+format+" |\n", name, first, last, sum/float64(len(r.samples)), top)
	}
	row("live deliveries/s", func(s sample) float64 { return s.Gen.PerSec }, "%.0f")
	row("p50 ms (send to receive)", func(s sample) float64 { return s.Gen.P50ms }, "%.1f")
	row("p99 ms (send to receive)", func(s sample) float64 { return s.Gen.P99ms }, "%.1f")
	row("p99 ms in the edges (bucket bound)", func(s sample) float64 { return s.Edges.P99ms }, "%.1f")
	row("max ms", func(s sample) float64 { return s.Gen.Maxms }, "%.0f")
	for i, p := range procNames(r.samples) {
		row(p+" cores", func(s sample) float64 { return procAt(s, i).CPU }, "%.2f")
		row(p+" RSS MiB", func(s sample) float64 { return float64(procAt(s, i).RSS) / (1 << 20) }, "%.1f")
	}
	row("generator cores", func(s sample) float64 { return s.Gen.CPU }, "%.2f")
	row("edge send_queue (all)", func(s sample) float64 { return float64(s.Edges.SendQueue) }, "%.0f")
	row("edge send_queue_max", func(s sample) float64 { return float64(s.Edges.SendQueueMax) }, "%.0f")
	row("CHAT MiB", func(s sample) float64 { return float64(s.Streams["CHAT"].Bytes) / (1 << 20) }, "%.1f")
	row("CHAT_DM MiB", func(s sample) float64 { return float64(s.Streams["CHAT_DM"].Bytes) / (1 << 20) }, "%.2f")
	row("connects per 10 s", func(s sample) float64 { return float64(s.Gen.Connects) }, "%.0f")
	row("server closes per 10 s", func(s sample) float64 { return float64(s.Gen.ServerCloses) }, "%.0f")

	if len(r.errs) > 0 {
		fmt.Fprintln(w, "\n## Errors the generator saw")
		fmt.Fprintln(w)
		for _, e := range r.errs {
			fmt.Fprintf(w, "- %s\n", e)
		}
	}
	if len(r.charts) > 0 {
		fmt.Fprintln(w, "\n## Charts")
		fmt.Fprintln(w)
		for _, f := range r.charts {
			fmt.Fprintf(w, "![%s](%s)\n\n", strings.TrimSuffix(f, ".png"), f)
		}
	}
}

// writeHeaps says what each profiled process's heap gained over the
// fit window, and where: the allocation sites that gained most.
func writeHeaps(w io.Writer, r report) {
	if len(r.heapFiles) == 0 && len(r.heapErrs) == 0 {
		return
	}
	fmt.Fprintln(w, "\n## Heap growth (in use after a collection, /debug/pprof/heap?gc=1)")
	fmt.Fprintln(w)
	for _, g := range r.heaps {
		fmt.Fprintf(w, "**%s**, minute %.1f to %.1f: %.1f to %.1f MiB in use (%+.2f MiB), %s to %s objects. `go tool pprof -top -diff_base %s %s`; the sites that gained most (innermost frames outside the runtime):\n\n",
			g.name, g.base.t/60, g.last.t/60, float64(g.inuse0)/(1<<20), float64(g.inuse1)/(1<<20), float64(g.inuse1-g.inuse0)/(1<<20),
			thousands(float64(g.objs0)), thousands(float64(g.objs1)), filepath.Base(g.base.file), filepath.Base(g.last.file))
		fmt.Fprintln(w, "| MiB | allocation site |")
		fmt.Fprintln(w, "| --- | --- |")
		for _, s := range g.sites {
			fmt.Fprintf(w, "| %+.2f | `%s` |\n", float64(s.bytes)/(1<<20), s.site)
		}
		fmt.Fprintln(w)
	}
	var names []string
	for _, p := range r.heapFiles {
		names = append(names, filepath.Base(p.file))
	}
	if len(names) > 0 {
		fmt.Fprintf(w, "Profiles: %s.\n", strings.Join(names, ", "))
	}
	for _, e := range r.heapErrs {
		fmt.Fprintf(w, "- profile not taken or read: %s\n", e)
	}
}

func procNames(samples []sample) []string {
	var out []string
	if len(samples) > 0 {
		for _, p := range samples[0].Procs {
			out = append(out, p.Name)
		}
	}
	return out
}

func procAt(s sample, i int) procSample {
	if i < len(s.Procs) {
		return s.Procs[i]
	}
	return procSample{}
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

// thousands formats n with thousands separators.
func thousands(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	var b []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	return string(b)
}

// cpuCount is the machine's processors: runtime.NumCPU counts only
// those the generator may run on (taskset).
func cpuCount() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, "processor") {
			n++
		}
	}
	return max(n, 1)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}
