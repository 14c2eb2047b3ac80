package edge

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// seqsOf returns the seqs of events as ev makes them.
func seqsOf(t *testing.T, lines [][]byte) []uint64 {
	t.Helper()
	var out []uint64
	for _, l := range lines {
		var seq uint64
		if _, err := fmt.Sscanf(string(l), `{"seq":%d`, &seq); err != nil {
			t.Fatalf("line %s: %v", l, err)
		}
		out = append(out, seq)
	}
	return out
}

func ev(seq uint64) []byte { return fmt.Appendf(nil, `{"seq":%d,"type":"message"}`, seq) }

// The recent log answers only for ranges it holds whole: messages that
// follow on from each other by their previous seq in the room.
func TestRecentLogSince(t *testing.T) {
	now := time.Now()
	type add struct{ seq, prev uint64 }
	for _, tc := range []struct {
		name        string
		adds        []add
		since, last uint64
		want        []uint64 // nil with ok false
		ok          bool
	}{
		{"empty log", nil, 0, 0, nil, false},
		{"from the room's first message", []add{{1, 0}, {2, 1}, {3, 2}}, 0, 3, []uint64{1, 2, 3}, true},
		{"a middle range", []add{{1, 0}, {2, 1}, {3, 2}, {4, 3}}, 1, 3, []uint64{2, 3}, true},
		{"nothing missed", []add{{1, 0}, {2, 1}}, 2, 2, []uint64{}, true},
		{"other rooms' seqs between", []add{{10, 4}, {17, 10}, {30, 17}}, 10, 30, []uint64{17, 30}, true},
		{"since before the log", []add{{10, 4}, {17, 10}}, 3, 17, nil, false},
		{"since at the log's base", []add{{10, 4}, {17, 10}}, 4, 17, []uint64{10, 17}, true},
		{"last not reached yet", []add{{1, 0}, {2, 1}}, 0, 3, nil, false},
		{"a gap starts it again", []add{{1, 0}, {2, 1}, {5, 4}, {6, 5}}, 1, 6, nil, false},
		{"after the gap", []add{{1, 0}, {2, 1}, {5, 4}, {6, 5}}, 4, 6, []uint64{5, 6}, true},
		{"unknown previous seq", []add{{1, 0}, {2, noPrev}, {3, 2}}, 1, 3, nil, false},
		{"after an unknown previous seq", []add{{1, 0}, {2, noPrev}, {3, 2}}, 2, 3, []uint64{3}, true},
		{"a seq gone past is ignored", []add{{1, 0}, {2, 1}, {2, 1}, {1, 0}, {3, 2}}, 0, 3, []uint64{1, 2, 3}, true},
		{"since above last", []add{{1, 0}, {2, 1}}, 2, 1, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var l recentLog
			for _, a := range tc.adds {
				l.add(a.seq, a.prev, ev(a.seq), now)
			}
			got, oldest, capped, ok := l.since(tc.since, tc.last)
			if ok != tc.ok {
				t.Fatalf("since(%d, %d) ok = %v, want %v", tc.since, tc.last, ok, tc.ok)
			}
			if !ok {
				return
			}
			lines := make([][]byte, len(got))
			for i, g := range got {
				lines[i] = g
			}
			if s := seqsOf(t, lines); !slices.Equal(s, tc.want) {
				t.Fatalf("since(%d, %d) = %v, want %v", tc.since, tc.last, s, tc.want)
			}
			if capped || len(tc.want) > 0 && oldest != tc.want[0] || len(tc.want) == 0 && oldest != tc.since+1 {
				t.Fatalf("since(%d, %d): oldest %d, capped %v", tc.since, tc.last, oldest, capped)
			}
		})
	}
}

// A message that is not an event keeps its place in the log but is not
// replayed.
func TestRecentLogSkipsNonEvents(t *testing.T) {
	var l recentLog
	now := time.Now()
	l.add(1, 0, ev(1), now)
	l.add(2, 1, nil, now)
	l.add(3, 2, ev(3), now)
	got, _, _, ok := l.since(0, 3)
	if !ok || len(got) != 2 {
		t.Fatalf("since(0, 3) = %d events, %v; want events 1 and 3", len(got), ok)
	}
}

// More than maxReplay after since: the newest maxReplay, capped, whether
// the log holds since or not, as long as it holds that many up to last.
func TestRecentLogCapped(t *testing.T) {
	var l recentLog
	now := time.Now()
	const n = maxReplay + 500
	for seq := uint64(101); seq <= 100+n; seq++ {
		l.add(seq, seq-1, ev(seq), now)
	}
	for _, tc := range []struct {
		name        string
		since, last uint64
		oldest      uint64
		ok          bool
	}{
		{"since in the log", 150, 100 + n, 101 + n - maxReplay, true},
		{"since before the log", 3, 100 + n, 101 + n - maxReplay, true},
		{"last short of the newest", 3, 100 + maxReplay, 101, true},
		{"too few up to last", 3, 99 + maxReplay, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, oldest, capped, ok := l.since(tc.since, tc.last)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if ok && (!capped || len(got) != maxReplay || oldest != tc.oldest) {
				t.Fatalf("%d events from %d, capped %v; want %d from %d, capped", len(got), oldest, capped, maxReplay, tc.oldest)
			}
		})
	}
	// Exactly maxReplay after since, all in the log: whole.
	if got, _, capped, ok := l.since(100+n-maxReplay, 100+n); !ok || capped || len(got) != maxReplay {
		t.Fatalf("exactly the cap: %d events, capped %v, ok %v", len(got), capped, ok)
	}
}

// The log keeps at most maxRecent messages, maxRecentBytes of them, and
// none older than recentFor once trimmed; what it let go of it no longer
// answers for.
func TestRecentLogBounds(t *testing.T) {
	now := time.Now()
	t.Run("count", func(t *testing.T) {
		var l recentLog
		for seq := uint64(1); seq <= maxRecent+10; seq++ {
			l.add(seq, seq-1, ev(seq), now)
		}
		if len(l.entries) != maxRecent || l.base != 10 {
			t.Fatalf("%d kept after %d, want %d after 10", len(l.entries), l.base, maxRecent)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		var l recentLog
		big := []byte(`{"seq":1,"text":"` + strings.Repeat("x", 100<<10) + `"}`)
		for seq := uint64(1); seq <= 20; seq++ {
			l.add(seq, seq-1, big, now)
		}
		if l.bytes > maxRecentBytes || l.bytes != len(l.entries)*len(big) {
			t.Fatalf("%d bytes kept in %d entries, bound %d", l.bytes, len(l.entries), maxRecentBytes)
		}
		if l.base != 20-uint64(len(l.entries)) {
			t.Fatalf("base %d with %d entries up to 20", l.base, len(l.entries))
		}
	})
	t.Run("age", func(t *testing.T) {
		var l recentLog
		l.add(1, 0, ev(1), now.Add(-recentFor-time.Second))
		l.add(2, 1, ev(2), now)
		l.trim(now)
		if _, _, _, ok := l.since(0, 2); ok {
			t.Fatal("answered for a message trimmed for its age")
		}
		if got, _, _, ok := l.since(1, 2); !ok || len(got) != 1 {
			t.Fatalf("since(1, 2) = %d, %v; want message 2", len(got), ok)
		}
	})
}
