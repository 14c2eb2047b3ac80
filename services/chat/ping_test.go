package main

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/natstest"
)

// The server pings; a client that answers stays, one that does not is
// dropped after the pong timeout.
func TestPingsAndSilentClients(t *testing.T) {
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) {
		c.Limits.PingInterval = 50 * time.Millisecond
		c.Limits.PongTimeout = 300 * time.Millisecond
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
	conn, err := net.Dial("tcp", e.url[len("http://"):])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, _, err := websocket.NewClient(conn, mustURL(t, wsURL(e.url, "silent")), nil, 1024, 1024); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two connections", func() bool { return counter(t, e.reg, "natter_edge_connections") == 2 })
	waitFor(t, "the silent client dropped", func() bool { return counter(t, e.reg, "natter_edge_connections") == 1 })

	// The healthy one has answered many pings, well past the pong
	// timeout, and is still served.
	waitFor(t, "ten pings answered", func() bool { return pings.Load() >= 10 })
	healthy.join("lobby")
	healthy.post("lobby", "still here", "1")
}
