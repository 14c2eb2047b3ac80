package natsconn

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"

	"github.com/natter-chat/natter/shared/embedded"
	"github.com/natter-chat/natter/shared/servicetest"
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
		servicetest.WaitFor(t, 10*time.Second, "connected", nc.IsConnected)
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

// A server that goes silent without closing its sockets (killed with the
// network cut, or cut off itself) is left for another server of the list
// within seconds: the connection pings it and gives up after a few
// unanswered pings. With nats.go's defaults (a ping every two minutes) the
// connection would sit on the dead server for minutes.
func TestLeavesASilentServer(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var servers []string
	for range 2 {
		ns, err := embedded.Start(embedded.Options{Addr: "127.0.0.1:0", DataDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		defer embedded.Stop(ns)
		servers = append(servers, embedded.Addr(ns))
	}
	hole := startBlackHole(t, servers[0])
	defer hole.close()
	nc, err := Connect("nats://"+hole.addr()+",nats://"+servers[1], "t", time.Second, log, nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := nc.ConnectedAddr(); got != hole.addr() {
		t.Fatalf("connected to %s, want the first server's proxy %s", got, hole.addr())
	}
	hole.swallow()
	// A bound well above what the pings need (pingInterval times
	// maxPingsOut+1) and well below nats.go's default of minutes.
	servicetest.WaitFor(t, 4*(maxPingsOut+1)*pingInterval, "on the second server once the first went silent", func() bool {
		return nc.ConnectedAddr() == servers[1]
	})
}

// blackHole forwards TCP connections to a server until swallow, then keeps
// them open and drops everything sent either way, as a network that lost
// the server does.
type blackHole struct {
	ln       net.Listener
	upstream string
	dropping atomic.Bool
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn // guarded by mu
}

func startBlackHole(t *testing.T, upstream string) *blackHole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &blackHole{ln: ln, upstream: upstream}
	h.wg.Go(h.accept)
	return h
}

func (h *blackHole) addr() string { return h.ln.Addr().String() }

func (h *blackHole) swallow() { h.dropping.Store(true) }

func (h *blackHole) accept() {
	for {
		down, err := h.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", h.upstream)
		if err != nil {
			down.Close()
			continue
		}
		h.mu.Lock()
		h.conns = append(h.conns, down, up)
		h.mu.Unlock()
		h.wg.Go(func() { h.pipe(up, down) })
		h.wg.Go(func() { h.pipe(down, up) })
	}
}

// pipe copies from src to dst until src fails, dropping what it reads
// once the hole swallows.
func (h *blackHole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if h.dropping.Load() {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

// close closes the listener and every connection, and waits for the pipes.
func (h *blackHole) close() {
	h.ln.Close()
	h.mu.Lock()
	for _, c := range h.conns {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// A URL list that does not parse is refused, and the error, which the
// process prints as it exits, shows neither a password nor a token.
func TestConnectErrorHidesCredentials(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, url := range []string{
		"nats://edge:pw-secret@127.0.0.1:1,nats://h%zz:1",
		"nats://edge:pw-secret@[::1",
		"tok-secret@127.0.0.1:1,nats://%zz",
		"nats://edge:pw/secret@127.0.0.1:4222", // a / in the password
		"nats://edge:pw/se@cret@127.0.0.1:4222",
	} {
		nc, err := Connect(url, "test", time.Second, log)
		if err == nil {
			nc.Close()
			t.Fatalf("%s: connected", url)
		}
		if strings.Contains(err.Error(), "secret") || !strings.Contains(err.Error(), "REDACTED@") {
			t.Errorf("%s: %v", url, err)
		}
	}
}
