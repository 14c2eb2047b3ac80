package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// heapTarget is a process whose heap the soak profiles: the address of
// its net/http/pprof listener (CHAT_PPROF_ADDR).
type heapTarget struct {
	name string
	url  string // http://host:port/debug/pprof/heap?gc=1
}

// heapProfile is one profile taken: its process, when (seconds since
// the load started, as a sample's T), and its file.
type heapProfile struct {
	name string
	t    float64
	file string
}

// heaps takes the processes' heap profiles every so often, so that a
// drift in RSS can be put down to where the memory was allocated.
type heaps struct {
	targets []heapTarget
	every   time.Duration
	out     string // the results' prefix
	http    *http.Client
	next    float64 // the T of the next round
	at      float64 // the T of the last round; -1 before the first
	taken   []heapProfile
	errs    []string
}

// parsePProf reads -pprof: name=host:port,...
func parsePProf(s string) ([]heapTarget, error) {
	var out []heapTarget
	for item := range strings.SplitSeq(s, ",") {
		if item == "" {
			continue
		}
		name, addr, ok := strings.Cut(item, "=")
		if !ok || name == "" || addr == "" || strings.ContainsAny(name, "/ ") {
			return nil, fmt.Errorf("-pprof: %q is not name=host:port", item)
		}
		out = append(out, heapTarget{name: name, url: "http://" + addr + "/debug/pprof/heap?gc=1"})
	}
	return out, nil
}

func newHeaps(targets []heapTarget, every time.Duration, out string) *heaps {
	return &heaps{targets: targets, every: every, out: out, http: &http.Client{Timeout: 30 * time.Second}, at: -1}
}

// end takes the last round when the load ends at t, unless the sample
// at last (the final one) took a round already.
func (h *heaps) end(ctx context.Context, t, last float64) {
	if len(h.targets) > 0 && h.at != last {
		h.take(ctx, t)
	}
}

// due takes a round of profiles when the sample at t has reached the
// next multiple of every (the first at t = 0's first sample).
func (h *heaps) due(ctx context.Context, t float64) {
	if len(h.targets) == 0 || h.every <= 0 || t < h.next {
		return
	}
	h.take(ctx, t)
	for h.next <= t {
		h.next += h.every.Seconds()
	}
}

// take fetches every target's heap profile (after a collection: gc=1,
// so what is in use is what is live) into out-heap-<name>-<minutes>m.pb.gz.
func (h *heaps) take(ctx context.Context, t float64) {
	h.at = t
	for _, tg := range h.targets {
		file := fmt.Sprintf("%s-heap-%s-%05.1fm.pb.gz", h.out, tg.name, t/60)
		if err := h.fetch(ctx, tg.url, file); err != nil {
			h.errs = append(h.errs, fmt.Sprintf("%s at %.0f s: %v", tg.name, t, err))
			continue
		}
		h.taken = append(h.taken, heapProfile{name: tg.name, t: t, file: file})
	}
}

func (h *heaps) fetch(ctx context.Context, url, file string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := h.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// heapGrowth is what one process's heap gained between two profiles:
// in use at each, and the allocation sites that gained most.
type heapGrowth struct {
	name         string
	base, last   heapProfile
	inuse0       int64 // bytes in use at base
	inuse1       int64 // at last
	sites        []siteGrowth
	objs0, objs1 int64 // objects in use
}

// siteGrowth is one allocation site's change in bytes in use: the
// innermost frames outside the runtime, innermost first.
type siteGrowth struct {
	site  string
	bytes int64
}

// growths compares, for every process, its profile nearest after from
// (the fit window's start) with its last one.
func (h *heaps) growths(from float64, top int) ([]heapGrowth, []string) {
	var out []heapGrowth
	var errs []string
	for _, tg := range h.targets {
		var base, last *heapProfile
		for i := range h.taken {
			p := &h.taken[i]
			if p.name != tg.name {
				continue
			}
			if base == nil && p.t >= from-h.every.Seconds()/2 {
				base = p
			}
			last = p
		}
		if base == nil || last == nil || base == last {
			continue
		}
		g, err := growth(*base, *last, top)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", tg.name, err))
			continue
		}
		out = append(out, g)
	}
	return out, errs
}

// growth reads two heap profiles of one process and sums the change of
// inuse_space by allocation site, as go tool pprof -diff_base would.
func growth(base, last heapProfile, top int) (heapGrowth, error) {
	g := heapGrowth{name: base.name, base: base, last: last}
	p0, err := readProfile(base.file)
	if err != nil {
		return g, err
	}
	p1, err := readProfile(last.file)
	if err != nil {
		return g, err
	}
	by := map[string]int64{}
	for _, side := range []struct {
		p     *profile.Profile
		sign  int64
		bytes *int64
		objs  *int64
	}{{p0, -1, &g.inuse0, &g.objs0}, {p1, 1, &g.inuse1, &g.objs1}} {
		space, objects := sampleIndex(side.p, "inuse_space"), sampleIndex(side.p, "inuse_objects")
		if space < 0 || objects < 0 {
			return g, fmt.Errorf("%s: not a heap profile", base.file)
		}
		for _, s := range side.p.Sample {
			*side.bytes += s.Value[space]
			*side.objs += s.Value[objects]
			by[site(s, 3)] += side.sign * s.Value[space]
		}
	}
	for s, b := range by {
		if b != 0 {
			g.sites = append(g.sites, siteGrowth{site: s, bytes: b})
		}
	}
	slices.SortFunc(g.sites, func(a, b siteGrowth) int {
		return cmp.Or(cmp.Compare(b.bytes, a.bytes), strings.Compare(a.site, b.site))
	})
	if len(g.sites) > top {
		g.sites = g.sites[:top]
	}
	return g, nil
}

func readProfile(file string) (*profile.Profile, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return profile.Parse(f)
}

func sampleIndex(p *profile.Profile, typ string) int {
	for i, st := range p.SampleType {
		if st.Type == typ {
			return i
		}
	}
	return -1
}

// site names a sample's allocation site by its n innermost frames
// outside the runtime (makeslice, growslice and the like say nothing of
// who allocated), innermost first, without their packages' paths.
func site(s *profile.Sample, n int) string {
	var frames []string
	for _, loc := range s.Location {
		for _, line := range loc.Line { // inlined frames first
			if line.Function == nil {
				continue
			}
			name := line.Function.Name
			if strings.HasPrefix(name, "runtime.") || strings.HasPrefix(name, "internal/") {
				continue
			}
			frames = append(frames, shortFunc(name))
			if len(frames) == n {
				return strings.Join(frames, " < ")
			}
		}
	}
	if len(frames) == 0 {
		return "(runtime)"
	}
	return strings.Join(frames, " < ")
}

// shortFunc drops a function name's package path, keeping its package:
// github.com/nats-io/nats-server/v2/server.(*fileStore).x is
// server.(*fileStore).x.
func shortFunc(name string) string {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[i+1:]
	}
	return name
}
