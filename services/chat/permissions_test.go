package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/servicetest"
	"github.com/natter-chat/natter/shared/subject"
)

// deployServer starts a NATS server from deploy/nats/nats.conf, on a
// random port with its store in a temporary folder, the passwords set.
func deployServer(t *testing.T) *server.Server {
	t.Helper()
	for _, u := range []string{"EDGE", "BROADCASTER", "PRESENCE", "OBSERVER", "BOT"} {
		t.Setenv("NATTER_"+u+"_PASSWORD", strings.ToLower(u)+"-secret")
	}
	opts, err := server.ProcessConfigFile("../../deploy/nats/nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.StoreDir = "127.0.0.1", server.RANDOM_PORT, t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats not ready")
	}
	return ns
}

// violations connects as user and collects the permission errors the
// server reports to it.
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) || strings.Contains(err.Error(), "Permissions Violation") {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
	}
}

func (v *violations) list() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.errs)
}

// presenceBucket is presence's key-value bucket, read as nc's user.
func presenceBucket(t *testing.T, nc *nats.Conn) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(context.Background(), "CHAT_PRESENCE")
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func connectAs(t *testing.T, ns *server.Server, user string, v *violations) *nats.Conn {
	t.Helper()
	opts := []nats.Option{nats.UserInfo(user, user+"-secret")}
	if v != nil {
		opts = append(opts, nats.ErrorHandler(v.handler))
	}
	nc, err := natsconn.Connect(ns.ClientURL(), user, 2*time.Second, quietLog(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { natsconn.Drain(nc) })
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatalf("%s: %v", user, err)
	}
	return nc
}

// The deploy configuration gives each service what it needs and nothing
// more: every service runs on its own user and a chat works end to end
// (rooms, history, presence, dms, typing) without one permission error;
// each user is refused what belongs to the others, and the observer
// watches everything and sees what runs (nats micro) but can change
// nothing, not even by aiming a service's answer.
func TestDeployPermissions(t *testing.T) {
	ns := deployServer(t)
	var bv, pv, ev violations
	startBroadcasterOn(t, connectAs(t, ns, "broadcaster", &bv), config.Defaults[config.Retention]())
	p := startPresenceOn(t, connectAs(t, ns, "presence", &pv), func(c *presence.Config) { c.Fresh = true })
	select {
	case <-p.Live():
	case <-time.After(wait):
		t.Fatalf("presence not live; permission errors: %v", pv.list())
	}
	e := startEdgeAt(t, ns.ClientURL(), nil, nats.UserInfo("edge", "edge-secret"), nats.ErrorHandler(ev.handler))
	// The edge registers its service as it starts, before it serves HTTP:
	// once it serves and its connection is flushed, it answers a PING.
	servicetest.GetOK(t, strings.TrimPrefix(e.url, "http://"), "/healthz")
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The observer connects as the nats CLI does, its replies on _INBOX.
	observer, err := nats.Connect(ns.ClientURL(), nats.UserInfo("observer", "observer-secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer observer.Close()
	// The observer sees what runs, as nats micro ls does.
	var running []string
	for _, p := range servicetest.Ask[micro.Ping](t, observer, micro.PingVerb, "", "", 3, wait) {
		running = append(running, p.Name)
	}
	slices.Sort(running)
	if want := []string{subject.ServiceBroadcaster, subject.ServiceEdge, subject.ServicePresence}; !slices.Equal(running, want) {
		t.Errorf("the observer sees %v running, want %v", running, want)
	}
	if st := servicetest.Ask[micro.Stats](t, observer, micro.StatsVerb, subject.ServiceEdge, "", 1, wait); len(st[0].Endpoints) != 1 {
		t.Errorf("the observer's stats of the edge: %+v", st[0])
	}
	watched := make(chan *nats.Msg, 1000)
	if _, err := observer.ChanSubscribe("chat.>", watched); err != nil {
		t.Fatal(err)
	}
	if err := observer.Flush(); err != nil {
		t.Fatal(err)
	}

	alice, bob := dial(t, e.url, "alice"), dial(t, e.url, "bob")
	alice.join("lobby")
	if j := bob.join("lobby"); j.Users == nil {
		t.Fatalf("joined without users: %s", j.raw)
	}
	seq := alice.post("lobby", "hello", "m1")
	bob.send(map[string]any{"type": "typing", "room": "lobby"})
	if ev := alice.expect("message"); ev.seq() != seq {
		t.Fatalf("alice: %s", ev.raw)
	}
	if ev := alice.expect("typing"); ev.User != "bob" {
		t.Fatalf("alice: %s", ev.raw)
	}
	dm := alice.dm("bob", "psst", "d1")
	bob.expect("message")
	bob.expectDM("alice", "bob", dm)
	if h := bob.history(map[string]any{"room": "lobby"}); len(h.Messages) != 1 {
		t.Fatalf("history: %s", h.raw)
	}
	if h := bob.history(map[string]any{"dm": "alice"}); len(h.Messages) != 1 {
		t.Fatalf("dm history: %s", h.raw)
	}
	if newest, _ := bob.dms(); newest["alice"] != dm {
		t.Fatalf("dms: %v", newest)
	}
	rejoined, j := bob.joinSince("lobby", 0)
	if len(rejoined) != 0 || j.Recovered == nil {
		t.Fatalf("rejoin: %v %s", rejoined, j.raw)
	}
	bob.send(map[string]any{"type": "who", "room": "lobby", "id": "w"})
	if w := bob.expect("who"); !slices.Equal(w.Users, []string{"alice", "bob"}) {
		t.Fatalf("who: %s", w.raw)
	}
	// Files: an upload shared in the room and read back; a bot's file,
	// put into the bucket as `nats object put` does, shared by a post.
	up := upload(t, e.url, "room=lobby&user=alice", "a.png", bytes.NewReader(pngBytes), nil)
	if up.status != http.StatusCreated {
		t.Fatalf("upload: %d %+v", up.status, up)
	}
	alice.acked(map[string]any{"type": "message", "room": "lobby", "file": up.File, "id": "f1"}, "f1")
	if ev := bob.expect("message"); ev.File == nil || ev.File.ID != up.File {
		t.Fatalf("bob: %s", ev.raw)
	}
	if resp, body := fetch(t, e.url, up.File, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, pngBytes) {
		t.Fatalf("download: %d", resp.StatusCode)
	}
	var filev violations
	botNC, err := nats.Connect(ns.ClientURL(), nats.UserInfo("bot", "bot-secret"), nats.ErrorHandler(filev.handler))
	if err != nil {
		t.Fatal(err)
	}
	defer botNC.Close()
	botJS, err := jetstream.New(botNC)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := botJS.ObjectStore(context.Background(), "CHAT_FILES")
	if err != nil {
		t.Fatalf("the bot's bucket: %v", err)
	}
	const botFile = "weekly-report-2026-12-07-chart-png"
	if _, err := obs.PutBytes(context.Background(), botFile, gifBytes); err != nil {
		t.Fatalf("the bot's put: %v", err)
	}
	reply, err := botNC.Request("chat.in.room.lobby", []byte(`{"from":"reporter","text":"this week","file":"`+botFile+`"}`), wait)
	if err != nil || !strings.Contains(string(reply.Data), `"seq"`) {
		t.Fatalf("the bot's share: %v %s", err, reply.Data)
	}
	if ev := bob.expect("message"); ev.File == nil || ev.File.ID != botFile || ev.File.Type != "image/gif" {
		t.Fatalf("bob, the bot's file: %s", ev.raw)
	}
	if resp, body := fetch(t, e.url, botFile, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(body, gifBytes) {
		t.Fatalf("download of the bot's file: %d", resp.StatusCode)
	}
	// The observer saw the traffic: posts, stored messages, dms, typing.
	seen := map[string]bool{}
	deadline := time.After(wait)
	for len(seen) < 5 {
		select {
		case m := <-watched:
			for _, kind := range []string{"chat.in.room.", "chat.in.dm.", "chat.dm.", ".msg", ".typing"} {
				if strings.HasPrefix(m.Subject, kind) || strings.HasSuffix(m.Subject, kind) {
					seen[kind] = true
				}
			}
		case <-deadline:
			t.Fatalf("the observer saw %v", seen)
		}
	}
	for name, v := range map[string]*violations{"broadcaster": &bv, "presence": &pv, "edge": &ev, "bot": &filev} {
		if errs := v.list(); len(errs) > 0 {
			t.Errorf("%s hit permission errors while working: %v", name, errs)
		}
	}

	// Each user, outside its subjects.
	forbidden := map[string]struct{ pub, sub []string }{
		"edge": {
			pub: []string{"chat.store.room.lobby", "chat.room.lobby.msg", "chat.room.lobby.presence", "chat.dm.alice.bob", "$KV.CHAT_PRESENCE.leader", "$JS.API.STREAM.DELETE.CHAT", "elsewhere",
				"$SRV.PING", "$SRV.INFO.natter-broadcaster"},
			sub: []string{"chat.in.room.>", "chat.presence.session.*", "chat.store.>", "$KV.>", "_INBOX_presence.>", "_INBOX_broadcaster.>", "_INBOX.>", ">",
				"$SRV.>", "$SRV.PING.natter-broadcaster", "$SRV.STATS.natter-presence.x", "_R_.>"},
		},
		"broadcaster": {
			pub: []string{"chat.room.lobby.msg", "chat.dm.alice.bob", "chat.room.lobby.presence", "chat.in.room.lobby", "$JS.API.STREAM.DELETE.CHAT", "$KV.CHAT_PRESENCE.leader",
				"$SRV.STATS"},
			sub: []string{"chat.room.*.*", "chat.dm.>", "chat.presence.>", "_INBOX_edge.>", "_INBOX_presence.>", ">", "$SRV.INFO.natter-edge"},
		},
		"presence": {
			pub: []string{"chat.room.lobby.msg", "chat.store.room.lobby", "chat.in.dm.bob", "chat.room.lobby.typing", "$JS.API.STREAM.DELETE.CHAT",
				"$SRV.PING.natter-edge"},
			sub: []string{"chat.room.*.*", "chat.dm.>", "chat.in.>", "_INBOX_edge.>", "_INBOX_broadcaster.>", ">", "$SRV.PING.natter-edge"},
		},
		"observer": {
			pub: []string{"chat.in.room.lobby", "chat.room.lobby.msg", "chat.store.room.lobby", "$KV.CHAT_PRESENCE.leader", "$JS.API.STREAM.INFO.CHAT", "_INBOX.x", "_R_.x"},
			sub: []string{"$KV.>", "$SRV.>", ">"},
		},
		"bot": {
			pub: []string{"chat.room.lobby.msg", "chat.store.room.lobby", "chat.room.lobby.typing", "chat.presence.session.lobby",
				"chat.presence.who.lobby", "$JS.API.STREAM.DELETE.CHAT", "$KV.CHAT_PRESENCE.leader", "_INBOX_edge.x", "$SRV.PING", "_R_.x"},
			sub: []string{"chat.>", "chat.room.*.*", "chat.dm.>", "_INBOX_edge.>", "$KV.>", ">", "$SRV.>"},
		},
	}
	for user, f := range forbidden {
		var v violations
		nc := connectAs(t, ns, user, &v)
		for _, subj := range f.pub {
			if err := nc.Publish(subj, []byte(`{}`)); err != nil {
				t.Fatal(err)
			}
		}
		for _, subj := range f.sub {
			if _, err := nc.SubscribeSync(subj); err != nil {
				t.Fatal(err)
			}
		}
		// The server answers each refusal asynchronously; wait until
		// every one came, or say which did not.
		var missing []string
		servicetest.Poll(wait, func() bool {
			_ = nc.Flush()
			errs := v.list()
			missing = missing[:0]
			for _, subj := range f.pub {
				if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, "Publish to \""+subj+"\"") }) {
					missing = append(missing, "publish "+subj)
				}
			}
			for _, subj := range f.sub {
				if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, "Subscription to \""+subj+"\"") }) {
					missing = append(missing, "subscribe "+subj)
				}
			}
			return len(missing) == 0
		})
		if len(missing) > 0 {
			t.Errorf("%s is allowed to %s", user, strings.Join(missing, ", "))
		}
	}
	// Nothing the forbidden publishes tried was stored or delivered.
	bnc := connectAs(t, ns, "broadcaster", nil)
	if n := streamCount(t, bnc, "CHAT"); n != 3 {
		t.Errorf("the room stream holds %d messages, want 3 (the chat's: hello, alice's file, the bot's)", n)
	}

	// Replies cannot be aimed: an edge that receives its own typing
	// signal cannot "answer" it on a subject it may not publish to, and
	// a post whose reply subject is a JetStream request (a purge of the
	// room stream) is stored and not answered there.
	var v violations
	enc := connectAs(t, ns, "edge", &v)
	self, err := enc.Subscribe("chat.room.lobby.typing", func(m *nats.Msg) {
		_ = m.Respond([]byte(`{"type":"message","room":"lobby","from":"admin","text":"forged"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer self.Unsubscribe()
	if err := enc.PublishRequest("chat.room.lobby.typing", "chat.room.lobby.msg", []byte(`{"type":"typing","room":"lobby","user":"bob"}`)); err != nil {
		t.Fatal(err)
	}
	if err := enc.PublishRequest("chat.in.room.lobby", "$JS.API.STREAM.PURGE.CHAT", []byte(`{"from":"mallory","text":"purge, please"}`)); err != nil {
		t.Fatal(err)
	}
	// Each service answers only inboxes, even where its user may publish:
	// the broadcaster's answer aimed at the room's store subject would be
	// stored as a message, presence's who answer aimed at its own bucket
	// would be a key, the edge's sync answer aimed at a room's typing
	// subject would reach the room.
	if err := enc.PublishRequest("chat.in.room.lobby", "chat.store.room.lobby", []byte(`{"from":"mallory","text":"store my answer"}`)); err != nil {
		t.Fatal(err)
	}
	if err := enc.PublishRequest("chat.presence.who.lobby", "$KV.CHAT_PRESENCE.aimed", nil); err != nil {
		t.Fatal(err)
	}
	// The typing signal published above is through before the watcher
	// listens there: only an answer could reach it.
	if err := enc.Flush(); err != nil {
		t.Fatal(err)
	}
	// It listens in the chat's account: the observer's own account
	// receives its own aimed answers, where they harm nothing.
	watcher := connectAs(t, ns, "edge", nil)
	typing := make(chan *nats.Msg, 10)
	if _, err := watcher.ChanSubscribe("chat.room.lobby.typing", typing); err != nil {
		t.Fatal(err)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	pnc := connectAs(t, ns, "presence", nil)
	if err := pnc.PublishRequest(subject.EdgeSync(e.ID()), "chat.room.lobby.typing", nil); err != nil {
		t.Fatal(err)
	}
	// The NATS services framework answers any reply subject; the
	// observer's account gets a reply subject of the server's own for each
	// request, so its aimed requests are answered in its own account.
	for svc, aim := range map[string]string{
		subject.ServiceBroadcaster: "chat.store.room.lobby",
		subject.ServicePresence:    "$KV.CHAT_PRESENCE.aimed",
		subject.ServiceEdge:        "chat.room.lobby.typing",
	} {
		req, _ := micro.ControlSubject(micro.InfoVerb, svc, "")
		if err := observer.PublishRequest(req, aim, nil); err != nil {
			t.Fatal(err)
		}
		// Asked again after it, a service has answered the aimed one.
		servicetest.Ask[micro.Info](t, observer, micro.InfoVerb, svc, "", 1, wait)
	}
	// A request after each, on the same subject, is answered once its
	// service has handled what came before it.
	if _, err := enc.Request("chat.in.room.lobby", []byte(`{"from":"bot","text":"after"}`), wait); err != nil {
		t.Fatal(err)
	}
	if _, err := enc.Request("chat.presence.who.lobby", nil, wait); err != nil {
		t.Fatal(err)
	}
	if _, err := pnc.Request(subject.EdgeSync(e.ID()), nil, wait); err != nil {
		t.Fatal(err)
	}
	// Answers published before those are stored, or delivered, by now:
	// a stream takes what one connection sends in order (the put below
	// is acknowledged after the aimed answer would have been stored), and
	// the watcher's flush returns after what was sent to it before.
	kv := presenceBucket(t, pnc)
	if _, err := kv.Put(context.Background(), "probe", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(context.Background(), "aimed"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("presence answered who into its bucket: %v", err)
	}
	if n := streamCount(t, bnc, "CHAT"); n != 6 {
		t.Errorf("the room stream holds %d messages after the aimed replies, want 6 (not purged, no answer stored)", n)
	}
	if err := watcher.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-typing:
		t.Errorf("the edge answered a sync or an info request on a room's typing subject: %s", m.Data)
	default:
	}
	servicetest.WaitFor(t, wait, "the self-addressed answer refused", func() bool {
		_ = enc.Flush()
		return slices.ContainsFunc(v.list(), func(e string) bool { return strings.Contains(e, `Publish to "chat.room.lobby.msg"`) })
	})

	// A bot posts in a room and in a dm as nats req does (replies on
	// _INBOX.), and gets its seqs.
	var botv violations
	bot, err := nats.Connect(ns.ClientURL(), nats.UserInfo("bot", "bot-secret"), nats.ErrorHandler(botv.handler))
	if err != nil {
		t.Fatal(err)
	}
	defer bot.Close()
	for subj, post := range map[string]string{
		subject.InRoom("lobby"): `{"from":"bot","text":"hello from a bot","id":"b1"}`,
		subject.InDM("alice"):   `{"from":"bot","text":"psst from a bot","id":"b2"}`,
	} {
		m, err := bot.Request(subj, []byte(post), wait)
		if err != nil {
			t.Fatalf("bot post on %s: %v", subj, err)
		}
		if !strings.HasPrefix(string(m.Data), `{"seq":`) {
			t.Errorf("bot post on %s answered %s", subj, m.Data)
		}
	}
	if errs := botv.list(); len(errs) > 0 {
		t.Errorf("the bot hit permission errors while posting: %v", errs)
	}
}
