package ws

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run()
	}()
	t.Cleanup(func() {
		p.Close()
		<-done
	})
	return p
}

// A watched socket's reader runs each time it has data, one turn at a
// time, and reads it all, in order, across turns.
func TestPollerReads(t *testing.T) {
	p := newPoller(t)
	server, client := pair(t)
	got := make(chan string, 16)
	var running atomic.Int32
	_, err := p.Watch(server.(syscall.Conn), func(w *Watch) {
		if running.Add(1) != 1 {
			t.Error("two turns at once")
		}
		buf := make([]byte, 64)
		n, err := w.Read(buf)
		running.Add(-1)
		switch {
		case errors.Is(err, unix.EAGAIN):
		case err != nil || n == 0:
			got <- "end"
			w.End()
			return
		default:
			got <- string(buf[:n])
		}
		w.Resume()
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"one", "two", "three"} {
		if _, err := client.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != s {
			t.Fatalf("read %q, want %q", g, s)
		}
	}
	client.Close()
	if g := <-got; g != "end" {
		t.Fatalf("read %q after the peer closed, want the end", g)
	}
}

// Stop ends a watch that waits at once; one whose reader runs ends with
// that reader's Resume, and exactly one of the two reports the end.
func TestPollerStop(t *testing.T) {
	p := newPoller(t)

	server, _ := pair(t)
	w, err := p.Watch(server.(syscall.Conn), func(*Watch) { t.Error("no data was sent") })
	if err != nil {
		t.Fatal(err)
	}
	if !w.Stop() {
		t.Fatal("Stop of a waiting watch must end it")
	}
	if w.Stop() {
		t.Fatal("a second Stop must not end it again")
	}

	server2, client2 := pair(t)
	inTurn, release := make(chan struct{}), make(chan struct{})
	resumed := make(chan bool, 1)
	w2, err := p.Watch(server2.(syscall.Conn), func(w *Watch) {
		close(inTurn)
		<-release
		resumed <- w.Resume()
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	<-inTurn
	if w2.Stop() {
		t.Fatal("Stop during a turn must leave the end to the reader")
	}
	close(release)
	if <-resumed {
		t.Fatal("Resume after Stop must report the end")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.watches); n != 0 {
		t.Fatalf("%d watches kept after both ended", n)
	}
}

// A socket closed by its owner while its watch waits is let go of by
// Stop; a reader that finds it closed ends it with Resume. Neither leaves
// the watch behind.
func TestPollerClosedSocket(t *testing.T) {
	p := newPoller(t)
	watches := func() int {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.watches)
	}

	// Either Stop ends it, or (where the poller lets a reader find the
	// socket closed) a turn does: exactly one of them.
	waiting, _ := pair(t)
	ended := make(chan struct{}, 1)
	w, err := p.Watch(waiting.(syscall.Conn), func(w *Watch) {
		if n, err := w.Read(make([]byte, 8)); err == nil && n > 0 {
			t.Error("no data was sent")
		}
		w.End()
		ended <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	waiting.Close()
	if !w.Stop() {
		<-ended
	}
	if n := watches(); n != 0 {
		t.Fatalf("%d watches kept after the end", n)
	}

	server, client := pair(t)
	resumed := make(chan bool, 1)
	_, err = p.Watch(server.(syscall.Conn), func(w *Watch) {
		server.Close()
		resumed <- w.Resume()
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if <-resumed {
		t.Fatal("Resume on a closed socket must report the end")
	}
	if n := watches(); n != 0 {
		t.Fatalf("%d watches kept after their end", n)
	}
}

// Readers that block do not hold up the others: the pool grows, and
// shrinks back once they are done (goleak checks that Close ends them).
func TestPollerPoolGrows(t *testing.T) {
	p := newPoller(t)
	const n = 50
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(n)
	for range n {
		server, client := pair(t)
		_, err := p.Watch(server.(syscall.Conn), func(w *Watch) {
			wg.Done()
			<-release // every reader waits for all the others
			buf := make([]byte, 8)
			_, _ = w.Read(buf)
			w.End()
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	// Every reader runs at once, or this waits for ever: the pool grew.
	all := make(chan struct{})
	go func() {
		wg.Wait()
		close(all)
	}()
	select {
	case <-all:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("not every blocked reader got a goroutine")
	}
	close(release)
}

// Write takes what fits and says EAGAIN when the socket is full, and Read,
// in a turn, says EAGAIN once the socket is empty: neither waits (a
// waiting one fails the test instead of hanging it).
func TestWatchNeverWaits(t *testing.T) {
	p := newPoller(t)
	server, client := pair(t)
	read := make(chan error, 1)
	w, err := p.Watch(server.(syscall.Conn), func(w *Watch) {
		buf := make([]byte, 8)
		if n, err := w.Read(buf); err != nil || n != 1 {
			read <- fmt.Errorf("first Read: %d, %v", n, err)
		} else if _, err := w.Read(buf); !errors.Is(err, unix.EAGAIN) {
			read <- fmt.Errorf("Read of an empty socket: %v, want EAGAIN", err)
		} else {
			read <- nil
		}
		w.Resume()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan error, 1)
	go func() {
		big := make([]byte, 1<<20)
		for range 1024 { // 1 GiB at most; a loopback socket is full long before
			if _, err := w.Write(big); errors.Is(err, unix.EAGAIN) {
				wrote <- nil
				return
			} else if err != nil {
				wrote <- err
				return
			}
		}
		wrote <- errors.New("1 GiB of writes to a peer that reads nothing never met a full socket")
	}()
	for _, c := range []chan error{read, wrote} {
		select {
		case err := <-c:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Read or Write waited") // goleak names the goroutine too
		}
	}
}

// Close waits for the readers that run; a watch stopped after it ends
// at once, touching nothing of the closed poller.
func TestPollerCloseWaitsForReaders(t *testing.T) {
	p, err := NewPoller()
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		p.Run()
	}()
	server, client := pair(t)
	inTurn, release := make(chan struct{}), make(chan struct{})
	w, err := p.Watch(server.(syscall.Conn), func(w *Watch) {
		close(inTurn)
		<-release
		w.Resume()
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	<-inTurn
	closed := make(chan struct{})
	go func() {
		p.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a reader ran")
	case <-time.After(100 * time.Millisecond): // what a Close that does not wait would take, many times over
	}
	close(release)
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return once the reader had")
	}
	<-runDone
	w.Stop()
	if w.state.Load() != stopped {
		t.Fatalf("a watch stopped after Close is in state %d", w.state.Load())
	}
}
