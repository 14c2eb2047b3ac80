//go:build linux && !natter_portable

package ws

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller watches many sockets for something to read with one goroutine
// (epoll) and runs each socket's reader, when there is, on a pool of
// goroutines that grows with the work and shrinks when it is idle. So a
// connection that is waiting costs no goroutine, and no stack.
//
// Each socket is armed once (EPOLLONESHOT): its reader runs on one
// goroutine at a time and in order, and asks for the next turn with
// Watch.Resume when it is done.
//
// The epoll instance is itself waited on by Go's own poller (an epoll fd
// is readable when it has events), so Run never blocks a thread in
// epoll_wait: with GOMAXPROCS=1 a blocked thread would keep the one P
// until sysmon took it back, up to 10 ms later.
type Poller struct {
	file *os.File        // the epoll instance, for Go's poller
	ep   syscall.RawConn // file's: its Control keeps the fd from closing

	mu      sync.Mutex
	watches map[int32]*Watch // by fd; guarded by mu
	gen     uint32           // guarded by mu: tells a reused fd's watches apart

	pool    pool
	closed  atomic.Bool
	runDone chan struct{}
}

// workerIdle is how long a pool goroutine waits for another reader before
// it ends. While the work goes on its stack, grown by the handlers, is
// reused instead of grown anew for each turn.
const workerIdle = 5 * time.Second

// NewPoller returns a poller; Run must be called for it to work, and
// Close to end it.
func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &Poller{
		file:    os.NewFile(uintptr(epfd), "epoll"),
		watches: make(map[int32]*Watch),
		runDone: make(chan struct{}),
	}
	if p.ep, err = p.file.SyscallConn(); err != nil {
		p.file.Close()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p.pool.init()
	return p, nil
}

// Run hands each socket with something to read to a pool goroutine,
// until Close.
func (p *Poller) Run() {
	defer close(p.runDone)
	rc := p.ep
	events := make([]unix.EpollEvent, 256)
	for {
		var n int
		err := rc.Read(func(fd uintptr) bool {
			var werr error
			for {
				n, werr = unix.EpollWait(int(fd), events, 0)
				if werr != unix.EINTR {
					break
				}
			}
			// Nothing ready: wait for Go's poller, which wakes Run when
			// an event is added.
			return werr == nil && n > 0
		})
		if err != nil {
			return // Close
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			w := p.watches[ev.Fd]
			p.mu.Unlock()
			if w == nil || w.gen != uint32(ev.Pad) || !w.state.CompareAndSwap(armed, running) {
				continue // an event of a socket no longer watched
			}
			p.pool.run(w)
		}
	}
}

// Close ends Run and the pool's goroutines, once the readers running
// have returned. Sockets still watched are let go of, not closed.
func (p *Poller) Close() {
	if p.closed.Swap(true) {
		return
	}
	_ = p.file.SetReadDeadline(time.Unix(1, 0)) // wakes Run
	<-p.runDone
	p.pool.stop()
	_ = p.file.Close()
}

// Watch is one socket watched by a Poller.
type Watch struct {
	p     *Poller
	rc    syscall.RawConn
	fd    int32
	gen   uint32
	fn    func(*Watch)
	state atomic.Int32
}

// Watch starts watching conn: fn runs on a pool goroutine when conn has
// something to read (or was closed by its peer), never twice at once;
// after each turn fn calls Resume for the next one, or ends.
func (p *Poller) Watch(conn syscall.Conn, fn func(*Watch)) (*Watch, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &Watch{p: p, rc: rc, fn: fn}
	// The entry is made while Control keeps the fd from being closed and
	// reused by another socket.
	if err := rc.Control(func(f uintptr) {
		p.mu.Lock()
		p.gen++
		w.fd, w.gen = int32(f), p.gen
		p.watches[w.fd] = w
		p.mu.Unlock()
	}); err != nil {
		return nil, err
	}
	if err := w.ctl(unix.EPOLL_CTL_ADD); err != nil {
		w.forget()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	return w, nil
}

// Resume asks for the next turn, from the reader at the end of one. It
// reports false when the reader is over: the watch was stopped
// meanwhile, or the socket is closed. When it reports true, the reader
// returns and the next turn (if any) is somebody else's business.
func (w *Watch) Resume() bool {
	if !w.state.CompareAndSwap(running, armed) {
		w.End() // Stop came meanwhile, and left the end to the reader
		return false
	}
	if err := w.ctl(unix.EPOLL_CTL_MOD); err != nil {
		// Closed: over, unless a Stop took it (and the end) meanwhile.
		if w.state.CompareAndSwap(armed, stopped) {
			w.forget()
			return false
		}
	}
	return true
}

// End lets go of the socket, from its reader, which is over.
func (w *Watch) End() {
	w.state.Store(stopped)
	_ = w.ctl(unix.EPOLL_CTL_DEL)
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
				_ = w.ctl(unix.EPOLL_CTL_DEL)
				w.forget()
				return true
			}
		case running:
			if w.state.CompareAndSwap(running, stopping) {
				return false
			}
		default: // stopping or stopped: the reader ends it, or did
			return false
		}
	}
}

// ctl changes the socket's registration, unless the socket or the poller
// is closed: each Control keeps its fd from being closed (and its number
// reused by another file) meanwhile.
func (w *Watch) ctl(op int) error {
	var err error
	cerr := w.rc.Control(func(fd uintptr) {
		eerr := w.p.ep.Control(func(epfd uintptr) {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: w.fd, Pad: int32(w.gen)}
			err = unix.EpollCtl(int(epfd), op, int(fd), &ev)
		})
		if eerr != nil {
			err = eerr
		}
	})
	if cerr != nil {
		return cerr
	}
	return err
}

func (w *Watch) forget() {
	w.p.mu.Lock()
	if w.p.watches[w.fd] == w {
		delete(w.p.watches, w.fd)
	}
	w.p.mu.Unlock()
}

// pool runs readers on goroutines that linger a while for the next one.
// It starts a goroutine only when none is idle: idle counts the workers
// waiting for a reader that no run has claimed yet. (A worker counts as
// idle as soon as its reader returns, before it is back at the channel:
// with GOMAXPROCS=1 it may not run again for a while, and starting
// another goroutine each time would grow the pool to thousands.)
type pool struct {
	tasks chan *Watch // holds at most one reader per claimed idle worker
	idle  atomic.Int64
	quit  chan struct{}
	wg    sync.WaitGroup
}

// poolBacklog bounds the readers handed to idle workers and not yet
// taken; past it a goroutine is started instead.
const poolBacklog = 1024

func (p *pool) init() {
	p.tasks = make(chan *Watch, poolBacklog)
	p.quit = make(chan struct{})
}

func (p *pool) run(w *Watch) {
	if p.idle.Add(-1) >= 0 {
		select {
		case p.tasks <- w: // an idle worker takes it
			return
		default:
		}
	}
	p.idle.Add(1)
	p.wg.Go(func() { p.work(w) })
}

func (p *pool) work(w *Watch) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for ok := true; ok; w, ok = p.next(idle) {
		w.fn(w)
		p.idle.Add(1)
		idle.Reset(workerIdle)
	}
}

// next waits for the next reader, or for the end: the pool stops, or
// the worker has been idle for workerIdle without being claimed.
func (p *pool) next(idle *time.Timer) (*Watch, bool) {
	for {
		select {
		case w := <-p.tasks:
			return w, true
		case <-p.quit:
			return nil, false
		case <-idle.C:
			if p.leave() {
				return nil, false
			}
			idle.Reset(workerIdle) // claimed: its reader is on the way
		}
	}
}

// leave takes an idle worker away, if one is unclaimed.
func (p *pool) leave() bool {
	for {
		n := p.idle.Load()
		if n <= 0 {
			return false
		}
		if p.idle.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (p *pool) stop() {
	close(p.quit)
	p.wg.Wait()
}
