package embedded

import (
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/logwatch"
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

// The server's own lines go to the slog logger it is given, in its format
// and from its level; its debug lines only when the logger takes them, and
// never a message it carries or a password.
func TestLogsThroughSlog(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		logs := logwatch.New()
		log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level})).With("service", "nats")
		ns, err := Start(Options{Addr: "127.0.0.1:0", DataDir: t.TempDir(), Log: log, User: "chat", Password: "pw-marker-5f1e"})
		if err != nil {
			t.Fatal(err)
		}
		if nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("chat", "wrong-marker-5f1e")); err == nil {
			nc.Close()
			t.Fatal("a wrong password was let in")
		}
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo("chat", "pw-marker-5f1e"))
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish("chat.test", []byte("payload-marker-5f1e")); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		nc.Close()
		Stop(ns)
		levels := map[string]int{}
		for line := range strings.Lines(logs.String()) {
			var obj map[string]any
			if err := json.Unmarshal([]byte(line), &obj); err != nil {
				t.Fatalf("not JSON: %q", line)
			}
			if obj["service"] != "nats" {
				t.Errorf("without its service: %q", line)
			}
			levels[obj["level"].(string)]++
			if strings.Contains(line, "marker-5f1e") {
				t.Errorf("a password or payload logged: %q", line)
			}
		}
		if levels["INFO"] == 0 {
			t.Errorf("at %v: no INFO line in %s", level, logs.String())
		}
		if (levels["DEBUG"] > 0) != (level == slog.LevelDebug) {
			t.Errorf("at %v: %d DEBUG lines", level, levels["DEBUG"])
		}
	}
}
