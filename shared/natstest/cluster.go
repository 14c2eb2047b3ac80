package natstest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/servicetest"
)

// clusterWait bounds how long a cluster, or one of its servers started
// again, may take to be ready for JetStream clients.
const clusterWait = 30 * time.Second

// Cluster is n servers with JetStream clustered among them, each on
// loopback with random client and route ports and its data in the test's
// temporary directory.
type Cluster struct {
	t    testing.TB
	name string

	mu sync.Mutex
	// servers[i] is nil while server i is stopped.
	servers []*server.Server // guarded by mu
	dirs    []string
	// clientPorts and routePorts are what each server bound first; a
	// server started again takes the same ports, so that the others'
	// routes and the clients' URL lists still reach it.
	clientPorts []int // guarded by mu
	routePorts  []int // guarded by mu
}

// StartCluster starts n clustered servers and waits until JetStream can
// place streams of n replicas: a meta leader is elected and knows every
// server. They stop when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if n < 2 {
		// One server alone never elects a meta leader: use Start.
		t.Fatalf("a cluster of %d servers: want at least 2", n)
	}
	c := &Cluster{
		t:           t,
		name:        "natter-test",
		servers:     make([]*server.Server, n),
		dirs:        make([]string, n),
		clientPorts: make([]int, n),
		routePorts:  make([]int, n),
	}
	// Cleanups run last first, and the removal of the test's temporary
	// directory is the one its first TempDir registers: made before
	// shutdown is registered, it is removed once the servers have stopped
	// writing to it.
	t.TempDir()
	t.Cleanup(c.shutdown)
	for attempt := 1; ; attempt++ {
		err := c.startAll()
		if err == nil {
			break
		}
		c.shutdown()
		if attempt == 3 {
			t.Fatal(err)
		}
	}
	c.WaitReady(n)
	return c
}

// startAll starts every server on fresh data. Each must name at least one
// route at start, so the route ports are picked before: free ports, closed
// again just before the servers bind them. Another process may take one
// meanwhile; the server then fails to listen, and StartCluster tries again
// on other ports.
func (c *Cluster) startAll() error {
	ports, err := freePorts(len(c.servers))
	if err != nil {
		return err
	}
	for i := range c.servers {
		c.dirs[i] = c.t.TempDir()
		c.clientPorts[i], c.routePorts[i] = server.RANDOM_PORT, ports[i]
	}
	for i := range c.servers {
		if err := c.start(i); err != nil {
			return err
		}
	}
	return nil
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("a free port: %w", err)
		}
		// Held until all are picked, so that the n ports differ.
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// options is the configuration of server i: its ports (the client port
// random the first time, then the one it bound) and routes to every other
// server.
func (c *Cluster) options(i int) *server.Options {
	var routes []*url.URL
	for j, p := range c.routePorts {
		if j != i {
			routes = append(routes, &url.URL{Scheme: "nats-route", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(p))})
		}
	}
	return &server.Options{
		ServerName: fmt.Sprintf("%s-%d", c.name, i),
		Host:       "127.0.0.1",
		Port:       c.clientPorts[i],
		JetStream:  true,
		StoreDir:   c.dirs[i],
		// As the embedded server: a stream's byte limit is reserved up
		// front, and the default ceiling comes from free disk.
		JetStreamMaxStore: 1 << 40,
		NoSigs:            true,
		NoLog:             true,
		Cluster: server.ClusterOpts{
			Name: c.name,
			Host: "127.0.0.1",
			Port: c.routePorts[i],
		},
		Routes: routes,
	}
}

func (c *Cluster) start(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.servers[i] != nil {
		return fmt.Errorf("server %d is running", i)
	}
	ns, err := server.NewServer(c.options(i))
	if err != nil {
		return fmt.Errorf("server %d: %w", i, err)
	}
	ns.Start()
	if !ns.ReadyForConnections(clusterWait) {
		ns.Shutdown()
		ns.WaitForShutdown()
		return fmt.Errorf("server %d: not ready for connections after %v", i, clusterWait)
	}
	c.servers[i] = ns
	c.clientPorts[i] = ns.Addr().(*net.TCPAddr).Port
	return nil
}

// Server returns server i, nil while it is stopped.
func (c *Cluster) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// StreamLeader returns the index of the server that leads stream (of the
// default account), -1 when none does.
func (c *Cluster) StreamLeader(stream string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, ns := range c.servers {
		if ns != nil && ns.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
			return i
		}
	}
	return -1
}

// URL lists the client URLs of every server, running or not, comma
// separated, as CHAT_NATS_URL takes them.
func (c *Cluster) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	urls := make([]string, len(c.clientPorts))
	for i, p := range c.clientPorts {
		urls[i] = "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
	}
	return strings.Join(urls, ",")
}

// Connect opens a client connection to the cluster, closed when the test
// ends. It follows the servers as they stop and start.
func (c *Cluster) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URL(), nats.Timeout(5*time.Second), nats.MaxReconnects(-1),
		nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Stop shuts server i down and waits for it; its data stays for Restart.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	ns := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if ns != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
	}
}

// Restart starts server i again on its data and ports, and waits until
// the meta leader counts every running server online again.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if err := c.start(i); err != nil {
		c.t.Fatal(err)
	}
	c.WaitReady(c.running())
}

// running counts the servers not stopped.
func (c *Cluster) running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ns := range c.servers {
		if ns != nil {
			n++
		}
	}
	return n
}

// WaitReady waits until a meta leader is elected, knows online peers
// that are enough for streams of want replicas, and every running server
// is current with it and answers a JetStream client.
func (c *Cluster) WaitReady(want int) {
	c.t.Helper()
	var why string
	if !servicetest.Poll(clusterWait, func() bool { why = c.notReady(want); return why == "" }) {
		c.t.Fatalf("cluster not ready after %v: %s", clusterWait, why)
	}
}

// notReady says why the cluster is not ready for want replicas, "" when it is.
func (c *Cluster) notReady(want int) string {
	c.mu.Lock()
	running := make([]*server.Server, 0, len(c.servers))
	for _, ns := range c.servers {
		if ns != nil {
			running = append(running, ns)
		}
	}
	c.mu.Unlock()
	var leader *server.Server
	for _, ns := range running {
		if ns.JetStreamIsLeader() {
			leader = ns
		}
	}
	if leader == nil {
		return "no meta leader"
	}
	if peers := leader.JetStreamClusterPeers(); len(peers) < want {
		return fmt.Sprintf("the meta leader knows %d online servers %v, want %d", len(peers), peers, want)
	}
	for _, ns := range running {
		if !ns.JetStreamIsCurrent() {
			return ns.Name() + " is not current"
		}
		if err := accountInfo(ns); err != nil {
			return ns.Name() + ": " + err.Error()
		}
	}
	return ""
}

// accountInfo asks ns, over a client connection, for the account's
// JetStream information: the request every JetStream client starts with.
func accountInfo(ns *server.Server) error {
	nc, err := nats.Connect(ns.ClientURL(), nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

func (c *Cluster) shutdown() {
	for i := range c.servers {
		c.Stop(i)
	}
}

// WaitReplicas waits until stream, asked through nc, keeps n copies: n in
// its configuration, a leader, and n-1 other servers caught up with it.
func WaitReplicas(t testing.TB, nc *nats.Conn, stream string, n int) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var why string
	if !servicetest.Poll(clusterWait, func() bool { why = replicasShort(js, stream, n); return why == "" }) {
		t.Fatalf("stream %s: %s after %v", stream, why, clusterWait)
	}
}

// replicasShort says how stream falls short of n caught-up copies, "" when
// it does not.
func replicasShort(js jetstream.JetStream, stream string, n int) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return err.Error()
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err.Error()
	}
	if info.Config.Replicas != n {
		return fmt.Sprintf("%d replicas configured, want %d", info.Config.Replicas, n)
	}
	if n == 1 {
		return ""
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "no leader"
	}
	current := 0
	for _, p := range info.Cluster.Replicas {
		if p.Current && !p.Offline {
			current++
		}
	}
	if current != n-1 {
		return fmt.Sprintf("leader %s and %d current replicas of %d, want %d", info.Cluster.Leader, current, len(info.Cluster.Replicas), n-1)
	}
	return ""
}
