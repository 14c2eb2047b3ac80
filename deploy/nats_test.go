package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// natsClient connects to the mesh's published NATS port as user, the way
// an operator's tool does: replies on _INBOX. (as nats req), reconnecting
// for as long as it runs. That port is nats-1's only: while nats-1 is
// down or cut off, the bot pauses and the observer misses what passes.
func natsClient(t *testing.T, m *mesh, user string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(m.natsURL(), nats.UserInfo(user, m.password[user]), nats.Name("mesh-test-"+user),
		nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true), nats.ReconnectWait(250*time.Millisecond),
		nats.PingInterval(2*time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsconn.Drain(nc) })
	if err := nc.FlushTimeout(30 * time.Second); err != nil {
		t.Fatalf("nats as %s: %v", user, err)
	}
	return nc
}

// bot posts in a room on NATS, as the README shows a bot doing: a request
// on chat.in.room.<room> with its own id, answered with the seq; a post
// that gets no answer goes out again with the same id.
type bot struct {
	nc      *nats.Conn
	room    string
	every   time.Duration
	posting atomic.Bool
	done    chan struct{}
	stop    context.CancelFunc

	mu       sync.Mutex
	acked    []post
	pending  *post // guarded by mu
	problems []string
}

func startBot(nc *nats.Conn, room string, every time.Duration) *bot {
	ctx, cancel := context.WithCancel(context.Background())
	b := &bot{nc: nc, room: room, every: every, done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(b.done)
		b.run(ctx)
	}()
	return b
}

func (b *bot) close() {
	b.stop()
	<-b.done
}

func (b *bot) run(ctx context.Context) {
	tick := time.NewTicker(b.every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		b.mu.Lock()
		p := b.pending
		if p == nil && b.posting.Load() {
			n := len(b.acked) + 1
			p = &post{room: b.room, from: "bot", id: fmt.Sprintf("bot-%d", n), text: fmt.Sprintf("bot beeps %d", n), sent: time.Now()}
			b.pending = p
		}
		b.mu.Unlock()
		if p == nil {
			continue
		}
		body, _ := json.Marshal(proto.Post{From: p.from, Text: p.text, ID: p.id})
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		msg, err := b.nc.RequestWithContext(rctx, subject.InRoom(b.room), body)
		cancel()
		if err != nil {
			continue // NATS or the broadcasters are away: the same id again
		}
		var reply proto.PostReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil || (reply.Seq == 0 && reply.Code != "unavailable") {
			b.mu.Lock()
			b.problems = append(b.problems, fmt.Sprintf("bot post %s answered %s", p.id, msg.Data))
			b.pending = nil
			b.mu.Unlock()
			continue
		}
		if reply.Seq == 0 {
			continue
		}
		b.mu.Lock()
		p.seq, p.acked = reply.Seq, time.Now()
		b.acked = append(b.acked, *p)
		b.pending = nil
		b.mu.Unlock()
	}
}

func (b *bot) inFlight() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pending != nil
}

func (b *bot) problemsSeen() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.problems
	b.problems = nil
	return p
}

func (b *bot) posts() []post {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]post(nil), b.acked...)
}

// edges follows the sessions the edges report to presence (the observer
// may read every chat. subject), so the test knows which edge serves a
// session.
type edges struct {
	mu   sync.Mutex
	edge map[string]string // session → edge; guarded by mu
	user map[string]string // user → the edge of its newest session; guarded by mu
}

func watchEdges(t *testing.T, observer *nats.Conn) *edges {
	t.Helper()
	e := &edges{edge: map[string]string{}, user: map[string]string{}}
	_, err := observer.Subscribe(subject.PresenceSessionAll, func(msg *nats.Msg) {
		var r proto.SessionReport
		if json.Unmarshal(msg.Data, &r) == nil && r.Event == proto.EventJoin {
			e.mu.Lock()
			e.edge[r.Session] = r.Edge
			e.user[r.User] = r.Edge
			e.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := observer.Flush(); err != nil {
		t.Fatal(err)
	}
	return e
}

// of is the edge that serves session, "" while unknown.
func (e *edges) of(session string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.edge[session]
}

// ofUser is the edge of user's newest session, "" while unknown.
func (e *edges) ofUser(user string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.user[user]
}
