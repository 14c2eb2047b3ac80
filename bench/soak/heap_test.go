package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// writeHeap writes a heap profile whose samples are allocation sites,
// each a stack (innermost first) and its bytes and objects in use.
func writeHeap(t *testing.T, file string, sites map[string][2]int64) {
	t.Helper()
	p := &profile.Profile{
		SampleType: []*profile.ValueType{
			{Type: "alloc_objects", Unit: "count"}, {Type: "alloc_space", Unit: "bytes"},
			{Type: "inuse_objects", Unit: "count"}, {Type: "inuse_space", Unit: "bytes"},
		},
		PeriodType: &profile.ValueType{Type: "space", Unit: "bytes"},
	}
	funcs := map[string]*profile.Function{}
	for stack, v := range sites {
		s := &profile.Sample{Value: []int64{0, 0, v[1], v[0]}}
		for name := range strings.SplitSeq(stack, ";") {
			fn := funcs[name]
			if fn == nil {
				fn = &profile.Function{ID: uint64(len(funcs) + 1), Name: name}
				funcs[name] = fn
				p.Function = append(p.Function, fn)
			}
			loc := &profile.Location{ID: uint64(len(p.Location) + 1), Line: []profile.Line{{Function: fn}}}
			p.Location = append(p.Location, loc)
			s.Location = append(s.Location, loc)
		}
		p.Sample = append(p.Sample, s)
	}
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestHeapGrowth(t *testing.T) {
	dir := t.TempDir()
	const store = "github.com/nats-io/nats-server/v2/server.(*msgBlock).cache;github.com/nats-io/nats-server/v2/server.(*fileStore).store;main.main"
	const edge = "runtime.makeslice;github.com/natter-chat/natter/services/edge/edge.(*recentLog).add;main.main"
	const gone = "bytes.growSlice;main.main"
	base := heapProfile{name: "chat", t: 1200, file: filepath.Join(dir, "a.pb.gz")}
	last := heapProfile{name: "chat", t: 3600, file: filepath.Join(dir, "b.pb.gz")}
	writeHeap(t, base.file, map[string][2]int64{store: {10 << 20, 100}, edge: {1 << 20, 10}, gone: {2 << 20, 5}})
	writeHeap(t, last.file, map[string][2]int64{store: {14 << 20, 140}, edge: {1 << 20, 10}})

	g, err := growth(base, last, 8)
	if err != nil {
		t.Fatal(err)
	}
	if g.inuse0 != 13<<20 || g.inuse1 != 15<<20 || g.objs0 != 115 || g.objs1 != 150 {
		t.Errorf("in use %d to %d bytes, %d to %d objects; want 13 to 15 MiB, 115 to 150", g.inuse0, g.inuse1, g.objs0, g.objs1)
	}
	// The store's site gained 4 MiB, the edge's nothing (left out), the
	// buffer's was freed; the runtime's own frames are skipped, the
	// packages' paths dropped.
	want := []siteGrowth{
		{"server.(*msgBlock).cache < server.(*fileStore).store < main.main", 4 << 20},
		{"bytes.growSlice < main.main", -2 << 20},
	}
	if len(g.sites) != len(want) {
		t.Fatalf("sites %+v, want %+v", g.sites, want)
	}
	for i := range want {
		if g.sites[i] != want[i] {
			t.Errorf("site %d: %+v, want %+v", i, g.sites[i], want[i])
		}
	}
}

// The profiles come from a real net/http/pprof listener, every round
// and once more at the end; the growth reads them back.
func TestHeapsFromPProf(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	targets, err := parsePProf("chat=" + strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "run")
	h := newHeaps(targets, 10*time.Minute, out)
	ctx := context.Background()
	for _, at := range []float64{10, 20, 300, 610, 1190, 1210} {
		h.due(ctx, at)
	}
	h.end(ctx, 1212, 1210) // the last sample took a round: none more
	h.due(ctx, 1220)
	h.end(ctx, 1225, 1220) // it did not
	var got []string
	for _, p := range h.taken {
		got = append(got, filepath.Base(p.file))
	}
	if want := "run-heap-chat-000.2m.pb.gz run-heap-chat-010.2m.pb.gz run-heap-chat-020.2m.pb.gz run-heap-chat-020.4m.pb.gz"; strings.Join(got, " ") != want || len(h.errs) > 0 {
		t.Fatalf("profiles %v (errors %v), want %s", got, h.errs, want)
	}
	gs, errs := h.growths(600, 8)
	if len(errs) > 0 || len(gs) != 1 || gs[0].base.t != 610 || gs[0].last.t != 1225 || gs[0].inuse1 <= 0 {
		t.Fatalf("growths %+v, errors %v: want one, minute 10 to the end", gs, errs)
	}
}

func TestParsePProf(t *testing.T) {
	for _, bad := range []string{"chat", "=127.0.0.1:1", "chat=", "a b=127.0.0.1:1"} {
		if _, err := parsePProf(bad); err == nil {
			t.Errorf("parsePProf(%q) took it", bad)
		}
	}
	got, err := parsePProf("edge-1=127.0.0.1:1,,nats=127.0.0.1:2")
	if err != nil || len(got) != 2 || got[1].url != "http://127.0.0.1:2/debug/pprof/heap?gc=1" {
		t.Errorf("parsePProf: %+v, %v", got, err)
	}
}
