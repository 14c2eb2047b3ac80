package presence

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

const (
	// syncTimeout abandons a sync whose pages do not all come.
	syncTimeout = 10 * time.Second
	// maxBuffered bounds the reports held back during one sync.
	maxBuffered = 1 << 20
)

// syncState is one sync with an edge. The edge answers page 0 from a new
// snapshot and every later page from the same one. Its reports published
// before the snapshot reach presence before page 0; those after it are
// applied at once too (so who sees them) and also kept, to be applied on
// top of the snapshot, in order, when every page is in.
type syncState struct {
	nonce     string
	started   time.Time
	snapshot  string
	pages     int // known once page 0 is in
	got       map[int][]proto.SyncSession
	buffering bool
	buffer    []proto.SessionReport
}

// startSync asks edge e for page 0 of its state.
func (p *Presence) startSync(e *edgeState, now time.Time) {
	s := &syncState{nonce: randomID(), started: now, got: make(map[int][]proto.SyncSession)}
	e.sync = s
	if !p.requestPage(e, 0) {
		e.sync = nil
	}
}

func (p *Presence) requestPage(e *edgeState, page int) bool {
	s := e.sync
	reply := p.inbox + "." + e.id + "." + s.nonce + "." + strconv.Itoa(page)
	data := proto.Encode(proto.SyncRequest{Page: page, Snapshot: s.snapshot})
	if err := p.nc.PublishRequest(subject.EdgeSync(e.id), reply, data); err != nil {
		p.log.Warn("sync request not sent", "edge", e.id, "page", page, "err", err)
		return false
	}
	return true
}

// syncReply takes one page. A reply to a sync that is over (a nonce that
// is not the current one) is dropped.
func (p *Presence) syncReply(m *nats.Msg, now time.Time) {
	rest, ok := strings.CutPrefix(m.Subject, p.inbox+".")
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 {
		return
	}
	e := p.st.edges[parts[0]]
	if e == nil || e.sync == nil || e.sync.nonce != parts[1] {
		return
	}
	s := e.sync
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		// A no-responders status: the edge is gone, or not one of ours.
		p.abortSync(e, "no edge answers "+subject.EdgeSync(e.id))
		return
	}
	var page proto.SyncPage
	if err := json.Unmarshal(m.Data, &page); err != nil {
		p.abortSync(e, "malformed page: "+err.Error())
		return
	}
	if page.Error != "" {
		p.abortSync(e, "edge refused: "+page.Error)
		return
	}
	if page.Pages < 1 || page.Page < 0 || page.Page >= page.Pages || (s.pages != 0 && page.Pages != s.pages) ||
		strconv.Itoa(page.Page) != parts[2] {
		p.abortSync(e, "inconsistent page numbers")
		return
	}
	if page.Page == 0 && s.pages == 0 {
		s.pages, s.snapshot, s.buffering = page.Pages, page.Snapshot, true
		for i := 1; i < s.pages; i++ {
			if !p.requestPage(e, i) {
				p.abortSync(e, "request not sent")
				return
			}
		}
	}
	if s.pages == 0 {
		return // a later page before page 0 cannot be placed
	}
	s.got[page.Page] = page.Sessions
	if len(s.got) == s.pages {
		p.finishSync(e, now)
	}
}

// finishSync makes the snapshot, with the reports kept since it, the
// edge's state, announcing what differs.
func (p *Presence) finishSync(e *edgeState, now time.Time) {
	s := e.sync
	sessions := make(map[string]*session)
	for i := range s.pages {
		for _, ss := range s.got[i] {
			if !validSession(ss.Session) || !names.ValidUser(ss.User) {
				continue
			}
			cur := sessions[ss.Session]
			if cur == nil {
				cur = &session{user: ss.User, rooms: make(map[string]struct{})}
				sessions[ss.Session] = cur
			}
			for _, room := range ss.Rooms {
				if names.ValidRoom(room) {
					cur.rooms[room] = struct{}{}
				}
			}
		}
	}
	for _, r := range s.buffer {
		cur := sessions[r.Session]
		switch {
		case r.Event == proto.EventJoin && cur == nil:
			sessions[r.Session] = &session{user: r.User, rooms: map[string]struct{}{r.Room: {}}}
		case r.Event == proto.EventJoin:
			cur.rooms[r.Room] = struct{}{}
		case cur != nil:
			delete(cur.rooms, r.Room)
		}
	}
	for id, ss := range sessions {
		if len(ss.rooms) == 0 {
			delete(sessions, id)
		}
	}
	e.sync = nil
	e.confirmed = true
	p.metrics.syncs.WithLabelValues("done").Inc()
	p.log.Debug("synced edge", "edge", e.id, "sessions", len(sessions), "pages", s.pages, "took", now.Sub(s.started))
	p.announce(p.st.replace(e, sessions, nil))
}

// abortSync gives a sync up; the reports since it are applied already,
// and the next heartbeat that disagrees starts another.
func (p *Presence) abortSync(e *edgeState, why string) {
	e.sync = nil
	p.metrics.syncs.WithLabelValues("failed").Inc()
	p.log.Warn("sync with edge failed", "edge", e.id, "why", why)
}
