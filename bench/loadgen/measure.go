package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// endpoint is one server address the connections are spread over, and
// the name by which -pid says which process holds its connections.
type endpoint struct {
	name, addr string
}

// parseAddrs reads -addr: host:port or name=host:port, comma-separated.
// An address without a name is edge-<its position from 1>, as
// bench/procs.sh names its edges.
func parseAddrs(s string) ([]endpoint, error) {
	var out []endpoint
	for i, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		name, addr, named := strings.Cut(part, "=")
		if !named {
			name, addr = fmt.Sprintf("edge-%d", i+1), part
		}
		if addr == "" || name == "" {
			return nil, fmt.Errorf("-addr: %q is not host:port or name=host:port", part)
		}
		out = append(out, endpoint{name: name, addr: addr})
	}
	return out, nil
}

// proc is one server process measured from /proc.
type proc struct {
	name string
	pid  int
}

// serverProc is the name of the one process of -pid's single-pid form,
// which holds every connection.
const serverProc = "server"

// parsePIDs reads -pid: one pid (the server, holding every connection;
// 0 is none) or name=pid, comma-separated.
func parsePIDs(s string) ([]proc, error) {
	if s == "" {
		return nil, nil
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 {
			return nil, nil
		}
		return []proc{{name: serverProc, pid: n}}, nil
	}
	var out []proc
	for part := range strings.SplitSeq(s, ",") {
		name, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(v)
		if !ok || name == "" || err != nil || n <= 0 {
			return nil, fmt.Errorf("-pid: %q is not name=pid", part)
		}
		out = append(out, proc{name: name, pid: n})
	}
	return out, nil
}

// procResult is one process's figures in the JSON line.
type procResult struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Conns is the connections it holds: an edge's (the process named as
	// an -addr) are those to its address, every other process's all of
	// them, from every generator of the run.
	Conns             int     `json:"conns"`
	IdleRSSPerConnKiB float64 `json:"idle_rss_per_conn_kib"` // RSS growth from before the connects to 2 s after the last, per connection in Conns
	IdleRSSMiB        float64 `json:"idle_rss_mib"`
	RSSMiB            float64 `json:"rss_mib"`   // at the window's end
	CPU               float64 `json:"cpu_cores"` // over the window
	ConnectCPUus      float64 `json:"connect_cpu_us"`
}

// sample is what /proc says of the processes at one moment.
type sample struct {
	at      time.Time
	rss     []int64
	cpu     []time.Duration
	machine time.Duration // every core's busy time, whoever used it
	softirq time.Duration // of which the kernel's softirqs
}

func measure(procs []proc) sample {
	s := sample{at: time.Now(), rss: make([]int64, len(procs)), cpu: make([]time.Duration, len(procs))}
	s.machine, s.softirq = machineBusy()
	for i, p := range procs {
		s.rss[i], s.cpu[i] = rss(p.pid), cpuTime(p.pid)
	}
	return s
}

// cores is each process's CPU between two samples, in cores.
func cores(a, b sample) []float64 {
	out := make([]float64, len(a.cpu))
	if d := b.at.Sub(a.at).Seconds(); d > 0 {
		for i := range out {
			out[i] = (b.cpu[i] - a.cpu[i]).Seconds() / d
		}
	}
	return out
}

func sum[T int64 | float64 | time.Duration](xs []T) T {
	var t T
	for _, x := range xs {
		t += x
	}
	return t
}

func pct(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := min(int(float64(len(sorted))*p/100), len(sorted)-1)
	return ms(sorted[i])
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// The latency histogram lets the report merge the latencies of several
// generators of one run: percentiles of the parts cannot be combined,
// and the samples themselves (millions in a busy run) are too many for a
// JSON line. Bucket b holds latencies in [g^b, g^(b+1)) µs with g = 1.01,
// below 1 µs in bucket -1; a percentile read from it is the bucket's
// geometric middle, within 0.5% of the true sample.
const histGrowth = 1.01

type histogram map[int]int64

func bucket(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return -1
	}
	return int(math.Floor(math.Log(us) / math.Log(histGrowth)))
}

func newHistogram(lat []time.Duration) histogram {
	h := histogram{}
	for _, d := range lat {
		h[bucket(d)]++
	}
	return h
}

func (h histogram) add(o histogram) {
	for b, n := range o {
		h[b] += n
	}
}

// pct is the p-th percentile in ms, as pct of the sorted samples picks
// it: the sample at index n*p/100.
func (h histogram) pct(p float64) float64 {
	var n int64
	for _, c := range h {
		n += c
	}
	if n == 0 {
		return 0
	}
	keys := make([]int, 0, len(h))
	for b := range h {
		keys = append(keys, b)
	}
	slices.Sort(keys)
	idx := min(int64(float64(n)*p/100), n-1)
	var seen int64
	for _, b := range keys {
		seen += h[b]
		if seen > idx {
			if b < 0 {
				return 0
			}
			return math.Pow(histGrowth, float64(b)+0.5) / 1000
		}
	}
	return 0
}

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

// machineBusy is the time all cores have spent on anything but idling
// (/proc/stat): on a machine shared with others' work, what the servers
// and generators did not use of it was used by someone else, or by the
// kernel's network processing (softirq), which no process is charged for.
func machineBusy() (busy, softirq time.Duration) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fields := strings.Fields(line)
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, 0
	}
	var ticks, si int64
	for i, f := range fields[1:] {
		n, _ := strconv.ParseInt(f, 10, 64)
		// user nice system idle iowait irq softirq steal guest guest_nice;
		// guest time is counted in user already.
		if i != 3 && i != 4 && i < 8 {
			ticks += n
		}
		if i == 6 {
			si = n
		}
	}
	const clkTck = 100
	return time.Duration(ticks) * time.Second / clkTck, time.Duration(si) * time.Second / clkTck
}

func ownCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
