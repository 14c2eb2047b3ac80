package ws

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

	"github.com/natter-chat/natter/shared/proto"
)

// observedServer is a server whose delivery and handshake times go to
// histograms, with a send queue of queue.
func observedServer(tb testing.TB, queue int) (s *Server, delivery, handshake prometheus.Histogram) {
	tb.Helper()
	delivery = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "delivery"})
	handshake = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "handshake"})
	cfg := testConfig()
	cfg.SendQueue = queue
	cfg.Admit = func(Request) (Handler, *Refusal) { return nil, nil }
	cfg.Metrics = Metrics{Delivery: delivery, Handshake: handshake}
	s, err := NewServer(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s, delivery, handshake
}

// A write observes the oldest stored event it carries, once, and none
// when it carries only other events; the handshake's time once, with the
// write of the preamble.
func TestWriteObservesOldestOnce(t *testing.T) {
	s, delivery, handshake := observedServer(t, 16)
	c := s.Unserved(nil)
	now := time.Now()
	c.mu.Lock()
	c.preamble, c.accepted = []byte("HTTP/1.1 101\r\n\r\n"), now.Add(-time.Second)
	c.mu.Unlock()
	_ = c.Push([]byte(`{"n":1}`), now.Add(-2*time.Second).UnixMilli())
	_ = c.Push([]byte(`{"n":2}`), now.Add(-3*time.Second).UnixMilli()) // older, from another room
	_ = c.Push([]byte(`{"n":3}`), now.Add(-time.Second).UnixMilli())
	_ = c.Push([]byte(`{"type":"typing"}`), 0)
	c.mu.Lock()
	_, _, _, _, times := c.takeLocked(nil)
	c.mu.Unlock()
	c.wrote(times, time.Now())
	if n, sum := histogram(t, delivery); n != 1 || sum < 3 || sum > 4 {
		t.Fatalf("delivery: %d observations, sum %g; want one of about 3 s (the oldest)", n, sum)
	}
	if n, sum := histogram(t, handshake); n != 1 || sum < 1 || sum > 2 {
		t.Fatalf("handshake: %d observations, sum %g; want one of about 1 s", n, sum)
	}

	_ = c.Push([]byte(`{"type":"presence"}`), 0)
	c.mu.Lock()
	_, _, _, _, times = c.takeLocked(nil)
	c.mu.Unlock()
	if times.any() {
		t.Fatalf("a write of presence only has times to observe: %+v", times)
	}
	if n, _ := histogram(t, delivery); n != 1 {
		t.Fatalf("delivery: %d observations after a write of presence only, want still 1", n)
	}
	if n, _ := histogram(t, handshake); n != 1 {
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

// BenchmarkFlush measures one write of the flusher to a connection over a
// loopback socket, carrying stored events (whose write observes the
// delivery time once) or other events (no observation): the difference
// is what the observation costs per write, though on a shared machine it
// is within the noise of the write itself.
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
				s, _, _ := observedServer(b, 1<<20)
				c, stop := loopbackConn(b, s)
				defer stop()
				f := s.flushers[0]
				var ts int64
				if stored {
					ts = time.Now().UnixMilli()
				}
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					for range events {
						_ = c.Push(line, ts)
					}
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
	s, _, _ := observedServer(b, 1)
	c := s.Unserved(nil)
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

// loopbackConn is a connection of s on a loopback TCP connection whose
// far end is read and discarded, watched by a poller but not served: only
// the benchmark flushes it.
func loopbackConn(b *testing.B, s *Server) (*Conn, func()) {
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
	p, err := NewPoller()
	if err != nil {
		b.Fatal(err)
	}
	go p.Run()
	c := s.newConn(near)
	w, err := p.Watch(near.(syscall.Conn), func(*Watch) {})
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

// A round waits the write delay, or as long as the last round took when
// that was longer, up to maxPause; with no delay it writes at once
// whatever the last round took.
func TestPause(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		delay, round, want time.Duration
	}{
		{2 * ms, 0, 2 * ms},
		{2 * ms, ms, 2 * ms},
		{2 * ms, 20 * ms, 20 * ms},
		{2 * ms, time.Second, maxPause},
		{100 * ms, 20 * ms, 100 * ms},
		{0, 20 * ms, 0},
	} {
		if got := pause(tc.delay, tc.round); got != tc.want {
			t.Errorf("pause(%v, %v) = %v, want %v", tc.delay, tc.round, got, tc.want)
		}
	}
}
