package ws

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/shared/servicetest"
)

// A connection whose queue overflows while its socket still takes data
// gets close 1008, and what was queued is not written after it.
func TestQueueOverflowClosesWith1008(t *testing.T) {
	var errs [5]error
	h := start(t, func(c *Config) { c.SendQueue = 4 }, func(c *Conn) {
		for i := range errs { // one more live event than the queue holds
			errs[i] = c.Push([]byte(`{"type":"test","n":`+strconv.Itoa(i)+`}`), 0)
		}
	})
	conn, s := h.dial(t)
	_, data, err := conn.ReadMessage()
	ce, ok := err.(*websocket.CloseError)
	if !ok || ce.Code != websocket.ClosePolicyViolation || ce.Text != "slow client: send queue full" {
		t.Fatalf("read %q, %v; want close 1008", data, err)
	}
	conn.Close()
	if e := s.ended(t); e.code != ClosePolicyViolation || e.reason != "slow client: send queue full" {
		t.Fatalf("ended %+v", e)
	}
	if errs[3] != nil || errs[4] != ErrSlow {
		t.Fatalf("Push returned %v; want nil four times, then ErrSlow", errs)
	}
	if err := s.conn.Push([]byte(`{}`), 0); err != ErrClosing {
		t.Fatalf("Push on a closed connection: %v, want ErrClosing", err)
	}
}

// A queue of SendQueue live events is full, not over: a connection
// holding exactly that many gets them all and stays.
func TestQueueHoldsSendQueueEvents(t *testing.T) {
	var closing atomic.Bool
	h := start(t, func(c *Config) { c.SendQueue = 4 }, func(c *Conn) {
		for i := range 4 {
			_ = c.Push([]byte(`{"n":`+strconv.Itoa(i)+`}`), 0)
		}
		closing.Store(c.Closing())
	})
	conn, s := h.dial(t)
	_, data, err := conn.ReadMessage() // after Open: the events come after it
	if err != nil || string(data) != "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n{\"n\":3}" {
		t.Fatalf("read %q, %v; want the four events", data, err)
	}
	if closing.Load() {
		t.Fatal("a connection with a full queue, not an overflowing one, was cut off")
	}
	conn.Close()
	s.ended(t)
}

// WriteDelay holds a connection's first queued event for those that
// follow: an event queued 20 ms after another, within a delay of 300 ms,
// leaves in the same frame.
func TestWriteDelayCoalesces(t *testing.T) {
	h := start(t, func(c *Config) { c.WriteDelay = 300 * time.Millisecond }, nil)
	conn, s := h.dial(t)
	c := <-s.opened
	c.Reply([]byte(`{"n":0}`))
	time.Sleep(20 * time.Millisecond) // the spacing under test, not a wait for something
	c.Reply([]byte(`{"n":1}`))
	_, data, err := conn.ReadMessage()
	if err != nil || string(data) != "{\"n\":0}\n{\"n\":1}" {
		t.Fatalf("first frame %q, %v; want both events in it", data, err)
	}
	conn.Close()
	s.ended(t)
}

// Events queued together leave in one frame.
func TestWriterCoalesces(t *testing.T) {
	h := start(t, nil, func(c *Conn) {
		for i := range 3 {
			c.Reply([]byte(`{"n":` + strconv.Itoa(i) + `}`))
		}
	})
	conn, s := h.dial(t)
	_, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != "{\"n\":0}\n{\"n\":1}\n{\"n\":2}" {
		t.Fatalf("frame %q, want the three events in one frame", data)
	}
	// The client's close code comes back (RFC 6455 5.5.1).
	_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"))
	_, _, err = conn.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4000 {
		t.Fatalf("after closing with 4000: %v", err)
	}
	conn.Close()
	s.ended(t)
}

// A client that stops reading fills its socket: a slow writer takes it
// over, waits for it, and hands it back to the flusher once it has caught
// up; nothing is lost or reordered on the way, and the slow writer leaves
// no write deadline set, which would fail the flusher's writes once past.
//
// The client reads as fast as it can once the slow writer has taken over,
// and WriteTimeout is a minute: a bound only a client that stopped would
// reach. A write waits for much more than 64 KiB of reading: the kernel
// wakes a writer blocked on a full socket once about a third of its send
// buffer is free, and on loopback that buffer grows to 4 MiB, so each
// wait lasts until the client has read about 1.4 MiB. With a WriteTimeout
// of a second, under -race on a loaded 2-core machine, the client (in the
// same process) often took longer than that, once 2.2 s for one message,
// and the connection was dropped without a close frame (1006).
//
// The deadline left set is not waited for (that needs a short
// WriteTimeout, which the catch-up would then have to beat): the server's
// connection records the write deadlines set on it, and the last one
// before the hand-back must be none.
func TestSlowWriterCatchesUp(t *testing.T) {
	const events, size = 8000, 4096 // 32 MiB: more than the socket buffers hold
	pad := strings.Repeat("x", size)
	h := startOn(t, func(ln net.Listener) net.Listener { return deadlineListener{ln} }, func(c *Config) {
		c.SendQueue = events + 1
		c.WriteTimeout = time.Minute
	}, func(c *Conn) {
		for i := range events {
			_ = c.Push([]byte(`{"n":`+strconv.Itoa(i)+`,"pad":"`+pad+`"}`), 0)
		}
	})
	conn, s := h.dial(t)
	c := <-s.opened
	dc, ok := c.nc.(*deadlineConn)
	if !ok {
		t.Fatalf("the server's connection is a %T, not the recording one", c.nc)
	}
	servicetest.WaitFor(t, 10*time.Second, "a slow writer taking the connection", c.slowNow)
	next := 0
	read := func(n int) {
		t.Helper()
		for next < n {
			_, data, err := conn.ReadMessage()
			if err != nil {
				t.Fatalf("after %d events: %v", next, err)
			}
			for line := range strings.SplitSeq(string(data), "\n") {
				var ev struct{ N int }
				if err := json.Unmarshal([]byte(line), &ev); err != nil || ev.N != next {
					t.Fatalf("event %q, want n=%d", line[:min(len(line), 40)], next)
				}
				next++
			}
		}
	}
	read(events)
	servicetest.WaitFor(t, 10*time.Second, "the connection handed back to the flusher", func() bool { return !c.slowNow() })
	if set, last := dc.writeDeadlines(); set < 2 || !last.IsZero() {
		t.Fatalf("write deadlines set: %d, the last %v; want the slow writer's, then none", set, last)
	}
	_ = c.Push([]byte(`{"n":`+strconv.Itoa(events)+`}`), 0)
	read(events + 1)
	c.Close(CloseNormal, "")
	s.ended(t)
}

// deadlineListener accepts connections that record their write
// deadlines.
type deadlineListener struct{ net.Listener }

func (l deadlineListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &deadlineConn{TCPConn: nc.(*net.TCPConn)}, nil
}

// deadlineConn is a TCP connection that records the write deadlines set
// on it: how many, and the last.
type deadlineConn struct {
	*net.TCPConn
	mu   sync.Mutex
	set  int       // guarded by mu
	last time.Time // guarded by mu
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.set, c.last = c.set+1, t
	c.mu.Unlock()
	return c.TCPConn.SetWriteDeadline(t)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	if err := c.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.TCPConn.SetReadDeadline(t)
}

func (c *deadlineConn) writeDeadlines() (set int, last time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.set, c.last
}

func (c *Conn) slowNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slow
}

// Every ping gets a pong with its payload, an empty one too.
func TestPingGetsPong(t *testing.T) {
	h := start(t, nil, nil)
	conn, s := h.dial(t)
	pongs := make(chan string, 2)
	conn.SetPongHandler(func(p string) error {
		pongs <- p
		return nil
	})
	go func() {
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				conn.Close() // closed: the server need not linger
				return
			}
		}
	}()
	for _, payload := range []string{"", "x"} {
		if err := conn.WriteControl(websocket.PingMessage, []byte(payload), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-pongs:
			if p != payload {
				t.Fatalf("pong %q, want %q", p, payload)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no pong for the ping %q", payload)
		}
	}
	_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	s.ended(t)
}

// A reply waits while the queue is full, and goes on once the writer has
// taken it; a push does not wait, and a live event beyond SendQueue cuts
// the connection off even when replies fill the queue.
func TestReplyWaitsPushDoesNot(t *testing.T) {
	s, err := NewServer(func() Config {
		cfg := testConfig()
		cfg.SendQueue = 2
		cfg.Admit = func(Request) (Handler, *Refusal) { return nil, nil }
		return cfg
	}())
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{}, 1)
	c := s.Unserved(func() { waited <- struct{}{} })
	c.Reply([]byte("a"))
	c.Reply([]byte("b"))
	if !c.Full() {
		t.Fatal("two replies in a queue of two: not full")
	}
	if err := c.Push([]byte("live"), 0); err != nil {
		t.Fatalf("a live event into a queue full of replies: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Reply([]byte("c"))
	}()
	<-waited
	if got := c.Take(nil); len(got) != 3 {
		t.Fatalf("took %q", got)
	}
	<-done
	if got := c.Take(nil); len(got) != 1 || string(got[0]) != "c" {
		t.Fatalf("took %q after the wait; want c", got)
	}
}
