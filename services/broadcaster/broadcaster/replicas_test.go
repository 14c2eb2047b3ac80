package broadcaster

import (
	"context"
	"encoding/json"
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
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// clusterWait bounds what a cluster takes to elect a leader or notice a
// server gone.
const clusterWait = 30 * time.Second

// serving waits until r takes posts; Run ending first fails the test.
func serving(t testing.TB, r *running) {
	t.Helper()
	select {
	case <-r.Serving():
	case <-r.ended:
		t.Fatalf("Run returned before serving: %v", r.err)
	case <-time.After(clusterWait):
		t.Fatal("not serving")
	}
}

// postStored posts to room as a bot with an id, retrying while the
// answer is unavailable (a stream electing its leader), and returns the
// seq it was stored with. Retrying with the same id cannot store it twice.
func postStored(t testing.TB, nc *nats.Conn, room, text, id string) uint64 {
	t.Helper()
	body, _ := json.Marshal(proto.Post{From: "bot", Text: text, ID: id})
	var r proto.PostReply
	var err error
	if !servicetest.Poll(clusterWait, func() bool { // the stream elects a leader
		var m *nats.Msg
		if m, err = nc.Request(subject.InRoom(room), body, 5*time.Second); err != nil {
			return false
		}
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		if r.Seq == 0 && r.Code != proto.CodeUnavailable {
			t.Fatalf("post answered %s", m.Data)
		}
		return r.Seq > 0
	}) {
		t.Fatalf("post %q not stored: %v, answer %+v", id, err, r)
	}
	return r.Seq
}

// With three replicas on a cluster of three, the broadcaster brings
// streams made with one replica to three; a post is stored and acked
// with the room stream's leader down, a broadcaster started meanwhile
// updates the streams and serves, and the acked post survives the loss
// of another server once the first is back. Not parallel: a JetStream
// cluster elects its leaders on timers, which a busy CPU makes late.
func TestReplicasOnACluster(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	client := c.Connect(t)
	js, err := jetstream.New(client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterWait)
	defer cancel()
	if _, err := store.EnsureStream(ctx, js, testRetention, 1); err != nil {
		t.Fatal(err)
	}
	natstest.WaitReplicas(t, client, subject.Stream, 1)

	serving(t, startWith(t, c.URL(), Config{Retention: testRetention, Replicas: 3}))
	natstest.WaitReplicas(t, client, subject.Stream, 3)
	natstest.WaitReplicas(t, client, subject.DMStream, 3)

	down := c.StreamLeader(subject.Stream)
	if down < 0 {
		t.Fatal("the room stream has no leader")
	}
	c.Stop(down)
	seq := postStored(t, client, "lobby", "one server down", "d1")
	serving(t, startWith(t, c.URL(), Config{Retention: testRetention, Replicas: 3}))
	if again := postStored(t, client, "lobby", "one server down", "d1"); again != seq {
		t.Fatalf("the retried post got seq %d, want %d", again, seq)
	}

	c.Restart(down)
	natstest.WaitReplicas(t, client, subject.Stream, 3)
	c.Stop((down + 1) % 3)
	var last uint64
	if !servicetest.Poll(clusterWait, func() bool { // the client reconnects, the servers notice the loss
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer rcancel()
		last, err = store.LastSeq(rctx, client, store.Room("lobby"))
		return err == nil
	}) {
		t.Fatalf("the acked post is not readable with another server down: %v", err)
	}
	if last != seq {
		t.Fatalf("the room's last seq is %d, want %d", last, seq)
	}
}

// NATS servers that can never hold the replicas stop the broadcaster at
// once with an error that names the setting, its value and why. Not
// parallel: a JetStream cluster elects its leaders on timers, which a
// busy CPU makes late.
func TestReplicasRefused(t *testing.T) {
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
			url := tt.url(t)
			began := time.Now()
			r := startWith(t, url, Config{Retention: testRetention, Replicas: tt.replicas})
			select {
			case <-r.ended:
			case <-time.After(5 * time.Second):
				t.Fatal("Run still retrying after 5 s")
			}
			t.Logf("refused in %v: %v", time.Since(began), r.err)
			if _, ok := errors.AsType[*store.ReplicasError](r.err); !ok {
				t.Fatalf("Run returned %v, want a refusal of the replicas", r.err)
			}
			for _, want := range []string{"CHAT_STREAM_REPLICAS=" + strconv.Itoa(tt.replicas), tt.why} {
				if !strings.Contains(r.err.Error(), want) {
					t.Errorf("%q does not say %q", r.err, want)
				}
			}
			select {
			case <-r.Serving():
				t.Error("serving anyway")
			default:
			}
		})
	}
}

// Fewer than one replica is refused by New.
func TestNewRefusesNoReplicas(t *testing.T) {
	t.Parallel()
	nc := natstest.Connect(t, natstest.Start(t))
	for _, n := range []int{0, -1} {
		_, err := New(Config{Retention: testRetention, Replicas: n}, nc, slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
		if err == nil || !strings.Contains(err.Error(), "CHAT_STREAM_REPLICAS") {
			t.Errorf("%d replicas: %v, want a refusal naming CHAT_STREAM_REPLICAS", n, err)
		}
	}
}
