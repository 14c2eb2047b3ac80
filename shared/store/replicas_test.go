package store

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

var replicasRetention = config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 20}

// ensure runs EnsureStream as a service does at start: passing errors are
// retried until within, a refusal is returned at once.
func ensure(t *testing.T, nc *nats.Conn, replicas int, within time.Duration) error {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var refused error
	settled := servicetest.Poll(within, func() bool { // the cluster settles by itself
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err = EnsureStream(ctx, js, replicasRetention, replicas); err == nil {
			return true
		}
		refused = ReplicasRefused(err, replicas, nc)
		return refused != nil
	})
	if !settled {
		t.Fatalf("EnsureStream with %d replicas: %v", replicas, err)
	}
	return refused
}

func wantRefused(t *testing.T, err error, replicas int, why string) {
	t.Helper()
	var refused *ReplicasError
	if !errors.As(err, &refused) || refused.Replicas != replicas {
		t.Fatalf("got %v, want a refusal of %d replicas", err, replicas)
	}
	for _, s := range []string{"CHAT_STREAM_REPLICAS=" + strconv.Itoa(replicas), why} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q does not say %q", err, s)
		}
	}
}

// A server outside any cluster refuses more than one replica for good,
// whether the streams exist or not.
func TestReplicasRefusedBySingleServer(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	wantRefused(t, ensure(t, nc, 3, 0), 3, "not in a cluster")
	if err := ensure(t, nc, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, ensure(t, nc, 2, 0), 2, "not in a cluster")
}

// On a cluster of three, the streams are created with three replicas or
// updated from one to three; five are refused for good. With one server
// down, the streams are updated as they are, a new stream of three is
// still created, and five are still refused. Not parallel: a JetStream
// cluster elects its leaders on timers, which a busy CPU makes late.
func TestReplicasOnACluster(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	nc := c.Connect(t)
	if err := ensure(t, nc, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	natstest.WaitReplicas(t, nc, subject.Stream, 1)
	if err := ensure(t, nc, 3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	natstest.WaitReplicas(t, nc, subject.Stream, 3)
	natstest.WaitReplicas(t, nc, subject.DMStream, 3)
	wantRefused(t, ensure(t, nc, 5, 0), 5, "fewer servers")

	c.Stop(c.StreamLeader(subject.Stream))
	if err := ensure(t, nc, 3, 30*time.Second); err != nil {
		t.Fatalf("update with one server down: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	created := servicetest.Poll(30*time.Second, func() bool { // the cluster notices the server is gone
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "NEW", Subjects: []string{"new.>"}, Replicas: 3})
		if err == nil {
			return true
		}
		if refused := ReplicasRefused(err, 3, nc); refused != nil {
			t.Fatalf("a new stream of 3 with one server down: %v", refused)
		}
		return false
	})
	if !created {
		t.Fatalf("a new stream of 3 with one server down: %v", err)
	}
	wantRefused(t, ensure(t, nc, 5, 30*time.Second), 5, "fewer servers")
}

// A cluster still forming, whose last server has not joined yet,
// answers as one that has fewer servers. A client given that server's
// URL too is not refused; one that knows only the servers up is. Not
// parallel: a JetStream cluster elects its leaders on timers, which a
// busy CPU makes late.
func TestReplicasOnAFormingCluster(t *testing.T) {
	c := natstest.StartCluster(t, 2)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	missing := "nats://" + l.Addr().String() // a server not started yet
	l.Close()
	knowsAll, err := nats.Connect(c.URL()+","+missing, nats.DontRandomize())
	if err != nil {
		t.Fatal(err)
	}
	defer knowsAll.Close()
	js, err := jetstream.New(knowsAll)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = EnsureStream(ctx, js, replicasRetention, 3)
	if a := apiError(err); a == nil || a.ErrorCode != errCodeNoPeers || a.Description != noPeersBare {
		t.Fatalf("two servers asked for three replicas answered %v, want %q", err, noPeersBare)
	}
	if refused := ReplicasRefused(err, 3, knowsAll); refused != nil {
		t.Fatalf("refused while the client knows three servers: %v", refused)
	}
	wantRefused(t, ensure(t, c.Connect(t), 3, 0), 3, "fewer servers")
}
