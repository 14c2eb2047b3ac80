package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/logwatch"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// startMain runs the single binary in-process on random ports and data in
// dir; the returned stop cancels it and waits for Run to return.
func startMain(t *testing.T, dir string) (*Main, func()) {
	t.Helper()
	return startMainAt(t, dir, "127.0.0.1:0")
}

// startMainAt is startMain with its HTTP listener on httpAddr.
func startMainAt(t *testing.T, dir, httpAddr string) (*Main, func()) {
	t.Helper()
	return startMainWith(t, dir, func(cfg *Config) { cfg.HTTPAddr = httpAddr })
}

// startMainWith is startMain with its configuration changed by tweak.
func startMainWith(t *testing.T, dir string, tweak func(*Config)) (*Main, func()) {
	t.Helper()
	cfg := config.Defaults[Config]()
	cfg.HTTPAddr, cfg.NATSAddr, cfg.DataDir = "127.0.0.1:0", "127.0.0.1:0", dir
	tweak(&cfg)
	ctx, cancel := context.WithCancel(context.Background())
	m, err := Open(ctx, cfg, io.Discard)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return m, stop
}

// run itself, configured from the environment, listens on random ports,
// logs its addresses and lets a NATS client watch the traffic.
func TestRunLogsAddressesAndNATSSeesTraffic(t *testing.T) {
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CHAT_NATS_ADDR", "127.0.0.1:0")
	t.Setenv("CHAT_DATA_DIR", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	logs := logwatch.New()
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard, logs) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	httpAddr := logs.Await(t, "http", wait)
	natsAddr := logs.Await(t, "nats", wait)

	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	seen := make(chan string, 100)
	sub, err := nc.Subscribe(subject.All, func(m *nats.Msg) {
		select {
		case seen <- m.Subject:
		default: // the test reads only the first few
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	c := dial(t, "http://"+httpAddr, "alice")
	// The single binary's presence answers from the start.
	if j := c.join("lobby"); !slices.Equal(j.Users, []string{"alice"}) {
		t.Fatalf("joined %s, want users [alice]", j.raw)
	}
	c.post("lobby", "watched", "w")
	want := map[string]bool{subject.InRoom("lobby"): false, subject.RoomMsg("lobby"): false,
		subject.PresenceSession("lobby"): false, subject.RoomPresence("lobby"): false}
	for missing := len(want); missing > 0; {
		select {
		case s := <-seen:
			if done, ok := want[s]; ok && !done {
				want[s] = true
				missing--
			}
		case <-time.After(wait):
			t.Fatalf("NATS watcher saw only %v", want)
		}
	}
}

// The healthcheck subcommand passes while the single binary is ready, and
// fails while its NATS is gone (503) and once it has stopped. Its NATS is
// an external server here, one the test can shut down.
func TestHealthcheck(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	servicetest.CheckHealthcheck(t, run, func() {
		// Presence answers once its bucket is made: NATS is not shut
		// down while it is.
		nc := natstest.Connect(t, ns)
		servicetest.WaitFor(t, wait, "presence answering who", func() bool {
			_, err := nc.Request(subject.PresenceWho("lobby"), nil, time.Second)
			return err == nil
		})
		ns.Shutdown()
	})
}

// Without CHAT_HTTP_ADDR the healthcheck asks the single binary's default
// address, on 127.0.0.1; other arguments are refused, naming both
// subcommands.
func TestRunArguments(t *testing.T) {
	out, err := servicetest.Healthcheck(t, run, "")
	if want := "http://127.0.0.1:8080/readyz"; !strings.Contains(out, want) && (err == nil || !strings.Contains(err.Error(), want)) {
		t.Errorf("healthcheck without CHAT_HTTP_ADDR: printed %q, error %v; want %s asked", out, err, want)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"serve"}, "its subcommands are token and healthcheck"},
		{[]string{"-h"}, "its subcommands are token and healthcheck"},
		{[]string{"healthcheck", "now"}, `healthcheck: unexpected arguments ["now"]`},
	} {
		if err := run(context.Background(), tt.args, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run %q: %v, want an error with %q", tt.args, err, tt.want)
		}
	}
}

// The history survives a restart on the same data folder, and new seqs are
// larger than the old ones.
func TestRestartKeepsMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	m, stop := startMain(t, dir)
	c := dial(t, "http://"+m.Addr(), "alice")
	c.join("lobby")
	var last uint64
	for _, id := range []string{"1", "2", "3"} {
		last = c.post("lobby", "before restart "+id, id)
	}
	c.close()
	stop()

	m, _ = startMain(t, dir)
	c = dial(t, "http://"+m.Addr(), "alice")
	if j := c.join("lobby"); j.seq() != last {
		t.Fatalf("after restart joined %s, want seq %d", j.raw, last)
	}
	nc, err := nats.Connect("nats://" + m.NATSAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if n := streamMsgs(t, nc); n != 3 {
		t.Fatalf("%d messages in the stream after restart, want 3", n)
	}
	if seq := c.post("lobby", "after restart", "4"); seq <= last {
		t.Fatalf("new seq %d not above %d", seq, last)
	}
	// A retry of an id stored before the restart is still recognised.
	if seq := c.post("lobby", "before restart 3", "3"); seq != last {
		t.Fatalf("retry after restart stored again as %d, want %d", seq, last)
	}
}

// The real binary ends on SIGTERM with exit 0 within 10 s, closing its
// WebSockets with 1001.
func TestSIGTERMShutsDownCleanly(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildChat(t)
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"CHAT_HTTP_ADDR=127.0.0.1:0", "CHAT_NATS_ADDR=127.0.0.1:0", "CHAT_DATA_DIR="+t.TempDir())
	logs := logwatch.New()
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	httpAddr := logs.Await(t, "http", wait)
	logs.Await(t, "nats", wait)

	c := dial(t, "http://"+httpAddr, "alice")
	c.join("lobby")
	c.post("lobby", "bye", "b")
	c.expect("message")

	// An idle HTTP connection must not hold the shutdown up or spoil the
	// exit code.
	idle, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(); code != websocket.CloseGoingAway {
		t.Errorf("client closed with %d, want 1001", code)
	}
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			t.Fatalf("exit: %v\n%s", err, logs.String())
		}
		if took := time.Since(start); took > 10*time.Second {
			t.Fatalf("shutdown took %v, the contract allows 10s", took)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("still running 15s after SIGTERM\n%s", logs.String())
	}
}

// buildChat builds the real binary into the test's temporary folder.
func buildChat(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "chat")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}
