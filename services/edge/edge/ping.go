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
// ends: every turn looks at every client's silence, so a drop comes at
// most PingInterval/pingSlots late. It is the only timer the edge keeps
// for idle connections.
func (e *Edge) pinger(ctx context.Context) {
	tick := time.NewTicker(max(e.cfg.Limits.PingInterval/pingSlots, time.Millisecond))
	defer tick.Stop()
	var due, gone []*client
	for slot := 0; ; slot = (slot + 1) % pingSlots {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		silent := time.Now().Add(-e.cfg.Limits.PongTimeout).UnixNano()
		e.mu.Lock()
		for c := range e.clients {
			switch {
			case c.heard.Load() < silent:
				gone = append(gone, c)
			case c.pingSlot == slot:
				due = append(due, c)
			}
		}
		e.mu.Unlock()
		for _, c := range gone {
			c.close(-1, "silent past the pong timeout") // gone without a word: no close frame
		}
		for _, c := range due {
			c.mu.Lock()
			if !c.closing {
				c.pingDue = true
				c.signal()
			}
			c.mu.Unlock()
		}
		clear(due)
		clear(gone)
		due, gone = due[:0], gone[:0]
	}
}
