package ws

import (
	"context"
	"time"
)

// pingSlots is how many turns the pinger spreads the connections over:
// each turn, a PingInterval/pingSlots apart, it asks the flushers to ping
// one slot's connections, so that the pings (and the pongs read back)
// come as a steady trickle, not as a burst of every connection at once.
const pingSlots = 25

// pinger asks every connection for a ping once per PingInterval, and
// drops one whose client has sent nothing (not even a pong) for
// PongTimeout, until ctx ends: every turn looks at every connection's
// silence, so a drop comes at most PingInterval/pingSlots late. It is the
// only timer the server keeps for idle connections.
func (s *Server) pinger(ctx context.Context) {
	tick := time.NewTicker(max(s.cfg.PingInterval/pingSlots, time.Millisecond))
	defer tick.Stop()
	var due, gone []*Conn
	for slot := 0; ; slot = (slot + 1) % pingSlots {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		silent := time.Now().Add(-s.cfg.PongTimeout).UnixNano()
		s.mu.Lock()
		for c := range s.conns {
			switch {
			case c.heard.Load() < silent:
				gone = append(gone, c)
			case c.pingSlot == slot:
				due = append(due, c)
			}
		}
		s.mu.Unlock()
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
