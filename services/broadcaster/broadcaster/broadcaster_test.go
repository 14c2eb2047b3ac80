package broadcaster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testRetention = config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 20}

// start runs a broadcaster on its own connection to ns. stop ends Run
// and returns its error; the connection is drained when the test ends.
func start(t *testing.T, ns *server.Server) (b *Broadcaster, nc *nats.Conn, stop func() error) {
	t.Helper()
	r := startWith(t, ns.ClientURL(), Config{Retention: testRetention, Replicas: 1})
	return r.Broadcaster, r.nc, r.stop
}

// running is a broadcaster whose Run runs in a goroutine.
type running struct {
	*Broadcaster
	nc     *nats.Conn
	cancel context.CancelFunc
	ended  chan struct{} // closed when Run has returned
	err    error         // what Run returned, once ended is closed
}

// stop ends Run and returns its error.
func (r *running) stop() error {
	r.cancel()
	<-r.ended
	return r.err
}

// startWith runs a broadcaster configured with cfg on its own connection
// to url, until the test ends; the connection is drained then.
func startWith(t testing.TB, url string, cfg Config) *running {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := natsconn.Connect(url, "broadcaster", time.Second, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsconn.Drain(nc) })
	b, err := New(cfg, nc, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Broadcaster: b, nc: nc, cancel: cancel, ended: make(chan struct{})}
	go func() {
		defer close(r.ended)
		r.err = b.Run(ctx)
	}()
	t.Cleanup(func() { _ = r.stop() })
	return r
}

// The broadcaster validates every post itself, answers requests with the
// stored seq or the error code, and stops cleanly.
func TestValidatesAndAnswers(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	_, _, stop := start(t, ns)

	client := natstest.Connect(t, ns)
	ask := func(subj, body string) proto.PostReply {
		t.Helper()
		// The first requests may race the broadcaster's subscription.
		var m *nats.Msg
		var err error
		if !servicetest.Poll(10*time.Second, func() bool { m, err = client.Request(subj, []byte(body), 5*time.Second); return err == nil }) {
			t.Fatalf("request %s: %v", subj, err)
		}
		var r proto.PostReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	tests := []struct {
		subj, body, code string
	}{
		{subject.InRoom("lobby"), `{"from":"alice","text":"hi","id":"1","edge":"e","session":"s"}`, ""},
		{subject.InRoom("lobby"), `{"from":"alice","text":"hi again","id":"1"}`, ""}, // duplicate
		{subject.InRoom("Lobby"), `{"from":"alice","text":"hi"}`, proto.CodeInvalidRoom},
		{subject.InRoom("lobby") + ".deep", `{"from":"alice","text":"hi"}`, proto.CodeInvalidRoom},
		{subject.InRoom("lobby"), `not json`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"room":"other","from":"alice","text":"hi"}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"from":"al ice","text":"hi"}`, proto.CodeInvalidUser},
		{subject.InRoom("lobby"), `{"text":"hi"}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"From":"alice","text":"hi"}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"from":"","text":"hi"}`, proto.CodeInvalidUser},
		{subject.InRoom("lobby"), `{"from":"alice","text":"  "}`, proto.CodeBadRequest},
		{subject.InRoom("lobby"), `{"from":"alice","text":"` + strings.Repeat("x", 4001) + `"}`, proto.CodeTooLong},
		{subject.InRoom("lobby"), `{"from":"alice","text":"x","id":"` + strings.Repeat("i", 65) + `"}`, proto.CodeTooLong},
		{subject.InRoom("lobby"), `{"from":"alice","to":"bob","text":"hi"}`, proto.CodeBadRequest},
		{subject.InDM("bob"), `{"from":"alice","text":"psst","id":"1"}`, ""},
		{subject.InDM("bob"), `{"from":"alice","to":"bob","text":"psst again","id":"1"}`, ""}, // duplicate
		{subject.InDM("b+b"), `{"from":"alice","text":"hi"}`, proto.CodeInvalidUser},
		{subject.InDM("bob"), `{"from":"alice","to":"carol","text":"hi"}`, proto.CodeBadRequest},
		{subject.InDM("bob"), `{"room":"lobby","from":"alice","text":"hi"}`, proto.CodeBadRequest},
		{subject.InDM("bob"), `{"from":"al ice","text":"hi"}`, proto.CodeInvalidUser},
		{subject.InDM("bob"), `{"from":"alice","text":" "}`, proto.CodeBadRequest},
		{subject.InDM("bob"), `{"from":"alice","text":"` + strings.Repeat("x", 4001) + `"}`, proto.CodeTooLong},
	}
	var first, firstDM uint64
	for i, tt := range tests {
		r := ask(tt.subj, tt.body)
		if r.Code != tt.code {
			t.Errorf("%s %s: code %q, want %q", tt.subj, tt.body, r.Code, tt.code)
		}
		switch i {
		case 0:
			first = r.Seq
		case 1:
			if r.Seq != first || !r.Duplicate {
				t.Errorf("duplicate answered %+v, want seq %d", r, first)
			}
		case 14:
			firstDM = r.Seq
		case 15:
			if r.Seq != firstDM || !r.Duplicate {
				t.Errorf("duplicate dm answered %+v, want seq %d", r, firstDM)
			}
		}
	}
	// The same id from the other party is another dm.
	if r := ask(subject.InDM("alice"), `{"from":"bob","text":"psst back","id":"1"}`); r.Code != "" || r.Duplicate || r.Seq <= firstDM {
		t.Errorf("the other party's id 1 answered %+v", r)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A stored dm is republished on its conversation's subject, the parties
// in bytewise order, with its seq, from and to as posted.
func TestDMFannedOut(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	_, _, stop := start(t, ns)
	client := natstest.Connect(t, ns)
	out := make(chan *nats.Msg, 4)
	sub, err := client.ChanSubscribe("chat.dm.>", out)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	var reply *nats.Msg
	// The first requests may race the broadcaster's subscription.
	if !servicetest.Poll(10*time.Second, func() bool {
		reply, err = client.Request(subject.InDM("alice"), []byte(`{"from":"zoe","text":"hello","id":"x"}`), 5*time.Second)
		return err == nil
	}) {
		t.Fatal(err)
	}
	var r proto.PostReply
	if err := json.Unmarshal(reply.Data, &r); err != nil || r.Seq == 0 {
		t.Fatalf("reply %s: %v", reply.Data, err)
	}
	select {
	case m := <-out:
		if m.Subject != "chat.dm.alice.zoe" || m.Header.Get(jetstream.SequenceHeader) != strconv.FormatUint(r.Seq, 10) {
			t.Fatalf("fanned out on %s with seq %s; want chat.dm.alice.zoe, %d", m.Subject, m.Header.Get(jetstream.SequenceHeader), r.Seq)
		}
		var dm proto.DM
		if err := json.Unmarshal(m.Data, &dm); err != nil || dm.Type != "dm" || dm.From != "zoe" || dm.To != "alice" || dm.Text != "hello" || dm.ID != "x" || dm.TS == 0 {
			t.Fatalf("fanned out %s (%v)", m.Data, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the dm was not fanned out")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// A store that never answers neither hangs shutdown nor crashes it: Run
// returns within the drain timeout plus finalWait, and each waiting post
// is answered unavailable.
func TestShutdownWithStoresInFlight(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	b, nc, stop := start(t, ns)

	client := natstest.Connect(t, ns)
	// Wait until posts are stored, then take the room subjects away from
	// the stream: stores now reach nobody who answers.
	for {
		m, err := client.Request(subject.InRoom("lobby"), []byte(`{"from":"bot","text":"x"}`), time.Second)
		if err == nil && strings.Contains(string(m.Data), `"seq"`) {
			break
		}
	}
	js, err := jetstream.New(client)
	if err != nil {
		t.Fatal(err)
	}
	cfg := store.StreamConfig(testRetention, 1)
	cfg.Subjects, cfg.RePublish = []string{"elsewhere.>"}, nil
	if _, err := js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	silent, err := client.Subscribe(subject.StoreRoomAll, func(*nats.Msg) {}) // swallows stores, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Unsubscribe()
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}

	const posts = 20
	replies := make(chan *nats.Msg, posts)
	inbox := nats.NewInbox()
	rsub, err := client.ChanSubscribe(inbox, replies)
	if err != nil {
		t.Fatal(err)
	}
	defer rsub.Unsubscribe()
	for i := range posts {
		if err := client.PublishRequest(subject.InRoom("lobby"), inbox, []byte(`{"from":"bot","text":"stuck `+strconv.Itoa(i)+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.Flush(); err != nil {
		t.Fatal(err)
	}
	// The acker holds the first post; the others wait in its queue.
	servicetest.WaitFor(t, 10*time.Second, fmt.Sprintf("the other %d posts queued", posts-1), func() bool { return len(b.pending) >= posts-1 })

	began := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > nc.Opts.DrainTimeout+finalWait+time.Second {
		t.Fatalf("Run took %v to stop", took)
	}
	for range posts {
		select {
		case m := <-replies:
			var r proto.PostReply
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Code != proto.CodeUnavailable {
				t.Fatalf("stuck post answered %s", m.Data)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a stuck post got no answer")
		}
	}
}

type doneFuture struct {
	ok  chan *jetstream.PubAck
	err chan error
}

func (f doneFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f doneFuture) Err() <-chan error            { return f.err }
func (f doneFuture) Msg() *nats.Msg               { return nil }

// A store acknowledged by the time its deadline passes counts as stored,
// never as timed out.
func TestAnswerPrefersAFinishedStore(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b := &Broadcaster{stopAcker: make(chan struct{}), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	b.metrics.stored = prometheus.NewCounter(prometheus.CounterOpts{Name: "stored"})
	b.metrics.duplicates = prometheus.NewCounter(prometheus.CounterOpts{Name: "duplicates"})
	b.metrics.failed = prometheus.NewCounter(prometheus.CounterOpts{Name: "failed"})
	b.metrics.store = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "store_seconds"})
	reg.MustRegister(b.metrics.stored, b.metrics.failed)
	timer := time.NewTimer(time.Hour)
	limit := time.Now().Add(-time.Millisecond) // stopping, and out of time
	for range 200 {
		f := doneFuture{ok: make(chan *jetstream.PubAck, 1), err: make(chan error)}
		f.ok <- &jetstream.PubAck{Sequence: 1}
		b.answer(pendingStore{future: f, deadline: time.Now().Add(time.Second)}, timer, &limit)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"stored": 200, "failed": 0}
	for _, mf := range mfs {
		if v := mf.GetMetric()[0].GetCounter().GetValue(); v != want[mf.GetName()] {
			t.Errorf("%s = %v, want %v", mf.GetName(), v, want[mf.GetName()])
		}
	}
	if len(mfs) != 2 {
		t.Errorf("gathered %d metrics, want stored and failed", len(mfs))
	}
}

// A broadcaster told to stop while NATS is away stops within its drain
// timeout (a second here): the drain of its subscriptions cannot finish
// without a server, and the process must still exit inside the
// contract's 10 s. Not parallel: it times the stop to within a second.
func TestStopsWhileNATSIsAway(t *testing.T) {
	ns := natstest.Start(t)
	b, nc, stop := start(t, ns)
	<-b.Serving()
	ns.Shutdown()
	ns.WaitForShutdown()
	servicetest.WaitFor(t, 10*time.Second, "the client notices", func() bool { return !nc.IsConnected() })
	stopped := time.Now()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The drain timeout and a second for the rest of the shutdown.
	if took := time.Since(stopped); took > 2*time.Second {
		t.Errorf("Run took %s to return after it was told to stop, past its drain timeout of a second", took.Round(10*time.Millisecond))
	}
}
