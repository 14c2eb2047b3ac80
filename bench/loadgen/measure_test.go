package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestParseAddrs(t *testing.T) {
	tests := []struct {
		in   string
		want []endpoint
		bad  bool
	}{
		{in: "127.0.0.1:8080", want: []endpoint{{"edge-1", "127.0.0.1:8080"}}},
		{in: "127.0.0.1:1,127.0.0.1:2", want: []endpoint{{"edge-1", "127.0.0.1:1"}, {"edge-2", "127.0.0.1:2"}}},
		{in: "a=127.0.0.1:1, b=127.0.0.1:2", want: []endpoint{{"a", "127.0.0.1:1"}, {"b", "127.0.0.1:2"}}},
		{in: "127.0.0.1:1,", bad: true},
		{in: "=127.0.0.1:1", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseAddrs(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("parseAddrs(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parseAddrs(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParsePIDs(t *testing.T) {
	tests := []struct {
		in   string
		want []proc
		bad  bool
	}{
		{in: "", want: nil},
		{in: "0", want: nil},
		{in: "123", want: []proc{{serverProc, 123}}},
		{in: "nats=1,edge-1=2", want: []proc{{"nats", 1}, {"edge-1", 2}}},
		{in: "nats=x", bad: true},
		{in: "nats=1,2", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parsePIDs(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("parsePIDs(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Fatalf("parsePIDs(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

// The histogram's percentiles are those of the samples within half a
// bucket, and merging the histograms of parts gives the whole's.
func TestHistogramPercentiles(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	merged := histogram{}
	for range 3 {
		part := make([]time.Duration, 50000)
		for i := range part {
			// log-normal around 5 ms, with a tail to seconds
			part[i] = time.Duration(math.Exp(r.NormFloat64()*1.5+math.Log(5e6))) + 300*time.Nanosecond
		}
		merged.add(newHistogram(part))
		all = append(all, part...)
	}
	slices.Sort(all)
	for _, p := range []float64{0, 50, 90, 99, 99.9, 100} {
		want, got := pct(all, p), merged.pct(p)
		if math.Abs(got-want) > want*0.005+0.001 {
			t.Errorf("p%g: %.4f ms from the histogram, %.4f ms from the samples", p, got, want)
		}
	}
	if got := (histogram{}).pct(99); got != 0 {
		t.Errorf("an empty histogram's p99 = %v, want 0", got)
	}
}

// A run's generators are merged into one row: counts added, losses
// counted per generator, percentiles from the merged histograms, the
// servers' figures from the one that measured them.
func TestMerge(t *testing.T) {
	lat := func(ms ...int) histogram {
		var d []time.Duration
		for _, m := range ms {
			d = append(d, time.Duration(m)*time.Millisecond)
		}
		return newHistogram(d)
	}
	runs := []result{
		{config: config{Scenario: "B"}, Expected: 10, Delivered: 10},
		{config: config{Scenario: "G", RunID: "x", Conns: 10, Publishers: 1}, Connected: 10, ConnectSeconds: 1, Expected: 100, Delivered: 90,
			DeliveriesPerSec: 9, ExpectedPerSec: 10, Latency: lat(1, 2, 3), Maxms: 3, ServerCPU: 1, ServerRSSMiB: 5, Procs: []procResult{{Name: "nats"}}},
		{config: config{Scenario: "G", RunID: "x", Conns: 10, Publishers: 1}, Connected: 10, ConnectSeconds: 2, Expected: 100, Delivered: 105,
			DeliveriesPerSec: 10.5, ExpectedPerSec: 10, Latency: lat(100, 200, 300), Maxms: 300},
		{config: config{Scenario: "G", RunID: "y"}, Expected: 1, Delivered: 1},
	}
	rows := merge(runs)
	if len(rows) != 3 {
		t.Fatalf("%d rows, want 3 (B, G x, G y)", len(rows))
	}
	g := rows[1]
	if g.generators != 2 || g.Connected != 20 || g.ConnectPerSec != 10 {
		t.Errorf("generators %d, connected %d at %v/s; want 2, 20 at 10/s", g.generators, g.Connected, g.ConnectPerSec)
	}
	// The second generator's 5 extra deliveries do not hide the first's 10 lost.
	if g.LossPct != 5 {
		t.Errorf("loss %v%%, want 5%%", g.LossPct)
	}
	if g.Maxms != 300 || math.Abs(g.P50ms-100) > 0.5 || math.Abs(g.P99ms-300) > 1.5 {
		t.Errorf("p50 %v, p99 %v, max %v ms; want about 100 (the 4th of 6), 300, 300", g.P50ms, g.P99ms, g.Maxms)
	}
	if g.ServerCPU != 1 || len(g.Procs) != 1 || math.Abs(g.CPUusPerDelivery-1e6/19.5) > 1e-6 {
		t.Errorf("server cores %v, %d procs, %v µs per delivery; want the first generator's 1 core, 1 proc, 1e6/19.5", g.ServerCPU, len(g.Procs), g.CPUusPerDelivery)
	}
}

// Generators meet once all have arrived, each with everyone's arrival;
// a directory used by more than the parties is refused.
func TestMeet(t *testing.T) {
	dir := t.TempDir()
	const parties = 3
	var wg sync.WaitGroup
	got := make([][]arrival, parties)
	errs := make([]error, parties)
	for i := range parties {
		wg.Go(func() {
			time.Sleep(time.Duration(i) * 50 * time.Millisecond)
			got[i], errs[i] = meet(dir, "connected", strconv.Itoa(i), parties, arrival{At: int64(i), Conns: map[string]int{"edge-1": i}})
		})
	}
	wg.Wait()
	for i := range parties {
		if errs[i] != nil || len(got[i]) != parties {
			t.Fatalf("party %d: %d arrivals, %v", i, len(got[i]), errs[i])
		}
		sum := 0
		for _, a := range got[i] {
			sum += a.Conns["edge-1"]
		}
		if sum != 3 {
			t.Errorf("party %d counts %d connections, want 3", i, sum)
		}
	}
	if _, err := meet(dir, "connected", "late", parties, arrival{}); err == nil {
		t.Error("a fourth generator met in a directory of three; want an error")
	}
}
