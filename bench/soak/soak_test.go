package main

import (
	"math"
	"testing"
	"time"
)

func TestSeqSets(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  seqSet
	}{{"bits", &bitSet{}}, {"list", &listSet{}}} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.set
			for _, seq := range []uint64{70000, 70001, 3, 900000, 70000} {
				had := s.add(seq)
				if want := seq == 70000 && s.has(70001); had != want {
					t.Errorf("add(%d) said had=%v", seq, had)
				}
			}
			for seq, want := range map[uint64]bool{3: true, 4: false, 70000: true, 70001: true, 70002: false, 900000: true, 1 << 40: false} {
				if s.has(seq) != want {
					t.Errorf("has(%d) = %v, want %v", seq, !want, want)
				}
			}
		})
	}
}

func TestBuckets(t *testing.T) {
	prev := -1
	for us := uint64(0); us < 1<<24; us = us*9/8 + 1 {
		i := bucketOf(us)
		if i < prev || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d after %d", us, i, prev)
		}
		prev = i
		if mid := bucketMid(i); math.Abs(mid-float64(us)) > float64(us)/32+0.5 {
			t.Errorf("bucket of %d µs has its middle at %.1f", us, mid)
		}
	}
	var l latencies
	for us := range int64(1000) {
		l.record(us * 1000) // 0 to 999 ms
	}
	n, q := l.quantiles(0.5, 0.99, 1)
	if n != 1000 || math.Abs(q[0]-500) > 16 || math.Abs(q[1]-990) > 31 || math.Abs(q[2]-999) > 31 {
		t.Errorf("quantiles = %d %v", n, q)
	}
}

func TestParseRoomMessage(t *testing.T) {
	line := []byte(`{"seq":4711,"type":"message","room":"big","from":"b0","text":"lg 1767225600123456789 b0-1 xx","id":"p1","ts":1767225600123}`)
	seq, room, sent, ok := parseRoomMessage(line)
	if !ok || seq != 4711 || string(room) != "big" || sent != 1767225600123456789 {
		t.Errorf("parseRoomMessage = %d %q %d %v", seq, room, sent, ok)
	}
	for _, other := range []string{
		`{"seq":8,"type":"dm","from":"a","to":"b","text":"lg 1 x","ts":1}`,
		`{"type":"joined","room":"big","seq":3}`,
		`{"seq":,"type":"message","room":"big"}`,
	} {
		if _, _, _, ok := parseRoomMessage([]byte(other)); ok {
			t.Errorf("parseRoomMessage(%s) took it for a room message", other)
		}
	}
}

func TestDrift(t *testing.T) {
	var samples []sample
	for i := range 241 { // 40 minutes every 10 s
		x := float64(i * 10)
		samples = append(samples, sample{T: x, Procs: []procSample{{
			Name:       "chat",
			RSS:        int64(100e6 + 1.5e6*x/600 + 5e5*math.Sin(x)), // 1.5 MB per 10 min, noisy
			Goroutines: 90 + i%3,
			FDs:        1200 - i/10,
		}}})
	}
	from, to := fitWindow(2400, 40*time.Minute, 5*time.Minute)
	if from != 300 || to != 2400 {
		t.Fatalf("fitWindow = %v..%v, want 300..2400", from, to)
	}
	got := map[string]drift{}
	for _, d := range drifts(samples, from, to) {
		got[d.Series] = d
	}
	if d := got["rss"]; d.Pass || math.Abs(d.Pct10m-1.45) > 0.05 {
		t.Errorf("rss: %+v, want about +1.45%% of its mean and a fail", d)
	}
	if d := got["goroutines"]; !d.Pass || math.Abs(d.Pct10m) > 0.1 {
		t.Errorf("goroutines: %+v, want flat", d)
	}
	if d := got["fds"]; !d.Pass || d.Pct10m > -0.4 {
		t.Errorf("fds: %+v, want a fall, which passes", d)
	}

	// One file more half-way through, of 13: a step, not a drift.
	for i := range samples {
		samples[i].Procs[0].FDs = 13 + i/120
	}
	for _, d := range drifts(samples, from, to) {
		if d.Series == "fds" && (!d.Pass || d.Pct10m < 2) {
			t.Errorf("fds of 13 with a step to 14: %+v, want about +3%% and a pass", d)
		}
	}
	// One more every 10 minutes, of 13: a leak.
	for i := range samples {
		samples[i].Procs[0].FDs = 13 + i/60
	}
	for _, d := range drifts(samples, from, to) {
		if d.Series == "fds" && d.Pass {
			t.Errorf("fds of 13 growing by one every 10 minutes: %+v, want a fail", d)
		}
	}
}

func TestHistP99(t *testing.T) {
	delta := map[float64]float64{0.005: 50, 0.01: 98, 0.025: 99, 0.05: 100, math.Inf(1): 100}
	if got := histP99(delta); got != 25 {
		t.Errorf("histP99 = %v, want 25", got)
	}
	if got := histP99(map[float64]float64{0.5: 0, math.Inf(1): 0}); got != 0 {
		t.Errorf("histP99 of nothing = %v", got)
	}
}

// TestCheck gives two members what they should have, but one: the check
// must find it, and leave alone what was acked after a leave or within
// its grace.
func TestCheck(t *testing.T) {
	g := newGen(config{addrs: []string{"127.0.0.1:1"}, bigRoom: "big", roomSize: 1, churnClients: 2, sources: 1, sourceBase: 1})
	now := time.Now().UnixNano()
	for seq := uint64(10); seq <= 20; seq++ {
		g.led.room("big", acked{seq, now})
		g.led.room("s0", acked{seq + 100, now - int64(20-seq)*int64(time.Second)})
	}
	g.led.dm(conv("c0", "c1"), acked{5, now})

	stay := &membership{room: "big", set: &bitSet{}, joinedOnce: true, start: 12, live: true}
	for seq := uint64(13); seq <= 20; seq++ {
		if seq != 17 {
			stay.set.add(seq)
		}
	}
	g.big[0].rooms["big"] = stay
	// c0 left s0 3 s ago, having received up to 114: 115 was acked 2 s
	// before the leave, 116 and 117 within the grace, 118 to 120 after.
	left := &membership{room: "s0", set: &listSet{}, joinedOnce: true, start: 109, ended: true, endSeq: 114,
		endAt: now - 3*int64(time.Second)}
	for seq := uint64(110); seq <= 114; seq++ {
		left.set.add(seq)
	}
	c0, c1 := g.churn[0], g.churn[1]
	c0.ended = append(c0.ended, left)
	c0.cs, c1.cs = &connState{}, &connState{}
	c0.convs["c1"] = &listSet{}
	c0.convs["c1"].add(5)

	r := g.check(2 * time.Second)
	if r.Lost != 2 || r.Expected != 8+6 || r.Uncertain != 2 || r.DMLost != 1 || r.DMExpected != 2 {
		t.Errorf("check = %+v; want 2 lost (17 in big, 115 in s0) of 14, 2 uncertain (116, 117), c1's dm lost", r)
	}
}
