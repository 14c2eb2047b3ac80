package embedded

import (
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPortZeroPicksAFreePort(t *testing.T) {
	ns, err := Start(Options{Addr: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer Stop(ns)
	addr := Addr(ns)
	if !strings.HasPrefix(addr, "127.0.0.1:") || strings.HasSuffix(addr, ":0") || strings.HasSuffix(addr, ":4222") {
		t.Fatalf("bound to %s", addr)
	}
	if !ns.JetStreamEnabled() {
		t.Fatal("JetStream is off")
	}
}

func TestBadAddress(t *testing.T) {
	for _, a := range []string{"nohost", "127.0.0.1:x"} {
		if _, err := Start(Options{Addr: a, DataDir: t.TempDir()}); err == nil {
			t.Errorf("address %q accepted", a)
		}
	}
}

// The embedded server listens beyond loopback only with credentials, and
// then requires them of every client.
func TestNonLoopbackNeedsCredentials(t *testing.T) {
	for _, a := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0"} {
		if ns, err := Start(Options{Addr: a, DataDir: t.TempDir()}); err == nil {
			Stop(ns)
			t.Errorf("%s without credentials: started", a)
		} else if !strings.Contains(err.Error(), "CHAT_NATS_USER") {
			t.Errorf("%s: %v; want a message naming CHAT_NATS_USER", a, err)
		}
	}
	ns, err := Start(Options{Addr: "0.0.0.0:0", DataDir: t.TempDir(), User: "chat", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer Stop(ns)
	url := "nats://127.0.0.1:" + strconv.Itoa(ns.Addr().(*net.TCPAddr).Port)
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials was let in")
	}
	nc, err := nats.Connect(url, nats.UserInfo("chat", "pw"))
	if err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	nc.Close()
}
