package presence

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// bucketStream is the stream JetStream keeps the presence bucket in.
const bucketStream = "KV_" + subject.PresenceBucket

// On a cluster of three, presence brings a bucket made with one replica
// to three, and goes live. Not parallel: a JetStream cluster elects its
// leaders on timers, which a busy CPU makes late.
func TestBucketReplicasOnACluster(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	nc := c.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subject.PresenceBucket, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	natstest.WaitReplicas(t, nc, bucketStream, 1)
	p := runOn(t, c.Connect(t), Config{MaxMembers: 500, Replicas: 3, Fresh: true})
	select {
	case <-p.Live():
	case <-ctx.Done():
		t.Fatal("not live")
	}
	natstest.WaitReplicas(t, nc, bucketStream, 3)
}

// NATS servers that can never hold the bucket's replicas stop presence
// at once with an error that names the setting, its value and why. Not
// parallel: a JetStream cluster elects its leaders on timers, which a
// busy CPU makes late.
func TestBucketReplicasRefused(t *testing.T) {
	tests := []struct {
		name     string
		url      func(*testing.T) string
		replicas int
		why      string
	}{
		{"single server", func(t *testing.T) string { return natstest.Start(t).ClientURL() }, 3,
			"the NATS server is not in a cluster"},
		{"cluster of three", func(t *testing.T) string { return natstest.StartCluster(t, 3).URL() }, 5,
			"the NATS cluster has fewer servers than that"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nc, err := nats.Connect(tt.url(t))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			p, err := New(Config{MaxMembers: 500, Replicas: tt.replicas, Fresh: true}, nc,
				slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				cancel()
				<-done
				t.Fatal("Run still retrying after 5 s")
			}
			if _, ok := errors.AsType[*store.ReplicasError](err); !ok {
				t.Fatalf("Run returned %v, want a refusal of the replicas", err)
			}
			for _, want := range []string{"CHAT_STREAM_REPLICAS=" + strconv.Itoa(tt.replicas), tt.why, subject.PresenceBucket} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("%q does not say %q", err, want)
				}
			}
		})
	}
}

// Fewer than one replica is refused by New.
func TestNewRefusesNoReplicas(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.Start(t))
	for _, n := range []int{0, -1} {
		_, err := New(Config{MaxMembers: 500, Replicas: n}, nc, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
		if err == nil || !strings.Contains(err.Error(), "CHAT_STREAM_REPLICAS") {
			t.Errorf("%d replicas: %v, want a refusal naming CHAT_STREAM_REPLICAS", n, err)
		}
	}
}
