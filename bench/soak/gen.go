package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// gen is the load: the room of 1,000 with its publishers, and the churn
// clients in small rooms.
type gen struct {
	cfg     config
	addrs   []string
	pad     string
	led     *ledger
	cnt     counters
	errs    errLog
	notes   noteLog // what the summary shows in full: rejoins not recovered
	lat     [2]latencies
	cur     atomic.Int32 // which of lat this interval records into
	big     []*client
	churn   []*client
	readers sync.WaitGroup // the connections' readers
}

// counters are the generator's totals; a sample reports their growth.
type counters struct {
	live, replayed, dms, typing, presence atomic.Int64 // received
	stray                                 atomic.Int64 // room messages for a room the client is not in
	seen, forgotten                       atomic.Int64 // -lose
	posts, dmsSent, typingSent, acks      atomic.Int64 // sent, and acked
	resent                                atomic.Int64 // posts sent again after a drop
	connects, joins, rejoins, leaves      atomic.Int64
	drops, disconnects, serverCloses      atomic.Int64
	histories                             atomic.Int64 // history pages read to recover dms
}

// noteLog keeps the first notes in full, and counts them all.
type noteLog struct {
	mu    sync.Mutex
	first []string // guarded by mu
	n     int      // guarded by mu
}

func (l *noteLog) add(note string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n++
	if len(l.first) < 10 {
		l.first = append(l.first, note)
	}
}

func (l *noteLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.first)
	if l.n > len(l.first) {
		out = append(out, fmt.Sprintf("and %d more", l.n-len(l.first)))
	}
	return out
}

// errLog counts errors by message and keeps the first of each.
type errLog struct {
	mu     sync.Mutex
	counts map[string]int // guarded by mu
}

func (e *errLog) add(msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.counts == nil {
		e.counts = make(map[string]int)
	}
	// Users and numbers vary; the kind of error is what counts.
	if _, rest, ok := strings.Cut(msg, ": "); ok && (strings.HasPrefix(msg, "b") || strings.HasPrefix(msg, "c")) {
		msg = rest
	}
	e.counts[msg]++
}

func (e *errLog) total() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, c := range e.counts {
		n += c
	}
	return n
}

// top lists the errors, most frequent first.
func (e *errLog) top(n int) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for msg, c := range e.counts {
		out = append(out, fmt.Sprintf("%d x %s", c, msg))
	}
	slices.SortFunc(out, func(a, b string) int {
		var x, y int
		fmt.Sscan(a, &x)
		fmt.Sscan(b, &y)
		return y - x
	})
	return out[:min(n, len(out))]
}

func newGen(cfg config) *gen {
	g := &gen{cfg: cfg, addrs: cfg.addrs, led: newLedger(), pad: strings.Repeat("x", max(cfg.size-48, 0))}
	for i := range cfg.roomSize {
		g.big = append(g.big, newClient(g, i, fmt.Sprintf("b%d", i), true))
	}
	for i := range cfg.churnClients {
		g.churn = append(g.churn, newClient(g, cfg.roomSize+i, fmt.Sprintf("c%d", i), false))
	}
	return g
}

func (g *gen) latencies() *latencies { return &g.lat[g.cur.Load()] }

// turn starts a new interval of latencies and returns the one ended.
func (g *gen) turn() *latencies {
	old := g.cur.Load()
	g.lat[1-old].reset()
	g.cur.Store(1 - old)
	return &g.lat[old]
}

// source is the client's source address: clients spread over
// 127.0.0.<base>.. as loadgen's (one address runs out of ports near
// 27,000 connections; these reconnect all the time, TIME_WAIT holding
// each old port a minute).
func (g *gen) source(id int) *net.TCPAddr {
	host, _, err := net.SplitHostPort(g.cfg.addrs[0])
	if err != nil || !net.ParseIP(host).IsLoopback() {
		return nil
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(g.cfg.sourceBase+id%g.cfg.sources))}
}

// edgeFor is the edge a client connects to: the room's members spread
// evenly, a churn client anywhere at each connect (after a drop, on
// another edge as often as not, as behind a balancer).
func (g *gen) edgeFor(c *client) string {
	if c.big {
		return g.addrs[c.id%len(g.addrs)]
	}
	return g.addrs[rand.N(len(g.addrs))]
}

// connectBig connects the room's members, concurrency at a time, each
// joining the room.
func (g *gen) connectBig(ctx context.Context) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	var first atomic.Value
	for range min(100, len(g.big)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(g.big)); i = next.Add(1) - 1 {
				c := g.big[i]
				cs, err := c.connect(ctx, g.edgeFor(c))
				if err == nil {
					if err = c.recover(ctx, cs); err == nil {
						err = c.join(ctx, cs, g.cfg.bigRoom)
					}
					if err != nil {
						c.drop(cs)
					}
				}
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err)
				}
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d of the room's %d members did not join, the first: %v", n, len(g.big), first.Load())
	}
	return nil
}

// stay keeps a member of the room of 1,000 in it: when the server
// closes its connection (a slow client, say), it comes back with since,
// until load ends; then it makes sure to be back for the end check.
func (c *client) stay(load, run context.Context) {
	for {
		c.mu.Lock()
		cs := c.cs
		c.mu.Unlock()
		if cs == nil {
			var err error
			if cs, err = c.comeBack(run); err != nil {
				return
			}
		}
		select {
		case <-cs.done:
			c.away(cs)
			continue
		case <-load.Done():
		}
		select {
		case <-cs.done: // closed by the server as the load ended: back for the check
			c.away(cs)
			_, _ = c.comeBack(run)
		default:
		}
		return
	}
}

// publish posts to the room at the configured rate until load ends; a
// tick that finds the publisher away is skipped.
func (c *client) publish(load context.Context, idx int) {
	cfg := c.g.cfg
	interval := time.Duration(float64(time.Second) / cfg.rate)
	next := time.Now().Add(interval * time.Duration(idx) / time.Duration(max(cfg.publishers, 1)))
	t := time.NewTimer(time.Until(next))
	defer t.Stop()
	for {
		select {
		case <-load.Done():
			return
		case <-t.C:
		}
		next = next.Add(interval)
		t.Reset(time.Until(next))
		c.mu.Lock()
		cs := c.cs
		c.mu.Unlock()
		if cs != nil {
			c.post(cs, cfg.bigRoom, "")
		}
	}
}

// churnRoom is a small room's name.
func (g *gen) churnRoom(i int) string { return fmt.Sprintf("s%d", i) }

// runChurn is a churn client's life until load ends: connect, join one
// or two small rooms, then an action at random times (a Poisson process
// of the configured rate over all churn clients). At the end it comes
// back if it is away, for the end check.
func (c *client) runChurn(load, run context.Context) {
	g := c.g
	mean := time.Duration(float64(time.Second) * float64(len(g.churn)) / g.cfg.churnRate)
	// Clients start spread over one mean interval.
	select {
	case <-time.After(rand.N(mean) + 1):
	case <-load.Done():
		return
	}
	var cs *connState
	fresh := true
	for load.Err() == nil {
		if cs == nil {
			var err error
			if cs, err = c.comeBack(run); err != nil {
				return
			}
			if fresh {
				for range 1 + rand.N(2) {
					_ = c.joinSome(load, cs)
				}
				fresh = false
			}
		}
		select {
		case <-load.Done():
		case <-cs.done:
			c.away(cs)
			cs = nil
			continue
		case <-time.After(time.Duration(rand.ExpFloat64() * float64(mean))):
			var away time.Duration
			cs, away, fresh = c.act(load, cs)
			if cs == nil {
				select {
				case <-time.After(away):
				case <-load.Done():
				}
			}
		}
	}
	if cs != nil {
		select {
		case <-cs.done: // closed by the server as the load ended
			c.away(cs)
			cs = nil
		default:
		}
	}
	if cs == nil {
		if _, err := c.comeBack(run); err != nil {
			return
		}
	}
	c.awaitAcks(run)
}

// awaitAcks waits until every post is acked or refused, or ctx ends.
func (c *client) awaitAcks(ctx context.Context) {
	for ctx.Err() == nil {
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// act does one action at random. It returns the connection (nil once the
// client dropped or closed it), how long to stay away then, and whether
// to join rooms afresh when back (after a clean close).
func (c *client) act(ctx context.Context, cs *connState) (*connState, time.Duration, bool) {
	g := c.g
	joined := c.joinedRooms()
	var err error
	switch r := rand.Float64(); {
	case len(joined) == 0:
		err = c.joinSome(ctx, cs)
	case r < 0.35:
		c.post(cs, joined[rand.N(len(joined))], "")
	case r < 0.50:
		peer := g.churn[rand.N(len(g.churn))]
		if peer == c {
			peer = g.churn[(c.id-g.cfg.roomSize+1)%len(g.churn)]
		}
		c.post(cs, "", peer.user)
	case r < 0.65:
		err = cs.ws.WriteText(fmt.Appendf(nil, `{"type":"typing","room":%q}`, joined[rand.N(len(joined))]))
		g.cnt.typingSent.Add(1)
	case r < 0.75: // move to another room
		if err = c.leave(ctx, cs, joined[rand.N(len(joined))]); err == nil {
			err = c.joinSome(ctx, cs)
		}
	case r < 0.80: // one room more, or one less
		if len(joined) < 3 {
			err = c.joinSome(ctx, cs)
		} else {
			err = c.leave(ctx, cs, joined[rand.N(len(joined))])
		}
	case r < 0.92: // the network goes, for a while: back with since
		c.drop(cs)
		g.cnt.drops.Add(1)
		return nil, awayFor(), false
	default: // a clean close: back later, afresh
		c.disconnect(cs)
		g.cnt.disconnects.Add(1)
		return nil, awayFor(), true
	}
	if err != nil {
		// A request that failed leaves the connection in doubt: drop it
		// and come back with since. One cut short by the load's end is
		// no error of the server's.
		if ctx.Err() == nil {
			g.errs.add(err.Error())
		}
		c.drop(cs)
		return nil, 0, false
	}
	return cs, 0, false
}

// awayFor is how long a client stays away: between 0.2 and 3 s.
func awayFor() time.Duration { return 200*time.Millisecond + rand.N(2800*time.Millisecond) }

// joinSome joins a small room the client is not in.
func (c *client) joinSome(ctx context.Context, cs *connState) error {
	g := c.g
	for range 10 {
		room := g.churnRoom(rand.N(g.cfg.churnRooms))
		c.mu.Lock()
		_, in := c.rooms[room]
		c.mu.Unlock()
		if !in {
			return c.join(ctx, cs, room)
		}
	}
	return nil
}

func (c *client) joinedRooms() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for room, m := range c.rooms {
		if m.joinedOnce && m.live {
			out = append(out, room)
		}
	}
	slices.Sort(out)
	return out
}
