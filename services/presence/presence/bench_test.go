package presence

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// BenchmarkSyncApply makes a whole edge's state of 15,000 sessions of 100
// rooms each (1.5 million pairs, 2,000 rooms) the view, as a sync does,
// and reports the heap the view holds.
func BenchmarkSyncApply(b *testing.B) {
	const sessions, rooms = 15000, 100
	snap := make(map[string]*session, sessions)
	for i := range sessions {
		s := &session{user: fmt.Sprintf("user-%05d", i), rooms: make(map[string]struct{}, rooms)}
		for j := range rooms {
			s.rooms[fmt.Sprintf("room-%04d", (i+j)%2000)] = struct{}{}
		}
		snap[fmt.Sprintf("%016x", i)] = s
	}
	var heap uint64
	for b.Loop() {
		st := newState()
		e := st.edge("edge-1", time.Now())
		st.replace(e, snap, nil)
		b.StopTimer()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		st.drop(e, nil)
		e = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = before.HeapAlloc - after.HeapAlloc
		b.StartTimer()
	}
	b.ReportMetric(float64(heap)/(1<<20), "MiB-view")
	b.ReportMetric(float64(sessions*rooms)*float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}
