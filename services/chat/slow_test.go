package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// smallBufferDialer makes a client whose socket buffers fill fast, so a
// client that stops reading backs up into the server's queue quickly.
func smallBufferDialer() *websocket.Dialer {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	return &websocket.Dialer{NetDialContext: d.DialContext, HandshakeTimeout: wait}
}

// A client that stops reading is cut off; the others keep receiving every
// message, in order. Not parallel: its flood of up to 20,000 messages of
// 3.9 KB keeps a core busy, and beside other tests on a loaded machine it
// once sent them all before the slow client was counted as cut off.
func TestSlowClientIsCutOff(t *testing.T) {
	ns, e := setup(t)
	bot := natstest.Connect(t, ns)
	slow := dialWith(t, smallBufferDialer(), e.url, "slow")
	slow.join("flood")
	fast := dial(t, e.url, "fast")
	fast.join("flood")

	// The slow client stops reading its socket.
	slow.pause()

	text := strings.Repeat("x", 3900)
	sent := 0
	cutOff := func() bool { return counter(t, e.reg, "natter_edge_slow_clients_total") >= 1 }
	for sent < 20000 && !cutOff() {
		for range 200 {
			data, _ := json.Marshal(map[string]string{"from": "bot", "text": text, "id": fmt.Sprint(sent)})
			if err := bot.Publish(subject.InRoom("flood"), data); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		if err := bot.Flush(); err != nil {
			t.Fatal(err)
		}
		// Let the fast client keep up, so only the slow one falls behind.
		fast.drainUntil(t, sent-200)
	}
	servicetest.WaitFor(t, wait, "slow client cut off", cutOff)
	servicetest.WaitFor(t, wait, "slow client disconnected", func() bool {
		return counter(t, e.reg, "natter_edge_connections") == 1
	})
	slow.resume()
	if code := slow.closeCode(); code != websocket.ClosePolicyViolation && code != websocket.CloseAbnormalClosure && code != -1 {
		t.Fatalf("slow client closed with %d, want 1008 or a dropped connection", code)
	}
	// Every message, in order (drainUntil checks the ids), to the end.
	fast.drainUntil(t, sent)
}

// pause stops the test reader from reading the socket (after at most one
// more frame), as a stuck client would. resume must follow.
// pause stops c's reader until resume, or until the test ends: a test
// that fails while c is paused must not wait for ever on its reader.
func (c *wsClient) pause() {
	c.gate.Lock()
	c.paused.Store(true)
	c.t.Cleanup(c.resume) // runs before the cleanup that closes c
}

func (c *wsClient) resume() {
	if c.paused.CompareAndSwap(true, false) {
		c.gate.Unlock()
	}
}

// drainUntil reads messages until n have arrived in all, checking that
// their ids count up from 0 (bot posts keep their order).
func (c *wsClient) drainUntil(t *testing.T, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*wait)
	defer cancel()
	for c.received < n {
		select {
		case ev, ok := <-c.events:
			if !ok {
				t.Fatalf("%s: connection ended: %v", c.name, c.err())
			}
			if ev.Type != "message" {
				t.Fatalf("%s: got %s", c.name, ev.raw)
			}
			if ev.id() != fmt.Sprint(c.received) {
				t.Fatalf("%s: message %s arrived when %d was expected", c.name, ev.id(), c.received)
			}
			c.received++
		case <-ctx.Done():
			t.Fatalf("%s: received %d of %d", c.name, c.received, n)
		}
	}
}
