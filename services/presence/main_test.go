package main

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
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
	stop()
}
