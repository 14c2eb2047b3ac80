package main

import (
	"math/bits"
	"sync/atomic"
)

// latencies counts the delivery latencies of one sample interval, in
// microseconds, in buckets of 16 per power of two (each within 1/32 of
// its value): a million deliveries a second cannot each be kept.
type latencies struct {
	n [histBuckets]atomic.Uint64
}

const histBuckets = 16 * 61

func bucketOf(us uint64) int {
	if us < 32 {
		return int(us)
	}
	n := bits.Len64(us) // >= 6
	return 16*(n-4) + int(us>>(n-5)&15)
}

// bucketMid is the middle of a bucket, in microseconds.
func bucketMid(i int) float64 {
	if i < 32 {
		return float64(i)
	}
	n, m := i/16+4, uint64(i%16+16)
	lo := m << (n - 5)
	return float64(lo) + float64(uint64(1)<<(n-5))/2
}

func (l *latencies) record(us int64) {
	l.n[bucketOf(uint64(max(us, 0)))].Add(1)
}

// reset empties l; its recorders may still be adding to it.
func (l *latencies) reset() {
	for i := range l.n {
		l.n[i].Store(0)
	}
}

// quantiles reads l: the count and the given quantiles in milliseconds
// (the last one is the maximum when q is 1).
func (l *latencies) quantiles(qs ...float64) (uint64, []float64) {
	var counts [histBuckets]uint64
	var total uint64
	for i := range l.n {
		counts[i] = l.n[i].Load()
		total += counts[i]
	}
	out := make([]float64, len(qs))
	if total == 0 {
		return 0, out
	}
	for j, q := range qs {
		want := uint64(q * float64(total))
		want = max(min(want, total), 1)
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen >= want {
				out[j] = bucketMid(i) / 1000
				break
			}
		}
	}
	return total, out
}
