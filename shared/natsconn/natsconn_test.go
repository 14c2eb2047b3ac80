package natsconn

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"

	"github.com/natter-chat/natter/shared/embedded"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A service may start before NATS: Connect returns at once and the
// connection comes up when the server does, and again after it restarts.
// Drain closes it and leaves no goroutine behind.
func TestConnectsLateReconnectsAndDrains(t *testing.T) {
	dir := t.TempDir()
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := embedded.Addr(ns)
	url := ns.ClientURL()
	embedded.Stop(ns) // nothing listens now

	nc, err := Connect(url, "test", time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("Connect with no server: %v", err)
	}
	if nc.IsConnected() {
		t.Fatal("connected to nothing")
	}
	waitConnected := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !nc.IsConnected() {
			if time.Now().After(deadline) {
				t.Fatal("not connected")
			}
			time.Sleep(10 * time.Millisecond) // polling the connection state
		}
	}
	for range 2 { // the first start, then a restart
		ns, err = embedded.Start(embedded.Options{Addr: addr, DataDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		waitConnected()
		if err := nc.Publish("x", nil); err != nil {
			t.Fatal(err)
		}
		embedded.Stop(ns)
	}
	ns, err = embedded.Start(embedded.Options{Addr: addr, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Stop(ns)
	waitConnected()
	Drain(nc)
	if !nc.IsClosed() {
		t.Fatal("not closed after Drain")
	}
	Drain(nc) // safe on a closed connection
}

// Auth presents the configured user and password; without them a server
// that requires them refuses the connection.
func TestAuth(t *testing.T) {
	ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: t.TempDir(), User: "edge", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Stop(ns)
	if len(Auth(config.NATS{})) != 0 {
		t.Fatal("options without credentials")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := Connect(ns.ClientURL(), "t", time.Second, log, Auth(config.NATS{User: "edge", Password: "pw"})...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("with the user: %v", err)
	}
	if _, err := nats.Connect(ns.ClientURL(), Auth(config.NATS{User: "edge", Password: "wrong"})...); err == nil {
		t.Fatal("a wrong password was let in")
	}
}
