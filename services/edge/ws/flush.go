package ws

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/natter-chat/natter/shared/proto"
)

// Writing. A connection has no goroutine of its own for writing either:
// a connection with something to send (signal) is handed to its server's
// flusher, which writes to every such connection in turn without waiting
// (the socket takes what fits in its buffer). Only a connection whose
// socket is full gets a goroutine, its slow writer, which waits for the
// socket (at most WriteTimeout per write) and gives the connection back
// once its queue is empty. So a connection that receives now and then
// costs no goroutine and no timer, and a slow one holds up nobody.
//
// One of three writes to a socket at a time, each owning it by a flag
// under Conn.mu: the flusher (scheduled), the slow writer (slow), and
// finish (finishing), which the one that finds the connection closing
// starts.

// flusher writes the queued events of its connections.
type flusher struct {
	delay time.Duration // CHAT_WRITE_DELAY
	wake  chan struct{} // a buffer of one: there are connections to flush

	mu    sync.Mutex
	dirty []*Conn // guarded by mu: the connections to flush, each once

	// Scratch of the flusher's goroutine, kept between rounds.
	work  []*Conn
	batch [][]byte
	buf   []byte
	out   []byte
	// now is the time the round's writes observe (clock), read stale
	// flushes ago.
	now   time.Time
	stale int
	// round is how long the last round of writes took.
	round time.Duration
}

// maxPause bounds the pause before a round (pause).
const maxPause = 50 * time.Millisecond

// pause is how long a round waits after the first event queued: the write
// delay, or as long as the last round took when that was longer (at most
// maxPause). A round that takes long is a flusher falling behind: with
// thousands of busy connections on one core the writes, one syscall
// each, are most of the server's time. Waiting as long as the round took
// halves the writes made, each carrying twice the events, and leaves at
// least half of the core to the rest (reading joins, replays, NATS)
// instead of writing again at once a few events per connection. It adds
// at most a round's time to an event's wait.
func pause(delay, round time.Duration) time.Duration {
	if delay <= 0 {
		return 0 // write at once, as configured
	}
	return max(delay, min(round, maxPause))
}

// newFlushers makes a server's flushers, n of them: one per P, so that
// writing is spread over the cores.
func newFlushers(n int, delay time.Duration) []*flusher {
	fs := make([]*flusher, max(n, 1))
	for i := range fs {
		fs[i] = &flusher{delay: delay, wake: make(chan struct{}, 1)}
	}
	return fs
}

// nextFlusher is the flusher of a new connection: each in turn.
func (s *Server) nextFlusher() *flusher {
	return s.flushers[int(s.flusherNext.Add(1))%len(s.flushers)]
}

// runFlushers runs the server's flushers until ctx ends; it returns at
// once, and wait returns once they have ended.
func (s *Server) runFlushers(ctx context.Context) (wait func()) {
	var wg sync.WaitGroup
	for _, f := range s.flushers {
		wg.Go(func() { f.run(ctx) })
	}
	return wg.Wait
}

// signal hands the connection to its flusher: the queue has events, a
// ping or pong is due, or the connection is closing. Called with mu held.
func (c *Conn) signal() {
	if c.scheduled || c.slow || c.finishing || !c.serving {
		return // whoever owns the socket sees it, or serve will
	}
	c.scheduled = true
	f := c.flusher
	f.mu.Lock()
	f.dirty = append(f.dirty, c)
	first := len(f.dirty) == 1
	f.mu.Unlock()
	if first {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// run flushes, until ctx ends, the connections handed to it: with a write
// delay, everything queued within it of the first event goes out in one
// write. In a busy room a client gets a write every few milliseconds
// instead of one per event, and those writes are most of the server's
// CPU (bench/: it raised what one core sustains in a room of 1,000 from
// 1 to 1.5 million deliveries a second).
func (f *flusher) run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		}
		if d := pause(f.delay, f.round); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		f.mu.Lock()
		f.work, f.dirty = f.dirty, f.work[:0]
		f.mu.Unlock()
		start := time.Now()
		f.stale = clockEvery // the clock is read again in each round
		for _, c := range f.work {
			f.flush(c)
		}
		clear(f.work)
		f.round = time.Since(start)
	}
}

// maxScratch bounds the buffers a flusher keeps between rounds.
const maxScratch = 1 << 20

// clockEvery is how many flushes of a round the time they observe
// (clock) is read once for.
const clockEvery = 16

// clock is the time a write observes: read afresh at most once every
// clockEvery flushes, and only in a round whose writes observe
// something, so it is behind by the time of at most that many flushes
// (tens of µs, where a ts counts milliseconds). A clock read per write
// would be one per recipient: time.Now takes 54 ns on the kvm-clock of
// a 2-core VM, more than the Observe (BenchmarkObserveWrite).
func (f *flusher) clock() time.Time {
	if f.stale >= clockEvery || f.now.IsZero() {
		f.now, f.stale = time.Now(), 0
	}
	return f.now
}

// flush writes what c has queued without waiting; what its socket does
// not take goes to a slow writer.
func (f *flusher) flush(c *Conn) {
	f.stale++
	c.mu.Lock()
	c.scheduled = false
	if c.slow || c.finishing {
		c.mu.Unlock()
		return
	}
	if c.closing {
		c.finishing = true
		c.mu.Unlock()
		c.s.writers.Go(c.finish)
		return
	}
	batch, pre, pong, ping, times := c.takeLocked(f.batch)
	spareTaken := c.queue != nil
	c.mu.Unlock()

	var err error
	f.out, f.buf, err = c.encode(append(f.out[:0], pre...), f.buf, batch, pong, ping)
	if kept := c.giveBack(batch); kept != nil || spareTaken {
		f.batch = kept
	}
	if err == nil {
		var n int
		n, err = c.writeNow(f.out)
		if n < len(f.out) && (err == nil || errors.Is(err, unix.EAGAIN)) {
			// The socket is full: the rest waits for it, on a goroutine,
			// which observes times once it is written.
			rest := slices.Clone(f.out[n:])
			c.mu.Lock()
			c.slow = true
			c.mu.Unlock()
			c.s.writers.Go(func() { c.slowWriter(rest, times) })
			err = nil
		} else if err == nil && times.any() {
			c.wrote(times, f.clock())
		}
	}
	if cap(f.out) > maxScratch {
		f.out = nil
	}
	if cap(f.buf) > maxScratch {
		f.buf = nil
	}
	if err != nil {
		c.close(-1, "write failed") // gone: the next round finishes it
	}
}

// takeLocked takes what is to be written: the queued events (swapped
// with spare, an empty slice to queue into next), the bytes to write
// before them (the handshake's answer, the first time), a pong frame,
// whether a ping is due, and the times to observe once it is written.
func (c *Conn) takeLocked(spare [][]byte) (batch [][]byte, pre, pong []byte, ping bool, times writeTimes) {
	batch, pre, pong, ping = c.queue, c.preamble, c.pong, c.pingDue
	c.queue, c.preamble, c.pong, c.live, c.pingDue = nil, nil, nil, 0, false
	times = writeTimes{oldest: c.oldest}
	c.oldest = 0
	if pre != nil {
		times.accepted, c.accepted = c.accepted, time.Time{}
	}
	if len(batch) >= 16 && cap(spare) <= 128 {
		// A busy connection: it keeps a queue to append to, instead of
		// growing a new one each round (a small one: it keeps it while
		// idle too).
		c.queue = spare
	}
	if c.waiting {
		c.space.Broadcast()
	}
	return batch, pre, pong, ping, times
}

// writeTimes are what a write observes once it is made: the ts of the
// oldest stored event pushed in it, and when the connection was
// accepted, for the write that carries the handshake's answer.
//
// Metrics.Delivery (the edge's natter_edge_delivery_seconds) is observed
// once per write, not per event: the edge's dispatcher pushes an event to
// every member of a room, and a clock read there would be one per
// recipient. Instead each connection keeps the oldest ts queued (a
// compare and a store under the lock Push takes anyway), and the write
// that takes the queue observes once, only when it carries a stored
// event, at the time of the flusher's clock (read once per clockEvery
// flushes). The oldest is the one that waited longest: the histogram
// shows how late the latest of a write's messages arrived, and its count
// is the writes that carried messages. On a 2-core VM a write's
// observation took about 40 ns (BenchmarkObserveWrite: the Observe, and
// a clock read shared by 16 writes; 95 ns with a clock read of its own),
// a write of one event about 4 µs (BenchmarkFlush), and keeping the
// oldest ts 1 to 2 ns per recipient.
type writeTimes struct {
	oldest   int64     // Unix ms; 0: none
	accepted time.Time // zero: no handshake answer, or not timed
}

// any reports whether there is something to observe.
func (t writeTimes) any() bool { return t.oldest != 0 || !t.accepted.IsZero() }

// wrote observes the times of a write made in full, at now.
func (c *Conn) wrote(t writeTimes, now time.Time) {
	if t.oldest != 0 {
		// ts is in milliseconds, by the clock of whoever stored it: one
		// ahead of this one would make the time negative, counted as 0.
		c.s.m.Delivery.Observe(max(float64(now.UnixNano()-t.oldest*int64(time.Millisecond)), 0) / 1e9)
	}
	if !t.accepted.IsZero() {
		c.s.m.Handshake.Observe(now.Sub(t.accepted).Seconds())
	}
}

// giveBack returns a written batch, emptied, as the spare for the next
// take: only one big enough to be worth keeping.
func (c *Conn) giveBack(batch [][]byte) [][]byte {
	clear(batch)
	if cap(batch) < 16 || cap(batch) > maxScratch/8 {
		return nil
	}
	return batch[:0]
}

// encode appends to out a pong frame, the frames of the events
// (coalesced into frames of at most proto.MaxFrameBytes, built in buf)
// and a ping.
func (c *Conn) encode(out, buf []byte, batch [][]byte, pong []byte, ping bool) ([]byte, []byte, error) {
	out = append(out, pong...)
	buf, err := proto.Frames(batch, proto.MaxFrameBytes, buf, func(frame []byte) error {
		c.s.m.FramesOut.Inc()
		out = AppendFrame(out, OpText, frame)
		return nil
	})
	if ping {
		out = AppendFrame(out, OpPing, nil)
	}
	return out, buf, err
}

// writeNow writes b without waiting: it returns how much the socket took.
func (c *Conn) writeNow(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if c.watch == nil {
		return 0, errors.New("connection not watched")
	}
	return c.watch.Write(b)
}

// slowWriter owns the socket of a connection that fell behind: it writes
// rest (the end of what the flusher could not write), then whatever is
// queued, waiting for the socket each time, until the queue is empty;
// then the connection goes back to its flusher. Each write of at most
// 64 KiB must finish within WriteTimeout, or the client is dropped; a
// write blocked on a full socket wakes only once about a third of the
// socket's send buffer is free (on loopback the buffer grows to 4 MiB),
// so the client must read that much, not 64 KiB, in the time. times are
// those of the write rest is the end of.
func (c *Conn) slowWriter(rest []byte, times writeTimes) {
	timeout := c.s.cfg.WriteTimeout
	var batch [][]byte
	var buf, out []byte
	// WriteTimeout bounds each 64 KiB: a client that reads slowly but
	// steadily catches up, one that stops is dropped.
	write := func(b []byte) error {
		for len(b) > 0 {
			n := min(len(b), 64<<10)
			_ = c.nc.SetWriteDeadline(time.Now().Add(timeout))
			if _, err := c.nc.Write(b[:n]); err != nil {
				return err
			}
			b = b[n:]
		}
		return nil
	}
	err := write(rest)
	if err == nil && times.any() {
		c.wrote(times, time.Now())
	}
	for err == nil {
		c.mu.Lock()
		if c.closing {
			c.finishing = true
			c.mu.Unlock()
			c.finish()
			return
		}
		if len(c.queue) == 0 && c.preamble == nil && c.pong == nil && !c.pingDue {
			// Caught up: the flusher's writes never wait, and need no
			// deadline.
			_ = c.nc.SetWriteDeadline(time.Time{})
			c.slow = false
			c.mu.Unlock()
			return
		}
		var pre, pong []byte
		var ping bool
		batch, pre, pong, ping, times = c.takeLocked(batch)
		c.mu.Unlock()
		out, buf, err = c.encode(append(out[:0], pre...), buf, batch, pong, ping)
		batch = c.giveBack(batch)
		if err == nil {
			err = write(out)
		}
		if err == nil && times.any() {
			c.wrote(times, time.Now())
		}
	}
	// The stream may end inside a frame: no close frame may follow it,
	// whatever closing had asked for (a cut-off's 1008, a stop's 1001).
	c.mu.Lock()
	c.closeLocked(-1, "")
	c.closeCode, c.closeText = -1, "write failed or timed out"
	c.finishing = true
	c.mu.Unlock()
	c.finish()
}
