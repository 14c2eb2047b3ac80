package main

import (
	"encoding/json"
	"testing"
	"time"

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
	servicetest.GetOK(t, addr, "/healthz", "/readyz", "/metrics")

	nc := natstest.Connect(t, ns)
	var reply proto.PostReply
	deadline := time.Now().Add(10 * time.Second)
	for reply.Seq == 0 {
		m, err := nc.Request(subject.InRoom("lobby"), []byte(`{"from":"bot","text":"hi"}`), 2*time.Second)
		if err == nil {
			if err := json.Unmarshal(m.Data, &reply); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("no broadcaster answered: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // polling for the subscription to be in place
	}
	stop()
}
