package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// member is one chat user on one WebSocket through the proxy, behaving as
// a careful client does (the page does the same): it reconnects by
// itself, rejoins its rooms with since, recovers its dms with dms and
// history after, retries a post that got no ack with the same id, and
// records every event it gets, so the test can tell what reached it, what
// twice and in which order.
type member struct {
	name  string
	url   string
	rooms []string
	dmTo  string        // whom it sends dms, "" for nobody
	every time.Duration // between two of its room posts; dms every third

	posting atomic.Bool     // new posts go out (a pending one is retried regardless)
	whoReq  chan whoRequest // asks run for a who
	done    chan struct{}   // closed when run returns
	stop    context.CancelFunc

	mu        sync.Mutex
	views     map[string]*logView // by viewKey; guarded by mu
	acked     []post              // its posts, once acked
	pending   *post               // its post in flight, until acked
	sessions  []string            // its sessions, oldest first
	connected bool                // joined and recovered on the current session
	presence  []presenceSeen
	problems  []string // errors it did not expect
	unrecov   int      // joins answered recovered: false
}

// wire is any event of the protocol, as a client reads it.
type wire struct {
	Type          string            `json:"type"`
	Room          string            `json:"room"`
	DM            string            `json:"dm"`
	From          string            `json:"from"`
	To            string            `json:"to"`
	Text          string            `json:"text"`
	ID            json.RawMessage   `json:"id"`
	Seq           uint64            `json:"seq"`
	User          string            `json:"user"`
	Session       string            `json:"session"`
	Event         string            `json:"event"`
	Users         []string          `json:"users"`
	Recovered     *bool             `json:"recovered"`
	More          bool              `json:"more"`
	Messages      []json.RawMessage `json:"messages"`
	Conversations []struct {
		With string `json:"with"`
		Seq  uint64 `json:"seq"`
	} `json:"conversations"`
	Code    string `json:"code"`
	Message string `json:"message"`

	at time.Time // when it was read
}

// id is the event's id as a string ("" when it has none or another kind).
func (w wire) id() string {
	var s string
	_ = json.Unmarshal(w.ID, &s)
	return s
}

// post is one message or dm that its sender saw acked.
type post struct {
	room     string // a room message; "" for a dm
	from, to string // to: the dm's recipient
	id, text string
	seq      uint64
	sent     time.Time // its first try
	acked    time.Time
}

// viewKey names a room's or a conversation's log in a member's view.
func viewKey(room, other string) string {
	if room != "" {
		return "room:" + room
	}
	return "dm:" + other
}

// key is the log p belongs to, seen from member me.
func (p post) key(me string) string {
	if p.room != "" {
		return viewKey(p.room, "")
	}
	if p.from == me {
		return viewKey("", p.to)
	}
	return viewKey("", p.from)
}

// logView is what a member has of one room or conversation.
type logView struct {
	since    uint64 // a room: the seq it joined at; what came before is not its
	joined   bool
	pushed   map[uint64]time.Time // sent by the server as events, when
	fetched  map[uint64]bool      // read with history
	content  map[uint64]string    // from and id, to check against the acks
	first    map[string]uint64    // from and id: the first seq seen with it
	last     uint64               // the newest pushed
	newest   uint64               // the newest pushed or fetched
	dup      int                  // a seq pushed again
	stored2  int                  // a post seen under a second seq: stored twice
	disorder int                  // a seq pushed below one pushed before
}

// record notes that seq holds the post content ("from id"); a post seen
// under a second seq was stored twice.
func (v *logView) record(seq uint64, content string) {
	if _, seen := v.content[seq]; !seen {
		if first, ok := v.first[content]; !ok {
			v.first[content] = seq
		} else if first != seq {
			v.stored2++
		}
	}
	v.content[seq] = content
}

type presenceSeen struct {
	at                time.Time
	room, event, user string
}

type whoRequest struct {
	room  string
	reply chan []string // nil users: refused
}

func newMember(base, name, dmTo string, rooms []string, every time.Duration) *member {
	return &member{
		name: name, url: base + "?user=" + url.QueryEscape(name), rooms: rooms, dmTo: dmTo, every: every,
		whoReq: make(chan whoRequest), done: make(chan struct{}), views: map[string]*logView{},
	}
}

// start runs the member until close.
func (m *member) start() {
	ctx, cancel := context.WithCancel(context.Background())
	m.stop = cancel
	go func() {
		defer close(m.done)
		m.run(ctx)
	}()
}

// close ends the member and waits for it.
func (m *member) close() {
	m.stop()
	<-m.done
}

// run connects again and again until ctx ends, with a backoff of 100 ms
// doubling to 1 s, jittered, as the page does.
func (m *member) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		started := time.Now()
		err := m.connectOnce(ctx)
		m.mu.Lock()
		m.connected = false
		m.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) > 5*time.Second {
			backoff = 100 * time.Millisecond
		}
		_ = err // the reason is in the mesh's logs; the member just comes back
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// sess is one connection of a member, owned by run.
type sess struct {
	m       *member
	conn    *websocket.Conn
	events  chan wire
	sent    bool // the pending post went out on this connection
	sentAt  time.Time
	retryAt time.Time
	whoWait chan []string
}

var errClosed = errors.New("connection closed")

// connectOnce is one connection: connect, recover, then chat until it fails.
func (m *member) connectOnce(ctx context.Context) error {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	conn, _, err := d.DialContext(ctx, m.url, nil)
	if err != nil {
		return err
	}
	// What the member had of each conversation before this connection:
	// a live dm that arrives while it joins its rooms must not hide the
	// ones it missed while away.
	had := m.conversations()
	s := &sess{m: m, conn: conn, events: make(chan wire, 4096)}
	quit := make(chan struct{})
	var reader sync.WaitGroup
	reader.Go(func() { s.read(quit) })
	defer func() {
		_ = conn.Close()
		close(quit)
		reader.Wait()
	}()

	w, err := s.await(func(w wire) bool { return w.Type == "welcome" })
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.sessions = append(m.sessions, w.Session)
	m.mu.Unlock()
	for _, room := range m.rooms {
		if err := s.join(ctx, room); err != nil {
			return err
		}
	}
	if err := s.recoverDMs(ctx, had); err != nil {
		return err
	}
	m.mu.Lock()
	m.connected = true
	m.mu.Unlock()

	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case w, ok := <-s.events:
			if !ok {
				return errClosed
			}
			s.handle(w)
		case now := <-tick.C:
			if err := s.maybePost(now); err != nil {
				return err
			}
		case r := <-m.whoReq:
			if s.whoWait != nil {
				r.reply <- nil
				continue
			}
			s.whoWait = r.reply
			if err := s.send(map[string]any{"type": "who", "room": r.room, "id": "who"}); err != nil {
				return err
			}
		case <-ctx.Done():
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
			return ctx.Err()
		}
	}
}

// read splits frames into events until the connection fails.
func (s *sess) read(quit <-chan struct{}) {
	defer close(s.events)
	for {
		_, data, err := s.conn.ReadMessage()
		if err != nil {
			return
		}
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var w wire
			if err := json.Unmarshal(line, &w); err != nil {
				s.m.problem("an event that is not JSON: %q", line)
				continue
			}
			w.at = time.Now()
			select {
			case s.events <- w:
			case <-quit:
				return
			}
		}
	}
}

func (s *sess) send(obj map[string]any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return s.conn.WriteMessage(websocket.TextMessage, b)
}

// await handles events until one satisfies pred, which it returns. An
// answer that does not come within 20 s ends the connection: run then
// connects again.
func (s *sess) await(pred func(wire) bool) (wire, error) {
	limit := time.After(20 * time.Second)
	for {
		select {
		case w, ok := <-s.events:
			if !ok {
				return wire{}, errClosed
			}
			s.handle(w)
			if pred(w) {
				return w, nil
			}
		case <-limit:
			return wire{}, errors.New("no answer within 20 s")
		}
	}
}

// request sends req (which carries id) and awaits the event of type want
// that pred accepts, or the error with that id. It tries again after an
// unavailable.
func (s *sess) request(ctx context.Context, req map[string]any, want string, pred func(wire) bool) (wire, error) {
	id := req["id"].(string)
	for {
		if err := s.send(req); err != nil {
			return wire{}, err
		}
		w, err := s.await(func(w wire) bool {
			return (w.Type == want && pred(w)) || (w.Type == "error" && w.id() == id)
		})
		if err != nil {
			return wire{}, err
		}
		if w.Type == want {
			return w, nil
		}
		if w.Code != "unavailable" {
			return wire{}, fmt.Errorf("%s refused: %s %s", id, w.Code, w.Message)
		}
		select {
		case <-ctx.Done():
			return wire{}, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// join joins room, with since once it has seen the room, and reads with
// history what a replay could not give (recovered: false).
func (s *sess) join(ctx context.Context, room string) error {
	m := s.m
	key := viewKey(room, "")
	m.mu.Lock()
	v := m.view(key)
	joined, newest := v.joined, v.newest
	m.mu.Unlock()
	req := map[string]any{"type": "join", "room": room, "id": "join-" + room}
	if joined {
		req["since"] = newest
	}
	w, err := s.request(ctx, req, "joined", func(w wire) bool { return w.Room == room })
	if err != nil {
		return err
	}
	m.mu.Lock()
	if !v.joined {
		v.joined, v.since = true, w.Seq
		v.newest = max(v.newest, w.Seq)
	}
	unrecovered := joined && (w.Recovered == nil || !*w.Recovered)
	if unrecovered {
		m.unrecov++
	}
	m.mu.Unlock()
	if unrecovered {
		return s.fetch(ctx, map[string]any{"room": room}, key, newest)
	}
	return nil
}

// recoverDMs asks for the member's conversations and reads with history
// every dm newer than what it had of each before it connected.
func (s *sess) recoverDMs(ctx context.Context, had map[string]uint64) error {
	w, err := s.request(ctx, map[string]any{"type": "dms", "id": "dms"}, "dms", func(wire) bool { return true })
	if err != nil {
		return err
	}
	for _, c := range w.Conversations {
		key := viewKey("", c.With)
		have := had[key]
		if c.Seq > have {
			if err := s.fetch(ctx, map[string]any{"dm": c.With}, key, have); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetch reads a room's or a conversation's messages after after with
// history, page by page.
func (s *sess) fetch(ctx context.Context, target map[string]any, key string, after uint64) error {
	for {
		req := map[string]any{"type": "history", "after": after, "limit": 200, "id": "history-" + key}
		for k, v := range target {
			req[k] = v
		}
		w, err := s.request(ctx, req, "history", func(w wire) bool { return w.Room == target["room"] || w.DM == target["dm"] })
		if err != nil {
			return err
		}
		s.m.mu.Lock()
		v := s.m.view(key)
		for _, raw := range w.Messages {
			var msg wire
			if err := json.Unmarshal(raw, &msg); err != nil {
				s.m.problemLocked("a history message that is not JSON: %s", raw)
				continue
			}
			v.fetched[msg.Seq] = true
			v.record(msg.Seq, msg.From+" "+msg.id())
			v.newest = max(v.newest, msg.Seq)
			after = max(after, msg.Seq)
		}
		s.m.mu.Unlock()
		if !w.More || len(w.Messages) == 0 {
			return nil
		}
	}
}

// handle records one event.
func (s *sess) handle(w wire) {
	m := s.m
	switch w.Type {
	case "message":
		m.pushed(viewKey(w.Room, ""), w)
	case "dm":
		other := w.From
		if other == m.name {
			other = w.To
		}
		m.pushed(viewKey("", other), w)
	case "ack":
		m.mu.Lock()
		if p := m.pending; p != nil && p.id == w.id() {
			p.seq, p.acked = w.Seq, w.at
			m.acked = append(m.acked, *p)
			m.pending = nil
		}
		m.mu.Unlock()
	case "presence":
		m.mu.Lock()
		m.presence = append(m.presence, presenceSeen{w.at, w.Room, w.Event, w.User})
		m.mu.Unlock()
	case "who":
		if s.whoWait != nil {
			s.whoWait <- w.Users
			s.whoWait = nil
		}
	case "error":
		id := w.id()
		m.mu.Lock()
		pending := m.pending != nil && m.pending.id == id
		m.mu.Unlock()
		switch {
		case pending && w.Code == "unavailable":
			s.sent, s.retryAt = false, time.Now().Add(300*time.Millisecond)
		case id == "who" && s.whoWait != nil:
			s.whoWait <- nil
			s.whoWait = nil
		case w.Code == "unavailable" && id != "":
			// a request's, answered by request's own loop
		default:
			m.problem("error %s for %q: %s", w.Code, id, w.Message)
		}
	}
}

// maybePost sends the pending post again when it is due, or a new one
// when posting is on and its time has come.
func (s *sess) maybePost(now time.Time) error {
	m := s.m
	m.mu.Lock()
	p := m.pending
	if p == nil && m.posting.Load() {
		n := len(m.acked) + 1
		if m.dmTo != "" && n%3 == 0 {
			p = &post{from: m.name, to: m.dmTo, id: fmt.Sprintf("%s-%d", m.name, n), text: fmt.Sprintf("psst %d from %s", n, m.name)}
		} else {
			p = &post{room: m.rooms[0], from: m.name, id: fmt.Sprintf("%s-%d", m.name, n), text: fmt.Sprintf("%s says %d", m.name, n)}
		}
		if last := m.lastPostAt(); now.Sub(last) < m.every {
			p = nil
		} else {
			m.pending = p
			s.sent = false
		}
	}
	m.mu.Unlock()
	if p == nil {
		return nil
	}
	// The edge answers within its post timeout (ack or unavailable); a
	// post that got neither on a live connection goes out again later.
	if s.sent && now.Sub(s.sentAt) < 10*time.Second {
		return nil
	}
	if !s.sent && now.Before(s.retryAt) {
		return nil
	}
	if p.sent.IsZero() {
		m.mu.Lock()
		p.sent = now
		m.mu.Unlock()
	}
	req := map[string]any{"type": "message", "room": p.room, "text": p.text, "id": p.id}
	if p.room == "" {
		req = map[string]any{"type": "dm", "to": p.to, "text": p.text, "id": p.id}
	}
	s.sent, s.sentAt = true, now
	return s.send(req)
}

// lastPostAt is when its newest post was acked; mu held.
func (m *member) lastPostAt() time.Time {
	if len(m.acked) == 0 {
		return time.Time{}
	}
	return m.acked[len(m.acked)-1].acked
}

// view returns the log view of key, made on first use; mu held.
func (m *member) view(key string) *logView {
	v := m.views[key]
	if v == nil {
		v = &logView{pushed: map[uint64]time.Time{}, fetched: map[uint64]bool{}, content: map[uint64]string{}, first: map[string]uint64{}}
		m.views[key] = v
	}
	return v
}

// conversations is the newest seq the member has of each conversation.
func (m *member) conversations() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	had := map[string]uint64{}
	for key, v := range m.views {
		if strings.HasPrefix(key, "dm:") {
			had[key] = v.newest
		}
	}
	return had
}

// pushed records an event the server sent of a room or conversation.
func (m *member) pushed(key string, w wire) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.view(key)
	switch {
	case !v.pushed[w.Seq].IsZero():
		v.dup++
	case w.Seq <= v.last:
		v.disorder++
	}
	v.pushed[w.Seq] = w.at
	v.record(w.Seq, w.From+" "+w.id())
	v.last = max(v.last, w.Seq)
	v.newest = max(v.newest, w.Seq)
}

func (m *member) problem(format string, args ...any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.problemLocked(format, args...)
}

func (m *member) problemLocked(format string, args ...any) {
	if len(m.problems) < 20 {
		m.problems = append(m.problems, fmt.Sprintf(format, args...))
	}
}

// problemsSeen is what went wrong that a client would not expect, and
// forgets it.
func (m *member) problemsSeen() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.problems
	m.problems = nil
	return p
}

// who asks the server who is in room, on the member's connection.
func (m *member) who(ctx context.Context, room string) ([]string, error) {
	r := whoRequest{room: room, reply: make(chan []string, 1)}
	select {
	case m.whoReq <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case users := <-r.reply:
		if users == nil {
			return nil, errors.New("who refused")
		}
		sort.Strings(users)
		return users, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// steady reports whether the member is connected, joined and recovered.
func (m *member) steady() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.connected
}

// inFlight reports whether a post of the member awaits its ack.
func (m *member) inFlight() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending != nil
}

// session is the member's current (or last) session id.
func (m *member) session() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.sessions) == 0 {
		return ""
	}
	return m.sessions[len(m.sessions)-1]
}

// firstPushOf is when the member was first sent one of the messages of
// key with the seqs given.
func (m *member) firstPushOf(key string, seqs []uint64) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var first time.Time
	pushed := m.view(key).pushed
	for _, s := range seqs {
		if at, ok := pushed[s]; ok && (first.IsZero() || at.Before(first)) {
			first = at
		}
	}
	return first, !first.IsZero()
}

// status says where the member is, for a failure's message.
func (m *member) status() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	session := ""
	if len(m.sessions) > 0 {
		session = m.sessions[len(m.sessions)-1]
	}
	var newest uint64
	for _, v := range m.views {
		newest = max(newest, v.last)
	}
	pending := "none"
	if m.pending != nil {
		pending = m.pending.id
	}
	return fmt.Sprintf("%s: connected %v, session %s (%d so far), newest seq pushed %d, post in flight %s",
		m.name, m.connected, session, len(m.sessions), newest, pending)
}

// has reports whether the member has p in its view, as p was acked.
func (m *member) has(p post) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.views[p.key(m.name)]
	if v == nil {
		return false
	}
	return v.content[p.seq] == p.from+" "+p.id
}

// expects reports whether p must reach the member: a message of a room it
// had joined before p was stored, or a dm to or from it.
func (m *member) expects(p post) bool {
	if p.room == "" {
		return p.from == m.name || p.to == m.name
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.views[p.key(m.name)]
	return v != nil && v.joined && p.seq > v.since
}

// faults counts what the member got wrong from the server: messages
// pushed twice or stored twice, pushed out of seq order, and rejoins with
// since that could not recover (nothing here reaches a limit that would
// excuse one).
func (m *member) faults() (dup, disorder, unrecovered int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, v := range m.views {
		dup += v.dup + v.stored2
		disorder += v.disorder
	}
	return dup, disorder, m.unrecov
}

// presenceSince is the presence events the member got after t.
func (m *member) presenceSince(t time.Time) []presenceSeen {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []presenceSeen
	for _, p := range m.presence {
		if p.at.After(t) {
			out = append(out, p)
		}
	}
	return out
}

// posts is what the member saw acked.
func (m *member) posts() []post {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]post(nil), m.acked...)
}
