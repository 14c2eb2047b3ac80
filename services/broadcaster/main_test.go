package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The broadcaster runs as its own process against CHAT_NATS_URL, serves
// its endpoints on its own address and stores posts.
func TestRunAlone(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	addr, stop := servicetest.Run(t, run)
	servicetest.GetOK(t, addr, "/healthz", "/metrics")

	awaitStored(t, ns)
	// Ready once it takes posts.
	servicetest.GetOK(t, addr, "/readyz")
	// Its /metrics times the store it made.
	if n, sum, ok := servicetest.Scrape(t, addr).Histogram("natter_broadcaster_store_seconds"); !ok || n == 0 || !(sum > 0) {
		t.Errorf("natter_broadcaster_store_seconds: count %d, sum %g, present %v; want a store timed", n, sum, ok)
	}
	stop()
}

// awaitStored posts to a room on ns until a broadcaster answers with the
// post's seq, for up to 10 s.
func awaitStored(t *testing.T, ns *server.Server) {
	t.Helper()
	nc := natstest.Connect(t, ns)
	var reply proto.PostReply
	var err error
	if !servicetest.Poll(10*time.Second, func() bool { // the subscription may not be in place yet
		var m *nats.Msg
		if m, err = nc.Request(subject.InRoom("lobby"), []byte(`{"from":"bot","text":"hi"}`), 2*time.Second); err != nil {
			return false
		}
		if err := json.Unmarshal(m.Data, &reply); err != nil {
			t.Fatal(err)
		}
		return reply.Seq != 0
	}) {
		t.Fatalf("no broadcaster stored the post: %v, answer %+v", err, reply)
	}
}

// The healthcheck subcommand passes while the broadcaster is ready, and fails while
// its NATS is gone (503) and once it has stopped.
func TestHealthcheck(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	servicetest.CheckHealthcheck(t, run, func() {
		awaitStored(t, ns) // its streams made: not shut down while they are
		ns.Shutdown()
	})
}

// Without CHAT_HTTP_ADDR the healthcheck asks the broadcaster's own default address,
// on 127.0.0.1; any other argument is refused before anything starts.
func TestRunArguments(t *testing.T) { servicetest.CheckArguments(t, run, "127.0.0.1:8082") }

// The process stops at start, with an error naming the setting, when
// CHAT_STREAM_REPLICAS is below 1 or more than the NATS server can hold;
// main then exits 1.
func TestRunRefusesReplicas(t *testing.T) {
	servicetest.CheckRefusesReplicas(t, run, natstest.Start(t).ClientURL())
}

// A broadcaster is ready only once it takes posts: connected to a NATS
// server without JetStream it cannot keep its streams, so its /readyz
// answers 503 and its healthcheck fails, and the mesh starts no edge
// that would answer every post unavailable.
func TestNotReadyUntilServing(t *testing.T) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	addr, stop := servicetest.Run(t, run)
	defer stop()
	servicetest.GetOK(t, addr, "/healthz")
	// Connected at once, and never serving without JetStream.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := servicetest.Healthcheck(t, run, addr); err == nil || !strings.Contains(err.Error(), "503") {
			t.Fatalf("healthcheck of a broadcaster without its streams: %v, want 503", err)
		}
		time.Sleep(100 * time.Millisecond) // asking again while it keeps trying
	}
}

// An unknown CHAT_LOG_FORMAT or CHAT_LOG_LEVEL is refused at start, and
// CHAT_LOG_FORMAT=json makes every line one JSON object.
func TestRunLogSettings(t *testing.T) {
	servicetest.CheckLogSettings(t, run, natstest.Start(t).ClientURL(), "broadcaster")
}

// CHAT_PPROF_ADDR, empty by default, opens no listener; set, a listener
// of its own serves /debug/pprof/heap and the HTTP address does not.
func TestPProf(t *testing.T) { servicetest.CheckPProf(t, run, natstest.Start(t).ClientURL()) }
