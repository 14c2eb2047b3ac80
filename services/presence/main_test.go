package main

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Presence runs as its own process against CHAT_NATS_URL and serves its
// endpoints on its own address.
func TestRunAlone(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	addr, stop := servicetest.Run(t, run)
	servicetest.GetOK(t, addr, "/healthz", "/readyz", "/metrics")

	awaitWho(t, ns)
	stop()
}

// awaitWho asks who is in a room on ns until presence answers, for up to
// 10 s: it answers once it has listened for the edges (none here).
func awaitWho(t *testing.T, ns *server.Server) {
	t.Helper()
	nc := natstest.Connect(t, ns)
	var msg *nats.Msg
	var err error
	if !servicetest.Poll(10*time.Second, func() bool { msg, err = nc.Request(subject.PresenceWho("lobby"), nil, time.Second); return err == nil }) {
		t.Fatalf("no answer to who within 10 s: %v", err)
	}
	if string(msg.Data) != `{"users":[]}` {
		t.Fatalf("who lobby = %s", msg.Data)
	}
}

// The healthcheck subcommand passes while presence is ready, and fails while
// its NATS is gone (503) and once it has stopped.
func TestHealthcheck(t *testing.T) {
	ns := natstest.Start(t)
	t.Setenv("CHAT_NATS_URL", ns.ClientURL())
	servicetest.CheckHealthcheck(t, run, func() {
		awaitWho(t, ns) // its bucket made: not shut down while it is
		ns.Shutdown()
	})
}

// Without CHAT_HTTP_ADDR the healthcheck asks presence's own default address,
// on 127.0.0.1; any other argument is refused before anything starts.
func TestRunArguments(t *testing.T) { servicetest.CheckArguments(t, run, "127.0.0.1:8081") }

// The process stops at start, with an error naming the setting, when
// CHAT_STREAM_REPLICAS is below 1 or more than the NATS server can hold;
// main then exits 1.
func TestRunRefusesReplicas(t *testing.T) {
	servicetest.CheckRefusesReplicas(t, run, natstest.Start(t).ClientURL())
}

// An unknown CHAT_LOG_FORMAT or CHAT_LOG_LEVEL is refused at start, and
// CHAT_LOG_FORMAT=json makes every line one JSON object.
func TestRunLogSettings(t *testing.T) {
	servicetest.CheckLogSettings(t, run, natstest.Start(t).ClientURL(), "presence")
}

// CHAT_PPROF_ADDR, empty by default, opens no listener; set, a listener
// of its own serves /debug/pprof/heap and the HTTP address does not.
func TestPProf(t *testing.T) { servicetest.CheckPProf(t, run, natstest.Start(t).ClientURL()) }
