package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natter-chat/natter/bench/wsclient"
)

// membership is a client's stay in a room: from its first joined to its
// leave (or its clean close), across any drops it came back from with
// since. The client's mu guards it.
type membership struct {
	room       string
	set        seqSet
	joinedOnce bool   // a joined has come: start is set
	start      uint64 // the first joined's seq: every seq acked after it is expected
	live       bool   // joined on the current connection: what comes is live, not replayed
	newest     uint64 // the newest seq seen, received or in joined: the since of a rejoin
	last       uint64 // the newest seq received
	ended      bool
	endAt      int64  // when the leave or the close was sent, Unix nanoseconds
	endSeq     uint64 // the newest seq received by the end
	dups       int64  // seqs received twice
	disorder   int64  // seqs received after a newer one
	unrecov    int    // rejoins with since answered recovered: false
	since      uint64 // the since of the last rejoin
}

// pendingPost is a post sent and not yet acked, kept to be sent again
// after a drop with the same id, as the protocol's recovery says.
type pendingPost struct {
	room string // or
	to   string // for a dm
	line []byte
}

// connState is one connection of a client, read by its own goroutine.
type connState struct {
	ws      *wsclient.Conn
	answers chan *event   // answers to the client's requests, and welcome
	done    chan struct{} // closed when the reader has ended
	edge    string        // the edge's address
	ours    atomic.Bool   // the client ended it (a drop or a close)
	code    int           // the server's close code (0: none), set before done
}

// client is one user of the soak, with one connection at a time. Its
// actor goroutine connects, joins, leaves, drops and comes back; the
// reader goroutine of its connection applies what arrives; a publisher's
// third goroutine posts. mu guards what they share.
type client struct {
	g    *gen
	id   int
	user string
	big  bool // a member of the room of 1,000, which stays to the end
	src  *net.TCPAddr

	mu         sync.Mutex
	cs         *connState             // guarded by mu: nil while away or recovering
	rooms      map[string]*membership // guarded by mu: going on, joined or away
	ended      []*membership          // guarded by mu
	convs      map[string]*listSet    // guarded by mu: dm seqs received, by the other user
	convNewest map[string]uint64      // guarded by mu
	pending    map[string]pendingPost // guarded by mu: by id
	nextID     int                    // guarded by mu
	dmRepeats  int64                  // guarded by mu: dms received again (history overlaps live: allowed)
}

func newClient(g *gen, id int, user string, big bool) *client {
	return &client{
		g: g, id: id, user: user, big: big,
		src:        g.source(id),
		rooms:      make(map[string]*membership),
		convs:      make(map[string]*listSet),
		convNewest: make(map[string]uint64),
		pending:    make(map[string]pendingPost),
	}
}

func (c *client) newIDLocked(prefix string) string {
	c.nextID++
	return prefix + strconv.Itoa(c.nextID)
}

// connect opens a connection and waits for welcome. The client is not
// given it (cs) until it has recovered.
func (c *client) connect(ctx context.Context, addr string) (*connState, error) {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ws, err := wsclient.Dial(dctx, c.src, addr, "/ws?user="+c.user)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.user, err)
	}
	c.g.cnt.connects.Add(1)
	cs := &connState{ws: ws, edge: addr, answers: make(chan *event, 64), done: make(chan struct{})}
	c.g.readers.Go(func() { c.read(cs) })
	if _, err := c.await(ctx, cs, "", "welcome"); err != nil {
		c.drop(cs)
		return nil, err
	}
	return cs, nil
}

// await returns the answer to the request with id: an event of type
// want (joined, left, dms, history carry no id; the connection answers
// its requests in order, and the actor has one out at a time), or the
// error with id. "" waits for welcome.
func (c *client) await(ctx context.Context, cs *connState, id, want string) (*event, error) {
	timeout := time.NewTimer(30 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case ev := <-cs.answers:
			if ev.Type == "error" && id != "" && ev.ID == id {
				c.g.errs.add("answer " + ev.Code)
				return ev, fmt.Errorf("%s: %s: %s", c.user, ev.Code, ev.Message)
			}
			if ev.Type == want {
				return ev, nil
			}
		case <-cs.done:
			return nil, fmt.Errorf("%s: connection closed (%d) while waiting for %s", c.user, cs.code, want)
		case <-timeout.C:
			return nil, fmt.Errorf("%s: no %s in 30 s", c.user, want)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// request sends a request with a fresh id and waits for its answer, of
// type want.
func (c *client) request(ctx context.Context, cs *connState, want, format string, args ...any) (*event, error) {
	c.mu.Lock()
	id := c.newIDLocked("q")
	c.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	line = line[:len(line)-1] + `,"id":"` + id + `"}`
	if err := cs.ws.WriteText([]byte(line)); err != nil {
		return nil, fmt.Errorf("%s: %w", c.user, err)
	}
	return c.await(ctx, cs, id, want)
}

// join joins room, with since when the client's membership goes on from
// an earlier connection, afresh otherwise.
func (c *client) join(ctx context.Context, cs *connState, room string) error {
	c.mu.Lock()
	m := c.rooms[room]
	if m == nil {
		m = &membership{room: room}
		if room == c.g.cfg.bigRoom {
			m.set = &bitSet{}
		} else {
			m.set = &listSet{}
		}
		c.rooms[room] = m
	}
	m.live = false
	since, again := m.newest, m.joinedOnce
	m.since = since
	c.mu.Unlock()
	var err error
	if again {
		_, err = c.request(ctx, cs, "joined", `{"type":"join","room":%q,"since":%d}`, room, since)
		c.g.cnt.rejoins.Add(1)
	} else {
		_, err = c.request(ctx, cs, "joined", `{"type":"join","room":%q}`, room)
		c.g.cnt.joins.Add(1)
	}
	if err != nil {
		c.mu.Lock()
		if !m.joinedOnce {
			delete(c.rooms, room) // it never began
		}
		c.mu.Unlock()
	}
	return err
}

// leave ends the client's membership of room.
func (c *client) leave(ctx context.Context, cs *connState, room string) error {
	c.mu.Lock()
	m := c.rooms[room]
	if m == nil {
		c.mu.Unlock()
		return nil
	}
	m.endAt = time.Now().UnixNano()
	c.mu.Unlock()
	if _, err := c.request(ctx, cs, "left", `{"type":"leave","room":%q}`, room); err != nil {
		return err
	}
	c.mu.Lock()
	c.endLocked(m)
	c.mu.Unlock()
	c.g.cnt.leaves.Add(1)
	return nil
}

func (c *client) endLocked(m *membership) {
	m.ended, m.endSeq, m.live = true, m.last, false
	delete(c.rooms, m.room)
	c.ended = append(c.ended, m)
}

// recover brings a new connection up to date, as docs/protocol.md's
// Recovery says: each room rejoined with since, the dms missed read from
// history, the posts not acked sent again with their ids. Then the
// connection is the client's.
func (c *client) recover(ctx context.Context, cs *connState) error {
	c.mu.Lock()
	var rooms []string
	for room, m := range c.rooms {
		if !m.joinedOnce {
			delete(c.rooms, room)
			continue
		}
		rooms = append(rooms, room)
	}
	c.mu.Unlock()
	for _, room := range rooms {
		if err := c.join(ctx, cs, room); err != nil {
			return err
		}
	}
	if !c.big {
		if err := c.recoverDMs(ctx, cs); err != nil {
			return err
		}
	}
	c.mu.Lock()
	var again [][]byte
	for _, p := range c.pending {
		again = append(again, p.line)
	}
	c.cs = cs
	c.mu.Unlock()
	for _, line := range again {
		if err := cs.ws.WriteText(line); err != nil {
			return err
		}
		c.g.cnt.resent.Add(1)
	}
	return nil
}

// recoverDMs reads the dms missed: the conversations, and for each with
// newer dms than the client has, history after the newest it has.
func (c *client) recoverDMs(ctx context.Context, cs *connState) error {
	ev, err := c.request(ctx, cs, "dms", `{"type":"dms"}`)
	if err != nil {
		return err
	}
	for _, cv := range ev.Conversations {
		c.mu.Lock()
		after := c.convNewest[cv.With]
		c.mu.Unlock()
		for cv.Seq > after {
			page, err := c.request(ctx, cs, "history", `{"type":"history","dm":%q,"after":%d,"limit":200}`, cv.With, after)
			if err != nil {
				return err
			}
			c.g.cnt.histories.Add(1)
			if page.Seq <= after || !page.More {
				break
			}
			after = page.Seq
		}
	}
	return nil
}

// drop ends the connection as a lost network would: no close frame.
// Memberships go on, to be recovered with since.
func (c *client) drop(cs *connState) {
	cs.ours.Store(true)
	_ = cs.ws.Close()
	<-cs.done
	c.away(cs)
}

// away forgets cs, closed; what arrives next is on another connection.
func (c *client) away(cs *connState) {
	c.mu.Lock()
	if c.cs == cs {
		c.cs = nil
	}
	for _, m := range c.rooms {
		m.live = false
	}
	c.mu.Unlock()
}

// disconnect closes the connection cleanly (1000), once its posts are
// acked: every membership ends.
func (c *client) disconnect(cs *connState) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		if n == 0 {
			break
		}
	}
	c.mu.Lock()
	now := time.Now().UnixNano()
	for _, m := range c.rooms {
		m.endAt = now
	}
	c.mu.Unlock()
	cs.ours.Store(true)
	_ = cs.ws.CloseNormal()
	<-cs.done
	_ = cs.ws.Close()
	c.mu.Lock()
	for _, m := range c.rooms {
		c.endLocked(m)
	}
	if c.cs == cs {
		c.cs = nil
	}
	c.mu.Unlock()
}

// comeBack reconnects after a drop and recovers, trying again with a
// growing pause until it succeeds or ctx ends.
func (c *client) comeBack(ctx context.Context) (*connState, error) {
	pause := 500 * time.Millisecond
	for {
		cs, err := c.connect(ctx, c.g.edgeFor(c))
		if err == nil {
			if err = c.recover(ctx, cs); err == nil {
				return cs, nil
			}
			c.drop(cs)
		}
		c.g.errs.add(err.Error())
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		select {
		case <-time.After(pause/2 + rand.N(pause/2)):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		pause = min(2*pause, 10*time.Second)
	}
}

// post sends a room message (to == "") or a dm, with an id.
func (c *client) post(cs *connState, room, to string) {
	now := time.Now().UnixNano()
	c.mu.Lock()
	id := c.newIDLocked("p")
	text := postText(now, c.user, c.nextID, c.g.pad)
	var line []byte
	if to == "" {
		line = fmt.Appendf(nil, `{"type":"message","room":%q,"text":%q,"id":%q}`, room, text, id)
	} else {
		line = fmt.Appendf(nil, `{"type":"dm","to":%q,"text":%q,"id":%q}`, to, text, id)
	}
	c.pending[id] = pendingPost{room: room, to: to, line: line}
	c.mu.Unlock()
	// A failed write leaves the post pending: it is sent again after the
	// client comes back.
	_ = cs.ws.WriteText(line)
	if to == "" {
		c.g.cnt.posts.Add(1)
	} else {
		c.g.cnt.dmsSent.Add(1)
	}
}

// read is the only reader of cs: it applies every event to the client's
// state and hands the answers to requests to the actor.
func (c *client) read(cs *connState) {
	defer close(cs.done)
	g := c.g
	for {
		data, err := cs.ws.ReadMessage()
		if err != nil {
			var ce *wsclient.CloseError
			if errors.As(err, &ce) {
				cs.code = ce.Code
			}
			if !cs.ours.Load() {
				g.cnt.serverCloses.Add(1)
				g.errs.add(fmt.Sprintf("connection ended by the server (close %d)", cs.code))
			}
			return
		}
		now := time.Now().UnixNano()
		var answers []*event
		var live, replayed int64
		lat := g.latencies()
		c.mu.Lock()
		for line := range bytes.SplitSeq(data, []byte{'\n'}) {
			if len(line) == 0 {
				continue
			}
			if seq, room, sent, ok := parseRoomMessage(line); ok {
				m := c.rooms[string(room)]
				switch {
				case m == nil:
					g.cnt.stray.Add(1)
				case g.cfg.lose > 0 && g.cnt.seen.Add(1)%g.cfg.lose == 0:
					g.cnt.forgotten.Add(1) // -lose: as if it never came
				default:
					if m.set.add(seq) {
						m.dups++
					} else if seq < m.last {
						m.disorder++
					}
					m.last, m.newest = max(m.last, seq), max(m.newest, seq)
					if m.live {
						live++
						if sent > 0 {
							lat.record((now - sent) / 1000)
						}
					} else {
						replayed++
					}
				}
				continue
			}
			ev := new(event)
			if err := json.Unmarshal(line, ev); err != nil {
				g.errs.add("undecodable event: " + err.Error())
				continue
			}
			if c.eventLocked(ev, now, lat) {
				answers = append(answers, ev)
			}
		}
		c.mu.Unlock()
		g.cnt.live.Add(live)
		g.cnt.replayed.Add(replayed)
		for _, ev := range answers {
			select {
			case cs.answers <- ev:
			default:
				g.errs.add("an answer nobody waits for: " + ev.Type)
			}
		}
	}
}

// eventLocked applies an event other than a room message; it reports
// whether the event answers a request, for the actor.
func (c *client) eventLocked(ev *event, now int64, lat *latencies) bool {
	g := c.g
	switch ev.Type {
	case "welcome", "left", "dms":
		return true
	case "joined":
		if m := c.rooms[ev.Room]; m != nil {
			if !m.joinedOnce {
				m.joinedOnce, m.start = true, ev.Seq
			} else if ev.Recovered != nil && !*ev.Recovered {
				m.unrecov++
				g.notes.add(fmt.Sprintf("%s rejoined %s with since %d: recovered false, joined.seq %d (the newest received %d)",
					c.user, ev.Room, m.since, ev.Seq, m.last))
			}
			m.live = true
			m.newest = max(m.newest, ev.Seq)
		}
		return true
	case "ack":
		p, ok := c.pending[ev.ID]
		if !ok {
			return false
		}
		delete(c.pending, ev.ID)
		if p.to == "" {
			g.led.room(p.room, acked{ev.Seq, now})
		} else {
			g.led.dm(conv(c.user, p.to), acked{ev.Seq, now})
		}
		g.cnt.acks.Add(1)
	case "error":
		if strings.HasPrefix(ev.ID, "q") {
			return true
		}
		// A post refused is not stored: nothing to expect of it.
		delete(c.pending, ev.ID)
		g.errs.add("error " + ev.Code)
	case "dm":
		g.cnt.dms.Add(1)
		c.dmLocked(ev.From, ev.To, ev.Seq)
		if sent := sendTime([]byte(ev.Text)); sent > 0 {
			lat.record((now - sent) / 1000)
		}
	case "history":
		var newest uint64
		for _, raw := range ev.Messages {
			var dm event
			if json.Unmarshal(raw, &dm) == nil && ev.DM != "" {
				c.dmLocked(dm.From, dm.To, dm.Seq)
				newest = max(newest, dm.Seq)
			}
		}
		ev.Seq = newest // for recoverDMs: where the next page starts
		return true
	case "typing":
		g.cnt.typing.Add(1)
	case "presence":
		g.cnt.presence.Add(1)
	default:
		g.errs.add("unexpected event " + ev.Type)
	}
	return false
}

func (c *client) dmLocked(from, to string, seq uint64) {
	peer := from
	if from == c.user {
		peer = to
	}
	s := c.convs[peer]
	if s == nil {
		s = &listSet{}
		c.convs[peer] = s
	}
	if s.add(seq) {
		c.dmRepeats++
	}
	c.convNewest[peer] = max(c.convNewest[peer], seq)
}
