package main

import (
	"cmp"
	"slices"
	"sync"
)

// acked is a post the server acknowledged: its seq, and when the ack came
// (Unix nanoseconds).
type acked struct {
	seq uint64
	at  int64
}

// ledger holds every acked post, by room and by conversation: what the
// end check expects members to have received.
type ledger struct {
	mu    sync.Mutex
	rooms map[string][]acked  // guarded by mu
	convs map[convKey][]acked // guarded by mu
}

// convKey names a conversation by its two users in bytewise order, as
// the server's subjects do.
type convKey struct{ a, b string }

func conv(x, y string) convKey {
	if y < x {
		x, y = y, x
	}
	return convKey{x, y}
}

func newLedger() *ledger {
	return &ledger{rooms: make(map[string][]acked), convs: make(map[convKey][]acked)}
}

func (l *ledger) room(room string, a acked) {
	l.mu.Lock()
	l.rooms[room] = append(l.rooms[room], a)
	l.mu.Unlock()
}

func (l *ledger) dm(k convKey, a acked) {
	l.mu.Lock()
	l.convs[k] = append(l.convs[k], a)
	l.mu.Unlock()
}

// sorted sorts every list by seq and drops repeats: a post sent again
// after a drop is acked with its first seq.
func (l *ledger) sorted() {
	l.mu.Lock()
	defer l.mu.Unlock()
	tidy := func(s []acked) []acked {
		slices.SortFunc(s, func(x, y acked) int { return cmp.Compare(x.seq, y.seq) })
		return slices.CompactFunc(s, func(x, y acked) bool { return x.seq == y.seq })
	}
	for k, s := range l.rooms {
		l.rooms[k] = tidy(s)
	}
	for k, s := range l.convs {
		l.convs[k] = tidy(s)
	}
}
