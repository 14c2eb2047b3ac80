package edge

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/proto"
)

// storedTS reads the ts of what the broadcaster stores, room messages and
// dms alike, and finds none where the last member is not a top-level ts.
func TestStoredTS(t *testing.T) {
	const ts = 1764000000123
	for _, tt := range []struct {
		name string
		data []byte
		want int64
	}{
		{"message", proto.Encode(proto.Message{Type: proto.TypeMessage, Room: "lobby", From: "alice", Text: `say "ts":5}`, ID: "1", TS: ts}), ts},
		{"message without id", proto.Encode(proto.Message{Type: proto.TypeMessage, Room: "lobby", From: "alice", Text: "hi", TS: ts}), ts},
		{"dm", proto.Encode(proto.DM{Type: proto.TypeDM, From: "alice", To: "bob", Text: "hi", ID: "x", TS: ts}), ts},
		{"only ts", []byte(`{"ts":42}`), 42},
		{"ts not last", []byte(`{"ts":42,"text":"hi"}`), 0},
		{"nested ts", []byte(`{"a":{"ts":42}}`), 0},
		{"a key ending in ts", []byte(`{"a\"ts":42}`), 0},
		{"spaced", []byte(`{"a":1, "ts":42}`), 0},
		{"negative", []byte(`{"ts":-42}`), 0},
		{"fraction", []byte(`{"ts":4.2}`), 0},
		{"too long", []byte(`{"ts":1234567890123456789}`), 0},
		{"no digits", []byte(`{"ts":}`), 0},
		{"empty object", []byte(`{}`), 0},
		{"empty", nil, 0},
	} {
		if got := storedTS(tt.data); got != tt.want {
			t.Errorf("%s: storedTS(%s) = %d, want %d", tt.name, tt.data, got, tt.want)
		}
	}
}

// A write observes the oldest stored message it carries, once, and none
// when it carries only other events; the handshake's time once, with the
// write of the preamble.
func TestWriteObservesOldestOnce(t *testing.T) {
	e := newTestEdge(t, 16)
	c := newClient(e, nil, "u", "s")
	now := time.Now()
	c.mu.Lock()
	c.preamble, c.accepted = []byte("HTTP/1.1 101\r\n\r\n"), now.Add(-time.Second)
	c.enqueueStoredLocked([]byte(`{"n":1}`), now.Add(-2*time.Second).UnixMilli())
	c.enqueueStoredLocked([]byte(`{"n":2}`), now.Add(-3*time.Second).UnixMilli()) // older, from another room
	c.enqueueStoredLocked([]byte(`{"n":3}`), now.Add(-time.Second).UnixMilli())
	c.enqueueLiveLocked([]byte(`{"type":"typing"}`))
	_, _, _, _, times := c.takeLocked(nil)
	c.mu.Unlock()
	c.wrote(times, time.Now())
	if n, sum := histogram(t, e.metrics.delivery); n != 1 || sum < 3 || sum > 4 {
		t.Fatalf("delivery: %d observations, sum %g; want one of about 3 s (the oldest)", n, sum)
	}
	if n, sum := histogram(t, e.metrics.handshake); n != 1 || sum < 1 || sum > 2 {
		t.Fatalf("handshake: %d observations, sum %g; want one of about 1 s", n, sum)
	}

	c.mu.Lock()
	c.enqueueLiveLocked([]byte(`{"type":"presence"}`))
	_, _, _, _, times = c.takeLocked(nil)
	c.mu.Unlock()
	if times.any() {
		t.Fatalf("a write of presence only has times to observe: %+v", times)
	}
	if n, _ := histogram(t, e.metrics.delivery); n != 1 {
		t.Fatalf("delivery: %d observations after a write of presence only, want still 1", n)
	}
	if n, _ := histogram(t, e.metrics.handshake); n != 1 {
		t.Fatalf("handshake: %d observations after a second write, want still 1", n)
	}
}

func histogram(t *testing.T, h prometheus.Histogram) (uint64, float64) {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}

// BenchmarkFlush measures one write of the flusher to a client over a
// loopback socket, carrying stored messages (whose write observes
// natter_edge_delivery_seconds once) or other events (no observation):
// the difference is what the observation costs per write, though on a
// shared machine it is within the noise of the write itself.
func BenchmarkFlush(b *testing.B) {
	line := proto.WithSeq(proto.Encode(proto.Message{Type: proto.TypeMessage, Room: "lobby", From: "alice",
		Text: strings.Repeat("hello ", 20), ID: "0123456789", TS: time.Now().UnixMilli()}), 42)
	for _, stored := range []bool{false, true} {
		for _, events := range []int{1, 10} {
			name := "other"
			if stored {
				name = "stored"
			}
			b.Run(fmt.Sprintf("%s/events=%d", name, events), func(b *testing.B) {
				e := newTestEdge(b, 1<<20)
				c, stop := loopbackClient(b, e)
				defer stop()
				f := e.flushers[0]
				ts := time.Now().UnixMilli()
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					c.mu.Lock()
					for range events {
						if stored {
							c.enqueueStoredLocked(line, ts)
						} else {
							c.enqueueLiveLocked(line)
						}
					}
					c.mu.Unlock()
					f.flush(c)
					if c.slowNow() {
						// The reader fell behind and a slow writer took the
						// rest: the benchmark measures the flusher's writes.
						b.StopTimer()
						for c.slowNow() {
							runtime.Gosched()
						}
						b.StartTimer()
					}
				}
			})
		}
	}
}

// BenchmarkObserveWrite is a write's observation alone, from as many
// goroutines as there are flushers (one per P): the histogram's Observe
// with the flusher's clock (clock: read once per clockEvery writes), or
// with a clock read per write (each).
func BenchmarkObserveWrite(b *testing.B) {
	e := newTestEdge(b, 1)
	c := newClient(e, nil, "u", "s")
	t := writeTimes{oldest: time.Now().UnixMilli()}
	b.Run("clock=flusher", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var f flusher
			for pb.Next() {
				f.stale++
				c.wrote(t, f.clock())
			}
		})
	})
	b.Run("clock=each", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.wrote(t, time.Now())
			}
		})
	})
}

// loopbackClient is a client of e on a loopback TCP connection whose far
// end is read and discarded, watched by a poller but not served: only
// the benchmark flushes it.
func loopbackClient(b *testing.B, e *Edge) (*client, func()) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	far, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	near, err := ln.Accept()
	if err != nil {
		b.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		_, _ = io.Copy(io.Discard, far)
	}()
	p, err := ws.NewPoller()
	if err != nil {
		b.Fatal(err)
	}
	go p.Run()
	c := newClient(e, near, "u", "s")
	w, err := p.Watch(near.(syscall.Conn), func(*ws.Watch) {})
	if err != nil {
		b.Fatal(err)
	}
	c.watch = w
	return c, func() {
		w.Stop()
		near.Close()
		<-read
		far.Close()
		p.Close()
	}
}

func (c *client) slowNow() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.slow
}
