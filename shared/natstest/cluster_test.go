package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/servicetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A cluster of three keeps a stream of three replicas through the stop of
// any one server, and the server started again on its data catches up.
func TestClusterStopAndRestart(t *testing.T) {
	c := StartCluster(t, 3)
	nc := c.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	WaitReplicas(t, nc, "T", 3)
	if _, err := js.Publish(ctx, "t.1", []byte("one")); err != nil {
		t.Fatal(err)
	}
	down := c.StreamLeader("T")
	if down < 0 {
		t.Fatal("the stream has no leader")
	}
	c.Stop(down)
	if c.Server(down) != nil {
		t.Fatal("a stopped server is still listed")
	}
	// The others elect a new leader; until then a publish may time out.
	if !servicetest.Poll(clusterWait, func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		_, err = js.Publish(pctx, "t.2", []byte("two"))
		return err == nil
	}) {
		t.Fatalf("no publish acked with server %d down: %v", down, err)
	}
	c.Restart(down)
	WaitReplicas(t, nc, "T", 3)
	if !c.Server(down).JetStreamIsStreamCurrent("$G", "T") {
		t.Fatalf("server %d is not current with the stream after its restart", down)
	}
	s, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("stream holds %+v (%v), want 2 messages", info.State, err)
	}
}
