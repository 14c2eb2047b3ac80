package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/servicetest"
)

// The latency histograms of the single binary's /metrics count the
// traffic each one measures, once per event it names, and their sums
// grow with it: handshakes on both of the edge's paths, a post from its
// frame to its ack, the broadcaster's store, a live message once per
// write to each member (its sender too) and not when a join replays it,
// and the replay's read.
func TestMetricsLatencyHistograms(t *testing.T) {
	t.Parallel()
	m, _ := startMain(t, t.TempDir())
	base := "http://" + m.Addr()
	want := map[string]uint64{
		// alice, bob and carol through the edge's handshake, dora's
		// through net/http's; not erin's, after another request.
		"natter_edge_handshake_seconds":    4,
		"natter_edge_post_seconds":         1,
		"natter_broadcaster_store_seconds": 1,
		// The message written to alice (its echo) and to bob; carol's
		// replay of it is not live.
		"natter_edge_delivery_seconds": 2,
		"natter_edge_replay_seconds":   1,
	}
	before := servicetest.Scrape(t, m.Addr())
	for name := range want {
		if _, _, ok := before.Histogram(name); !ok {
			t.Fatalf("/metrics has no histogram %s", name)
		}
	}

	a := dial(t, base, "alice")
	b := dial(t, base, "bob")
	a.join("lobby")
	b.join("lobby")
	seq := a.post("lobby", "timed", "1")
	if ev := b.expect("message"); ev.seq() != seq {
		t.Fatalf("bob got %s, want seq %d", ev.raw, seq)
	}

	// A request the edge does not read as plain (it has a body length)
	// is upgraded by net/http's path.
	conn, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(conn, upgradeRequest(m.Addr(), "dora", "Content-Length: 0\r\n")); err != nil {
		t.Fatal(err)
	}
	expectWelcome(t, bufio.NewReader(conn), "dora")

	// erin's upgrade comes on a kept-alive connection after a request for
	// the page: it is not timed (the time since the accept would be the
	// connection's age, not the handshake's).
	kept, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kept.Close() })
	_ = kept.SetDeadline(time.Now().Add(wait))
	if _, err := io.WriteString(kept, "GET / HTTP/1.1\r\nHost: "+m.Addr()+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	kr := bufio.NewReader(kept)
	page, err := http.ReadResponse(kr, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, page.Body)
	page.Body.Close()
	if page.StatusCode != http.StatusOK || page.Close {
		t.Fatalf("the page: %s, close %v", page.Status, page.Close)
	}
	if _, err := io.WriteString(kept, upgradeRequest(m.Addr(), "erin", "")); err != nil {
		t.Fatal(err)
	}
	expectWelcome(t, kr, "erin")

	c := dial(t, base, "carol")
	if replayed, _ := c.joinSince("lobby", 0); len(replayed) != 1 || replayed[0].seq() != seq {
		t.Fatalf("carol's replay %v, want seq %d", seqsOf(replayed), seq)
	}

	// A delivery or handshake is observed right after its write, which
	// the client may read first: the counts are read until they got
	// there, or for up to wait (then the checks below say which did not).
	count := func(ms servicetest.Metrics, name string) uint64 { n, _, _ := ms.Histogram(name); return n }
	reached := func(after servicetest.Metrics) bool {
		for name, n := range want {
			if count(after, name)-count(before, name) < n {
				return false
			}
		}
		return true
	}
	var after servicetest.Metrics
	servicetest.Poll(wait, func() bool { after = servicetest.Scrape(t, m.Addr()); return reached(after) })
	// Both of the edge's paths were taken, and timed: three requests
	// read by the edge, so the fourth handshake timed is dora's (a
	// scrape's connection counts as read by net/http too, untimed).
	by := func(ms servicetest.Metrics, path string) float64 {
		for _, m := range ms["natter_edge_handshakes_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "by" && l.GetValue() == path {
					return m.GetCounter().GetValue()
				}
			}
		}
		return 0
	}
	if edge, http := by(after, "edge")-by(before, "edge"), by(after, "http")-by(before, "http"); edge != 3 || http < 1 {
		t.Errorf("handshakes read by the edge %g, by net/http %g; want 3 and at least 1", edge, http)
	}
	for name, n := range want {
		n0, s0, _ := before.Histogram(name)
		n1, s1, _ := after.Histogram(name)
		if n1-n0 != n {
			t.Errorf("%s_count went from %d to %d, want %d more", name, n0, n1, n)
		}
		if !(s1 > s0) {
			t.Errorf("%s_sum went from %g to %g, want more", name, s0, s1)
		}
		t.Logf("%s: %d observations, %.6f s", name, n1-n0, s1-s0)
	}
}
