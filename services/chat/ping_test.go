package main

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
)

// The server pings; a client that answers stays, one that does not is
// dropped after the pong timeout. The timeout is a second, not a few
// pings' time: with -race beside every other package on two cores, a
// healthy client's pong was once read more than 300 ms after its ping,
// and the healthy client dropped.
func TestPingsAndSilentClients(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	const interval, timeout = 50 * time.Millisecond, time.Second
	e := startEdge(t, ns, func(c *edge.Config) {
		c.Limits.PingInterval = interval
		c.Limits.PongTimeout = timeout
	})

	// A healthy client: gorilla answers pings while it reads.
	var pings atomic.Int32
	healthy := dialSetup(t, websocket.DefaultDialer, e.url, "alice", func(c *websocket.Conn) {
		c.SetPingHandler(func(data string) error {
			pings.Add(1)
			return c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
	})

	// A silent client: its socket is open but it never reads, so it never
	// answers a ping.
	dialSilent(t, e)
	servicetest.WaitFor(t, wait, "two connections", func() bool { return counter(t, e.reg, "natter_edge_connections") == 2 })
	servicetest.WaitFor(t, wait, "the silent client dropped", func() bool { return counter(t, e.reg, "natter_edge_connections") == 1 })

	// The healthy one has answered pings for twice the pong timeout, and
	// is still served.
	want := int32(2 * timeout / interval)
	servicetest.WaitFor(t, wait, "pings answered for twice the pong timeout", func() bool {
		if n := counter(t, e.reg, "natter_edge_connections"); n != 1 {
			t.Fatalf("%v connections after %d pings answered, want the healthy one still connected", n, pings.Load())
		}
		return pings.Load() >= want
	})
	healthy.join("lobby")
	healthy.post("lobby", "still here", "1")
}

// A silent client is dropped once it has been silent for the pong
// timeout, not a ping interval or a close handshake later: with a ping
// interval of 2 s, it goes between 2.2 and 3.1 s after it connected
// (the pinger looks at every client's silence each 80 ms; dropped
// without a close frame, nothing is waited for). Not parallel: it times
// the drop to within a second.
func TestSilentClientDroppedOnTime(t *testing.T) {
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) {
		c.Limits.PingInterval = 2 * time.Second
		c.Limits.PongTimeout = 2200 * time.Millisecond
	})
	dialSilent(t, e)
	connected := time.Now() // the edge heard it last a moment before
	servicetest.WaitFor(t, wait, "the connection counted", func() bool { return counter(t, e.reg, "natter_edge_connections") == 1 })
	servicetest.WaitFor(t, wait, "the silent client dropped", func() bool { return counter(t, e.reg, "natter_edge_connections") == 0 })
	if d := time.Since(connected); d < 2100*time.Millisecond || d > 3100*time.Millisecond {
		t.Fatalf("dropped %v after it connected, want between the pong timeout (2.2 s, less the handshake) and 3.1 s", d)
	}
}

// dialSilent opens a WebSocket to e as the user silent that never reads,
// so never answers a ping; the test's end closes it.
func dialSilent(t *testing.T, e *testEdge) {
	t.Helper()
	conn, err := net.Dial("tcp", e.url[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, _, err := websocket.NewClient(conn, mustURL(t, wsURL(e.url, "silent")), nil, 1024, 1024); err != nil {
		t.Fatal(err)
	}
}
