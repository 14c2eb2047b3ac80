package ws

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/shared/ops"
)

// Shutdown budget, inside the edge's 10-second promise together with the
// NATS drain (CHAT_NATS_DRAIN_TIMEOUT, 3 s by default): httpShutdownWait
// for plain HTTP requests to finish, closeWait for the connections to be
// let go of after they were told to close. Both take less when Run's
// context was stopped with a deadline that leaves less (ops.Budget): the
// single binary stops its edge first, under one deadline for all.
const (
	httpShutdownWait = 2 * time.Second
	closeWait        = 3 * time.Second
)

// Config is what a Server needs: its limits, what it asks its user, and
// where its figures go.
type Config struct {
	// FrameLimit bounds a frame read from a client, and a message of
	// several frames (CHAT_MAX_FRAME_BYTES): a longer one is closed with
	// 1009.
	FrameLimit int
	// SendQueue bounds a connection's send queue (CHAT_SEND_QUEUE): a
	// connection with SendQueue live events queued is cut off (Push), and
	// a reply waits while the queue holds SendQueue events (Reply).
	SendQueue int
	// WriteTimeout bounds each write of 64 KiB a slow writer makes: a
	// client that does not make room for it in that time is dropped. The
	// room comes in steps the kernel chooses, not 64 KiB: Linux wakes a
	// writer blocked on a full socket once about a third of its send
	// buffer is free, so a client must read that much within WriteTimeout
	// (of a buffer grown to tcp_wmem's default limit of 4 MiB, as on
	// loopback: about 1.4 MiB).
	WriteTimeout time.Duration
	// WriteDelay is how long a connection's first queued event waits for
	// those that follow, so that they share a write (0: write at once);
	// below WriteTimeout.
	WriteDelay time.Duration
	// PingInterval is how often each connection is pinged; PongTimeout,
	// longer, how long one may stay silent before it is dropped.
	PingInterval time.Duration
	PongTimeout  time.Duration
	// HandshakeTimeout bounds the time a connection may take to send its
	// request (0: 10 s).
	HandshakeTimeout time.Duration

	// Admit decides on each WebSocket request, before it is answered:
	// either a refusal, answered in HTTP, or the handler of the
	// connection, which is then upgraded. It runs on the poller's turn
	// (a plain request) or on net/http's goroutine.
	Admit func(Request) (Handler, *Refusal)
	// BeforeClose, when not nil, runs once, when Run has stopped
	// accepting and is about to close every connection with 1001.
	BeforeClose func()

	Metrics Metrics
	Log     *slog.Logger // nil: slog.Default()
}

// Metrics are where a Server's figures go; a nil one is not counted.
type Metrics struct {
	// Answered counts the connections whose plain request the wire
	// answered itself, HandedOn those handed on to net/http.
	Answered Counter
	HandedOn Counter
	// FramesIn counts the text messages read, FramesOut the text frames
	// written (each may carry several events).
	FramesIn  Counter
	FramesOut Counter
	// Handshake observes the seconds from a connection's accept to the
	// write of its 101 answer.
	Handshake Observer
	// Delivery observes, once per write that carries stored events (Push
	// with a ts), the seconds from the oldest one's ts to the write.
	Delivery Observer
}

// Counter counts (prometheus.Counter is one).
type Counter interface{ Inc() }

// Observer observes a value (prometheus.Histogram is one).
type Observer interface{ Observe(float64) }

type uncounted struct{}

func (uncounted) Inc()            {}
func (uncounted) Observe(float64) {}

// Refusal is the HTTP answer to a WebSocket request that is not admitted.
// A 429 gets Retry-After: 10.
type Refusal struct {
	Status int
	Text   string
}

// Server is the wire of many WebSocket connections; see the package
// documentation.
type Server struct {
	cfg      Config
	log      *slog.Logger
	m        Metrics
	upgrader websocket.Upgrader
	// readBuffers hold what one read takes off a socket: a reader
	// borrows one for its turn, so an idle connection holds none.
	readBuffers sync.Pool
	flushers    []*flusher
	flusherNext atomic.Uint32

	// Made by Run: the poller runs the readers, and http is the listener
	// net/http serves (the connections the handshake hands on).
	poller *Poller
	http   *handoff

	mu         sync.Mutex
	conns      map[*Conn]struct{}      // guarded by mu: served, not yet let go of
	handshakes map[*handshake]struct{} // guarded by mu: requests being read
	pingNext   int                     // guarded by mu: the next connection's ping slot
	stopping   bool                    // guarded by mu: no new connections once set
	// served counts the connections not yet let go of (Add under mu,
	// while not stopping); timers the handshakes' timeouts not yet run
	// or stopped; writers the slow writers and finishes.
	served  sync.WaitGroup
	timers  sync.WaitGroup
	writers sync.WaitGroup

	// testHookWatched, when set by a test, runs in handshake right after
	// the connection is watched, to widen the window in which its reader
	// may run first.
	testHookWatched func()
}

// newUpgrader is the Upgrader of the WebSocket requests that net/http
// serves (ServeHTTP).
func newUpgrader() websocket.Upgrader {
	return websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 4096,
		// Buffers are taken for a write and given back after it, so an
		// idle connection holds none.
		WriteBufferPool: &sync.Pool{},
		// The origin is Admit's to check, with its own answer.
		CheckOrigin: func(*http.Request) bool { return true },
	}
}

// NewServer returns a server with cfg; Run serves with it.
func NewServer(cfg Config) (*Server, error) {
	switch {
	case cfg.Admit == nil:
		return nil, errors.New("ws: Admit is needed")
	case cfg.FrameLimit <= 0 || cfg.SendQueue <= 0 || cfg.WriteTimeout <= 0 || cfg.PingInterval <= 0:
		return nil, errors.New("ws: the frame limit, send queue, write timeout and ping interval must be positive")
	case cfg.PongTimeout <= cfg.PingInterval:
		return nil, errors.New("ws: the pong timeout must be longer than the ping interval")
	case cfg.WriteDelay < 0 || cfg.WriteDelay >= cfg.WriteTimeout:
		return nil, errors.New("ws: the write delay must be at least 0 and below the write timeout")
	case cfg.HandshakeTimeout < 0:
		return nil, errors.New("ws: the handshake timeout must not be negative")
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = handshakeTimeout
	}
	s := &Server{
		cfg:        cfg,
		log:        cfg.Log,
		m:          cfg.Metrics,
		conns:      make(map[*Conn]struct{}),
		handshakes: make(map[*handshake]struct{}),
		flushers:   newFlushers(runtime.GOMAXPROCS(0), cfg.WriteDelay),
		upgrader:   newUpgrader(),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	for _, c := range []*Counter{&s.m.Answered, &s.m.HandedOn, &s.m.FramesIn, &s.m.FramesOut} {
		if *c == nil {
			*c = uncounted{}
		}
	}
	for _, o := range []*Observer{&s.m.Handshake, &s.m.Delivery} {
		if *o == nil {
			*o = uncounted{}
		}
	}
	s.readBuffers.New = func() any { b := make([]byte, 16<<10); return &b }
	return s, nil
}

// Run accepts connections on ln and serves them until ctx ends: it answers
// plain WebSocket requests itself and hands everything else to h, served
// by net/http (h routes the WebSocket requests it gets to the Server,
// which is an http.Handler). When ctx ends it stops accepting, shuts HTTP
// down (at most 2 s), aborts the handshakes in progress, runs BeforeClose,
// closes every connection with 1001 and waits for them to be let go of
// (at most 3 s, then it closes their sockets), and stops the flushers,
// the writers, the poller and the pinger. It returns after every
// goroutine it started has ended; it is called once.
func (s *Server) Run(ctx context.Context, ln net.Listener, h http.Handler) error {
	poller, err := NewPoller()
	if err != nil {
		return fmt.Errorf("ws: %w", err)
	}
	s.poller = poller
	pollerDone := make(chan struct{})
	go func() {
		defer close(pollerDone)
		poller.Run()
	}()
	fctx, stopFlushers := context.WithCancel(context.Background())
	flushersDone := s.runFlushers(fctx)
	pctx, stopPinger := context.WithCancel(context.Background())
	pingerDone := make(chan struct{})
	go func() {
		defer close(pingerDone)
		s.pinger(pctx)
	}()
	s.http = newHandoff(ln)
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		s.acceptLoop(ln, s.http)
	}()
	err = ops.Serve(ctx, s.http, h, httpShutdownWait, s.log)
	_ = s.http.Close() // closed already, unless serving failed
	<-acceptDone
	s.closeHandshakes()
	s.timers.Wait() // only the accept loop adds to it
	if s.cfg.BeforeClose != nil {
		s.cfg.BeforeClose()
	}
	s.closeConns(ops.Budget(ctx, closeWait))
	stopFlushers()
	flushersDone()
	s.writers.Wait()
	poller.Close()
	<-pollerDone
	stopPinger()
	<-pingerDone
	return err
}

// closeConns closes every connection with 1001 and waits for them to be
// let go of, at most within; then it closes their sockets, which ends
// their reading and writing at once.
func (s *Server) closeConns(within time.Duration) {
	s.mu.Lock()
	s.stopping = true
	for c := range s.conns {
		c.Close(CloseGoingAway, "server shutting down")
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.served.Wait()
	}()
	select {
	case <-done:
	case <-time.After(within):
		s.mu.Lock()
		for c := range s.conns {
			_ = c.nc.Close()
		}
		s.mu.Unlock()
		<-done
	}
}

// start serves an upgraded connection nc with h; preamble, when not nil,
// is the handshake's answer, still to be written (the write that carries
// it observes the time since accepted, when not zero), and w, when not
// nil, the handshake's watch of nc, in its turn.
func (s *Server) start(nc net.Conn, h Handler, preamble []byte, accepted time.Time, w *Watch) {
	s.mu.Lock()
	if s.stopping {
		s.mu.Unlock()
		if w != nil {
			w.End()
		}
		_ = nc.SetWriteDeadline(time.Now().Add(closeGrace))
		_, _ = nc.Write(AppendClose(preamble, CloseGoingAway, "server shutting down"))
		_ = nc.Close()
		h.Closed(CloseGoingAway, "server shutting down") // not opened
		return
	}
	c := s.newConn(nc)
	c.h = h
	c.preamble = preamble
	if preamble != nil {
		c.accepted = accepted
	}
	c.pingSlot = s.pingNext
	s.pingNext = (s.pingNext + 1) % pingSlots
	s.conns[c] = struct{}{}
	s.served.Add(1)
	s.mu.Unlock()
	// What Open queues goes out first: writing starts with serve.
	h.Open(c)
	c.serve(w)
}

// letGo is the end of a connection, once: its reading has ended and its
// socket is closed.
func (s *Server) letGo(c *Conn) {
	c.h.Closed(c.closedAs())
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.served.Done()
}

// Queued returns how many live events wait to be written, over all
// connections, and the most one connection has waiting. It takes each
// connection's lock in turn: it is for a stats request, not a hot path.
func (s *Server) Queued() (total, most int) {
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.mu.Lock()
		live := c.live
		c.mu.Unlock()
		total += live
		most = max(most, live)
	}
	return total, most
}

// Unserved returns a connection of s that is not served: it has no
// socket, no reader and no writer, and what is queued stays queued until
// Take takes it. waited, when not nil, runs each time a Reply or
// WaitSpace begins to wait for space (with the connection's lock held).
// It is for the tests and benchmarks of what a handler queues.
func (s *Server) Unserved(waited func()) *Conn {
	c := s.newConn(nil)
	c.waited = waited
	return c
}

// Take takes what an unserved connection has queued, as its writer
// would: the queue empties, and a reply that waits for room goes on.
// spare, emptied, is what the queue appends to next (nil: a new one), as
// a flusher gives back a written batch.
func (c *Conn) Take(spare [][]byte) [][]byte {
	if c.nc != nil {
		panic("ws: Take on a served connection")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	batch, _, _, _, _ := c.takeLocked(nil)
	clear(spare)
	c.queue = spare[:0]
	return batch
}
