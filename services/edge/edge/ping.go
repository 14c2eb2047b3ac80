package edge

import (
	"context"
	"time"
)

// pingSlots is how many turns the pinger spreads the clients over: each
// turn, a PingInterval/pingSlots apart, it asks the flushers to ping one
// slot's clients, so that the pings (and the pongs read back) come as a
// steady trickle, not as a burst of every connection at once.
const pingSlots = 25

// pinger asks every client for a ping once per PingInterval, and drops
// one that has sent nothing (not even a pong) for PongTimeout, until ctx
// ends. It is the only timer the edge keeps for idle connections.
func (e *Edge) pinger(ctx context.Context) {
	tick := time.NewTicker(max(e.cfg.Limits.PingInterval/pingSlots, time.Millisecond))
	defer tick.Stop()
	var due []*client
	for slot := 0; ; slot = (slot + 1) % pingSlots {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		e.mu.Lock()
		for c := range e.clients {
			if c.pingSlot == slot {
				due = append(due, c)
			}
		}
		e.mu.Unlock()
		silent := time.Now().Add(-e.cfg.Limits.PongTimeout).UnixNano()
		for _, c := range due {
			if c.heard.Load() < silent {
				c.close(-1, "") // gone without a word: no close frame
				continue
			}
			c.mu.Lock()
			if !c.closing {
				c.pingDue = true
				c.signal()
			}
			c.mu.Unlock()
		}
		clear(due)
		due = due[:0]
	}
}
