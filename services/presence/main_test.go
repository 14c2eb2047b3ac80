package main

import (
	"testing"
	"time"

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

	// Once it has listened for the edges (none here), it answers who.
	nc := natstest.Connect(t, ns)
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg, err := nc.Request(subject.PresenceWho("lobby"), nil, time.Second)
		if err == nil {
			if string(msg.Data) != `{"users":[]}` {
				t.Fatalf("who lobby = %s", msg.Data)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer to who within 10 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	stop()
}
