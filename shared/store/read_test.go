package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/subject"
)

// fill stores n messages in each of rooms, interleaved, and returns the
// seqs of each room in order.
func fill(t *testing.T, js jetstream.JetStream, rooms []string, n int) map[string][]uint64 {
	t.Helper()
	ctx := context.Background()
	seqs := make(map[string][]uint64)
	for i := range n {
		for _, room := range rooms {
			ack, err := js.Publish(ctx, subject.StoreRoom(room), fmt.Appendf(nil, `{"type":"message","room":%q,"text":"%d"}`, room, i))
			if err != nil {
				t.Fatal(err)
			}
			seqs[room] = append(seqs[room], ack.Sequence)
		}
	}
	return seqs
}

func seqsOf(msgs []Stored) []uint64 {
	out := make([]uint64, len(msgs))
	for i, m := range msgs {
		out[i] = m.Seq
	}
	return out
}

func TestReads(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	js, err := jetstream.New(natstest.Connect(t, ns))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := EnsureStream(ctx, js, config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 30}, 1); err != nil {
		t.Fatal(err)
	}
	if ok, err := NothingDropped(ctx, js, Room("x")); err != nil || !ok {
		t.Fatalf("new stream: NothingDropped = %v, %v", ok, err)
	}
	all := fill(t, js, []string{"a", "b", "c"}, 120) // a keeps its newest 100
	a := all["a"][20:]

	tests := []struct {
		name     string
		read     func() ([]Stored, bool, error)
		want     []uint64
		wantMore bool
	}{
		{"after 0", func() ([]Stored, bool, error) { return After(ctx, js, Room("a"), 0, 10) }, a[:10], true},
		{"after the 50th", func() ([]Stored, bool, error) { return After(ctx, js, Room("a"), a[49], 10) }, a[50:60], true},
		{"after, to the end", func() ([]Stored, bool, error) { return After(ctx, js, Room("a"), a[94], 10) }, a[95:], false},
		{"after the newest", func() ([]Stored, bool, error) { return After(ctx, js, Room("a"), a[99], 10) }, nil, false},
		{"newest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), 0, 10) }, a[90:], true},
		{"before the 50th", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), a[49], 10) }, a[39:49], true},
		{"before, to the beginning", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), a[5], 10) }, a[:5], false},
		{"before the oldest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), a[0], 10) }, nil, false},
		{"exactly the rest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), a[10], 10) }, a[:10], false},
		{"before beyond the newest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("a"), 1<<53, 10) }, a[90:], true},
		{"empty room, newest", func() ([]Stored, bool, error) { return Before(ctx, js, Room("none"), 0, 10) }, nil, false},
		{"empty room, after", func() ([]Stored, bool, error) { return After(ctx, js, Room("none"), 0, 10) }, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			msgs, more, err := tc.read()
			if err != nil {
				t.Fatal(err)
			}
			if got := seqsOf(msgs); !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) || more != tc.wantMore {
				t.Fatalf("got %v more=%v, want %v more=%v", got, more, tc.want, tc.wantMore)
			}
			for _, m := range msgs {
				if len(m.Data) == 0 || m.Data[0] != '{' {
					t.Fatalf("payload %q", m.Data)
				}
			}
		})
	}
	if first, err := First(ctx, js, Room("a")); err != nil || first != a[0] {
		t.Fatalf("First = %d, %v; want %d", first, err, a[0])
	}
	if ok, err := NothingDropped(ctx, js, Room("x")); err != nil || ok {
		t.Fatalf("after retention dropped messages: NothingDropped = %v, %v", ok, err)
	}
	// A read cut short says so rather than answering "nothing".
	expired, cancelExpired := context.WithTimeout(ctx, -time.Second)
	defer cancelExpired()
	if msgs, _, err := After(expired, js, Room("a"), 0, 10); err == nil {
		t.Fatalf("After with an expired context: %d messages and no error", len(msgs))
	}
	if _, _, err := Before(expired, js, Room("a"), 0, 10); err == nil {
		t.Fatal("Before with an expired context: no error")
	}
}

// Dms are kept per conversation in their own stream: both parties find a
// conversation under the same log, a user's conversations are listed with
// their newest dm, and a note to oneself is listed once.
func TestConversations(t *testing.T) {
	t.Parallel()
	js := dmStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if convs, err := Conversations(ctx, js, "alice"); err != nil || len(convs) != 0 {
		t.Fatalf("no dms yet: %v, %v", convs, err)
	}
	newest := make(map[string]uint64)
	for i, d := range []struct{ from, to string }{
		{"alice", "bob"}, {"bob", "alice"}, {"carol", "alice"}, {"alice", "alice"}, {"bob", "carol"}, {"alice", "bob"},
	} {
		ack, err := js.Publish(ctx, subject.StoreDM(d.from, d.to),
			fmt.Appendf(nil, `{"type":"dm","from":%q,"to":%q,"text":"%d","ts":%d}`, d.from, d.to, i, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		a, b := subject.Pair(d.from, d.to)
		newest[a+"."+b] = ack.Sequence
	}
	convs, err := Conversations(ctx, js, "alice")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(convs, func(x, y Conversation) int { return strings.Compare(x.With, y.With) })
	want := []Conversation{
		{With: "alice", Seq: newest["alice.alice"], TS: 1003},
		{With: "bob", Seq: newest["alice.bob"], TS: 1005},
		{With: "carol", Seq: newest["alice.carol"], TS: 1002},
	}
	if !slices.Equal(convs, want) {
		t.Fatalf("alice's conversations: %+v, want %+v", convs, want)
	}
	// Either party reads the same log, forward and back.
	ab, _, err := After(ctx, js, Between("bob", "alice"), 0, 10)
	if err != nil || len(ab) != 3 {
		t.Fatalf("alice and bob, after 0: %d dms, %v", len(ab), err)
	}
	back, more, err := Before(ctx, js, Between("alice", "bob"), 0, 2)
	if err != nil || !more || !slices.Equal(seqsOf(back), seqsOf(ab[1:])) {
		t.Fatalf("alice and bob, newest 2: %v, more %v, %v", seqsOf(back), more, err)
	}
	if last, err := LastSeq(ctx, js.Conn(), Between("alice", "bob")); err != nil || last != newest["alice.bob"] {
		t.Fatalf("LastSeq of alice and bob = %d, %v", last, err)
	}
	all := Log{Stream: subject.DMStream, Subject: subject.StoreDMAny, Name: "dms"}
	if last, err := LastSeq(ctx, js.Conn(), all); err != nil || last != newest["alice.bob"] {
		t.Fatalf("LastSeq of every dm = %d, %v; want %d", last, err, newest["alice.bob"])
	}
	// The room stream does not hold them.
	if msgs, _, err := After(ctx, js, Room("alice"), 0, 10); err != nil || len(msgs) != 0 {
		t.Fatalf("room read saw dms: %d, %v", len(msgs), err)
	}
}

// A user with more conversations than one multi-subject read takes gets
// them all.
func TestConversationsMany(t *testing.T) {
	t.Parallel()
	js := dmStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = maxConversations*2 + 10
	newest := make(map[string]uint64, n)
	var acks []jetstream.PubAckFuture
	for i := range n {
		from := fmt.Sprintf("u%04d", i)
		f, err := js.PublishAsync(subject.StoreDM(from, "alice"),
			fmt.Appendf(nil, `{"type":"dm","from":%q,"to":"alice","text":"hi","ts":%d}`, from, 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for i, f := range acks {
		select {
		case ack := <-f.Ok():
			newest[fmt.Sprintf("u%04d", i)] = ack.Sequence
		case err := <-f.Err():
			t.Fatal(err)
		case <-ctx.Done():
			t.Fatal("store not acknowledged")
		}
	}
	convs, err := Conversations(ctx, js, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(convs) != n {
		t.Fatalf("%d conversations, want %d", len(convs), n)
	}
	for _, c := range convs {
		if newest[c.With] != c.Seq {
			t.Fatalf("conversation with %s: seq %d, want %d", c.With, c.Seq, newest[c.With])
		}
	}
}

// dmStore is a JetStream with the streams made, on a server of the test's.
func dmStore(t *testing.T) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, natstest.Start(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := EnsureStream(ctx, js, config.Retention{MaxMsgs: 100, MaxAge: time.Hour, MaxBytes: 1 << 30}, 1); err != nil {
		t.Fatal(err)
	}
	return js
}
