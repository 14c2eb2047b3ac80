package edge

import (
	"encoding/json"
	"slices"
	"sync"
	"time"
)

// The recent log of a room: the newest stored messages the hub handed to
// the room's local members, kept so that a join with since can be
// replayed from memory instead of from the stream. When thousands of
// clients drop and rejoin a busy room at once, each reads what it missed:
// from the stream that was hundreds of messages per join, and building
// the NATS server's direct-get answers and parsing them was most of the
// edge's time (bench/: scenario E), while the live messages waited.
//
// The log keeps only messages that follow on from each other: each one's
// previous seq in the room (the stream's RePublish header) is the seq
// before it in the log, so the log holds every stored message of the
// room from the seq after base on. A message that does not follow on
// (the subscription dropped one, NATS reconnected, a gap was repaired
// from the stream) starts the log again from it. A join uses the log
// only when it holds what the stream would answer: everything after
// since up to the room's newest seq, or the newest maxReplay of it when
// there are more. Whether retention dropped any of it is still asked of
// the stream, so the replay and recovered are what they were.
const (
	// recentFor is how long a message stays in a room's recent log: a
	// client back within this of its drop is replayed from memory.
	recentFor = 30 * time.Second
	// maxRecent and maxRecentBytes bound one room's log; with recentFor
	// they bound the edge's: the bytes of the messages its rooms
	// received in recentFor. Twice the replay cap, so that a client that
	// missed more than the cap gets the newest maxReplay from memory too.
	maxRecent      = 2 * maxReplay
	maxRecentBytes = 512 << 10
)

// noPrev is the previous seq of a message that does not name it.
const noPrev = ^uint64(0)

// recentLog is a room's recent messages. The dispatcher adds, joins read
// and the hub's periodic check trims, each under mu.
type recentLog struct {
	mu sync.Mutex
	// started is set once a message has been kept; base is the seq just
	// before the first entry; entries follow on from base, oldest first,
	// at most maxRecent of them, bytes of lines in all.
	started bool
	base    uint64
	entries []recentEntry
	bytes   int
}

type recentEntry struct {
	seq  uint64
	at   time.Time // when it was kept
	line []byte    // the event with its seq; nil: not an event, not sent
}

// add keeps the message seq, whose previous seq in the room is prev
// (noPrev: unknown), at now. A seq the log has gone past is ignored.
func (l *recentLog) add(seq, prev uint64, line []byte, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	newest := l.newestLocked()
	switch {
	case l.started && seq <= newest:
		return
	case prev == noPrev || prev >= seq:
		// Nothing can be said about what came before it: start after it.
		l.resetLocked(seq)
		return
	case !l.started || prev != newest:
		l.resetLocked(prev)
	}
	l.entries = append(l.entries, recentEntry{seq: seq, at: now, line: line})
	l.bytes += len(line)
	for len(l.entries) > maxRecent || l.bytes > maxRecentBytes {
		l.dropOldestLocked()
	}
}

// trim drops the messages kept longer than recentFor before now.
func (l *recentLog) trim(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.entries) > 0 && now.Sub(l.entries[0].at) > recentFor {
		l.dropOldestLocked()
	}
}

// since returns what a replay of the stored messages after since up to
// last would be, when the log holds it: every one of them, or, when there
// are more than maxReplay, the newest maxReplay (capped). oldest is the
// seq of the first message returned, or since+1 when none is. ok is false
// when the log cannot tell (the caller reads the stream).
func (l *recentLog) since(since, last uint64) (lines []json.RawMessage, oldest uint64, capped, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.started || last > l.newestLocked() || since > last {
		return nil, 0, false, false
	}
	// The entries up to last, [from, to).
	to, _ := slices.BinarySearchFunc(l.entries, last+1, bySeq)
	var from int
	switch {
	case since >= l.base:
		from, _ = slices.BinarySearchFunc(l.entries, since+1, bySeq)
		if to-from > maxReplay {
			from, capped = to-maxReplay, true
		}
	case to >= maxReplay:
		// Messages after since are missing from the log: base is one
		// of them (the room's message before the first entry, or one
		// dropped from the log). So there are more than maxReplay, and
		// the log holds the newest maxReplay.
		from, capped = to-maxReplay, true
	default:
		return nil, 0, false, false
	}
	oldest = since + 1
	if from < to {
		oldest = l.entries[from].seq
	}
	lines = make([]json.RawMessage, 0, to-from)
	for _, e := range l.entries[from:to] {
		if e.line != nil {
			lines = append(lines, e.line)
		}
	}
	return lines, oldest, capped, true
}

func bySeq(e recentEntry, seq uint64) int {
	switch {
	case e.seq < seq:
		return -1
	case e.seq > seq:
		return 1
	}
	return 0
}

func (l *recentLog) newestLocked() uint64 {
	if len(l.entries) == 0 {
		return l.base
	}
	return l.entries[len(l.entries)-1].seq
}

// resetLocked empties the log, which then follows on from base.
func (l *recentLog) resetLocked(base uint64) {
	clear(l.entries)
	l.entries, l.bytes, l.base, l.started = l.entries[:0], 0, base, true
}

func (l *recentLog) dropOldestLocked() {
	e := l.entries[0]
	l.entries[0] = recentEntry{}
	l.entries = l.entries[1:]
	l.base = e.seq
	l.bytes -= len(e.line)
}
