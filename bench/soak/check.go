package main

import (
	"fmt"
	"slices"
	"time"
)

// checkResult is the end check: what every member should have received
// of the acked posts, against what it did.
type checkResult struct {
	RoomAcked      int      `json:"room_acked"`    // room posts acked
	DMAcked        int      `json:"dm_acked"`      // dms acked
	Memberships    int      `json:"memberships"`   // stays in a room checked, ended or not
	Expected       int64    `json:"expected"`      // room deliveries expected
	Lost           int64    `json:"lost"`          // of those, not received
	Uncertain      int64    `json:"uncertain"`     // acked within the grace before a leave and not received: not counted
	Duplicates     int64    `json:"duplicates"`    // room messages received twice by one member
	OutOfOrder     int64    `json:"out_of_order"`  // received after a newer one
	NotRecovered   int      `json:"not_recovered"` // rejoins with since answered recovered: false
	DMExpected     int64    `json:"dm_expected"`   // dm deliveries expected (both parties)
	DMLost         int64    `json:"dm_lost"`       // of those, not received live nor recovered from history
	DMRepeats      int64    `json:"dm_repeats"`    // dms received again (history overlapping live; allowed)
	Unchecked      int      `json:"unchecked"`     // clients not back at the end: their dms not checked
	Pending        int      `json:"pending"`       // posts never answered (a drop's, not sent again before the end)
	Forgotten      int64    `json:"forgotten"`     // -lose: deliveries the clients forgot on purpose
	LostExamples   []string `json:"lost_examples,omitempty"`
	DMLostExamples []string `json:"dm_lost_examples,omitempty"`
}

// check compares, for every client, what it received with the acked
// posts it should have: in each of its stays in a room, every seq acked
// after its first joined (after the leave only those it received
// up to then, or acked a grace before the leave was sent: whether one
// acked just before reached it is a race the protocol leaves open); and
// in each of its conversations, every acked dm.
func (g *gen) check(grace time.Duration) checkResult {
	g.led.sorted()
	r := checkResult{Forgotten: g.cnt.forgotten.Load()}
	for _, s := range g.led.rooms {
		r.RoomAcked += len(s)
	}
	byUser := make(map[string][]convKey)
	for k, s := range g.led.convs {
		r.DMAcked += len(s)
		byUser[k.a] = append(byUser[k.a], k)
		if k.b != k.a {
			byUser[k.b] = append(byUser[k.b], k)
		}
	}
	for _, c := range append(slices.Clone(g.big), g.churn...) {
		c.mu.Lock()
		ms := slices.Clone(c.ended)
		for _, m := range c.rooms {
			ms = append(ms, m)
		}
		for _, m := range ms {
			if !m.joinedOnce {
				continue
			}
			r.Memberships++
			r.Duplicates += m.dups
			r.OutOfOrder += m.disorder
			r.NotRecovered += m.unrecov
			acks := g.led.rooms[m.room]
			i, _ := slices.BinarySearchFunc(acks, m.start+1, func(a acked, seq uint64) int { return cmpU(a.seq, seq) })
			for _, a := range acks[i:] {
				got := m.set.has(a.seq)
				if m.ended && a.seq > m.endSeq && a.at > m.endAt-int64(grace) {
					if !got && a.at <= m.endAt {
						r.Uncertain++
					}
					continue // acked after the leave, or too close before it
				}
				r.Expected++
				if !got {
					r.Lost++
					if len(r.LostExamples) < 10 {
						r.LostExamples = append(r.LostExamples, fmt.Sprintf("%s in %s: seq %d (joined after %d, %s)", c.user, m.room, a.seq, m.start, endNote(m)))
					}
				}
			}
		}
		r.Pending += len(c.pending)
		if !c.big {
			if c.cs == nil {
				r.Unchecked++
			} else {
				for _, k := range byUser[c.user] {
					peer := k.a
					if peer == c.user {
						peer = k.b
					}
					got := c.convs[peer]
					for _, a := range g.led.convs[k] {
						r.DMExpected++
						if got == nil || !got.has(a.seq) {
							r.DMLost++
							if len(r.DMLostExamples) < 10 {
								r.DMLostExamples = append(r.DMLostExamples, fmt.Sprintf("%s with %s: seq %d", c.user, peer, a.seq))
							}
						}
					}
				}
			}
			r.DMRepeats += c.dmRepeats
		}
		c.mu.Unlock()
	}
	return r
}

func endNote(m *membership) string {
	if !m.ended && !m.live {
		return "away at the end"
	}
	if !m.ended {
		return "still in the room"
	}
	return fmt.Sprintf("left after receiving %d", m.endSeq)
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
