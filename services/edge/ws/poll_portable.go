//go:build !linux || natter_portable

package ws

import (
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller, where there is no epoll (macOS and the BSDs, so that
// `go run ./services/chat` works on a laptop): each watched socket has a
// goroutine that waits, through Go's own poller, until the socket has
// something to read, and runs the turns itself. It keeps the API and the
// turn-at-a-time contract of the Linux poller, not its memory: a waiting
// connection holds a goroutine again. Built on Linux too with the
// natter_portable tag, which is how its tests run here.
type Poller struct {
	mu      sync.Mutex
	watches map[*Watch]struct{} // guarded by mu
	closed  bool                // guarded by mu
	wg      sync.WaitGroup      // the watches' goroutines
	done    chan struct{}
}

// NewPoller returns a poller; Run must be called for it to work, and
// Close to end it.
func NewPoller() (*Poller, error) {
	return &Poller{watches: make(map[*Watch]struct{}), done: make(chan struct{})}, nil
}

// Run waits for Close: the watches' goroutines do the work.
func (p *Poller) Run() { <-p.done }

// Close ends Run and the watches' goroutines, once the readers running
// have returned. Sockets still watched are let go of, not closed.
func (p *Poller) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	ws := make([]*Watch, 0, len(p.watches))
	for w := range p.watches {
		ws = append(ws, w)
	}
	p.mu.Unlock()
	for _, w := range ws {
		w.Stop()
	}
	p.wg.Wait()
	close(p.done)
}

// Watch is one socket watched by a Poller.
type Watch struct {
	p     *Poller
	rc    syscall.RawConn
	wake  interface{ SetReadDeadline(time.Time) error } // nil if the socket has none
	fn    func(*Watch)
	state atomic.Int32
}

// Watch starts watching conn: fn runs when conn has something to read (or
// was closed by its peer), never twice at once; after each turn fn calls
// Resume for the next one, or ends.
func (p *Poller) Watch(conn syscall.Conn, fn func(*Watch)) (*Watch, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &Watch{p: p, rc: rc, fn: fn}
	w.wake, _ = conn.(interface{ SetReadDeadline(time.Time) error })
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errors.New("ws: poller closed")
	}
	p.watches[w] = struct{}{}
	p.wg.Go(w.run)
	return w, nil
}

// run waits for the socket and runs the turns, until the watch ends.
func (w *Watch) run() {
	for {
		w.waitReadable()
		if !w.state.CompareAndSwap(armed, running) {
			return // stopped
		}
		w.fn(w)
		if w.state.Load() != armed {
			return // the reader ended
		}
	}
}

// waitReadable returns once the socket holds data or its end, is closed,
// or its read deadline (Stop) has passed. Data left from a turn counts:
// the wait peeks, so it is level-triggered like epoll.
func (w *Watch) waitReadable() {
	var one [1]byte
	_ = w.rc.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return !errors.Is(err, unix.EAGAIN)
	})
}

// Resume asks for the next turn, from the reader at the end of one. It
// reports false when the reader is over: the watch was stopped
// meanwhile, or the socket is closed.
func (w *Watch) Resume() bool {
	if !w.state.CompareAndSwap(running, armed) {
		w.End()
		return false
	}
	if w.rc.Control(func(uintptr) {}) != nil && w.state.CompareAndSwap(armed, stopped) {
		w.forget()
		return false // closed
	}
	return true
}

// End lets go of the socket, from its reader, which is over.
func (w *Watch) End() {
	w.state.Store(stopped)
	w.forget()
}

// Stop lets go of the socket from outside its reader. It reports true
// when it ended the reading (no reader runs, and none will). Otherwise
// the reader ends it: one that runs finds its Resume false.
func (w *Watch) Stop() bool {
	for {
		switch w.state.Load() {
		case armed:
			if w.state.CompareAndSwap(armed, stopped) {
				w.forget()
				if w.wake != nil {
					// Wake the goroutine that waits; the owner closes the
					// socket or stops reading it.
					_ = w.wake.SetReadDeadline(time.Unix(1, 0))
				}
				return true
			}
		case running:
			if w.state.CompareAndSwap(running, stopping) {
				return false
			}
		default:
			return false
		}
	}
}

func (w *Watch) forget() {
	w.p.mu.Lock()
	delete(w.p.watches, w)
	w.p.mu.Unlock()
}
