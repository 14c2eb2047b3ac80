package embedded

import (
	"strings"
	"testing"

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
