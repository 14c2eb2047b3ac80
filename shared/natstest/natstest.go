// Package natstest starts real NATS servers for tests: JetStream on,
// loopback, random ports, data in the test's temporary directory. Start
// runs one server alone, StartCluster a JetStream cluster whose servers a
// test can stop and start again.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/embedded"
)

// Start starts a server that stops when the test ends.
func Start(t testing.TB) *server.Server {
	t.Helper()
	return StartDir(t, t.TempDir())
}

// StartDir starts a server on dir, so a test can restart one on the same
// data.
func StartDir(t testing.TB, dir string) *server.Server {
	t.Helper()
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { embedded.Stop(ns) })
	return ns
}

// Connect opens a plain client connection to ns, closed when the test ends.
func Connect(t testing.TB, ns *server.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
