package store

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStreamRepublishesWithSeqAndDeduplicates(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	nc := natstest.Connect(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := LastSeq(ctx, nc, Room("lobby")); !errors.Is(err, ErrNoStream) {
		t.Fatalf("before the stream exists: %v, want ErrNoStream", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := config.Retention{MaxMsgs: 3, MaxAge: time.Hour, MaxBytes: 1 << 20}
	if _, err := EnsureStream(ctx, js, r, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureStream(ctx, js, r, 1); err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	if seq, err := LastSeq(ctx, nc, Room("lobby")); err != nil || seq != 0 {
		t.Fatalf("empty room: %d, %v", seq, err)
	}
	live := make(chan *nats.Msg, 10)
	sub, err := nc.ChanSubscribe(subject.RoomMsg("lobby"), live)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	pub := func(id string) *jetstream.PubAck {
		m := nats.NewMsg(subject.StoreRoom("lobby"))
		m.Data = []byte(`{"type":"message"}`)
		m.Header.Set(jetstream.MsgIDHeader, MsgID("lobby", "alice", id))
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		return ack
	}
	a1 := pub("a\nb") // an id with a newline still makes a one-line header
	a2 := pub("a\nb")
	if !a2.Duplicate || a2.Sequence != a1.Sequence {
		t.Fatalf("repeat: %+v, want duplicate of %d", a2, a1.Sequence)
	}
	select {
	case m := <-live:
		if m.Header.Get(jetstream.SequenceHeader) != "1" {
			t.Fatalf("republished with headers %v", m.Header)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing republished")
	}
	for _, id := range []string{"2", "3", "4"} {
		pub(id)
	}
	if seq, err := LastSeq(ctx, nc, Room("lobby")); err != nil || seq != 4 {
		t.Fatalf("last seq %d, %v; want 4", seq, err)
	}
	s, _ := js.Stream(ctx, subject.Stream)
	info, _ := s.Info(ctx)
	if info.State.Msgs != 3 {
		t.Fatalf("%d messages kept, want the newest 3", info.State.Msgs)
	}
}
