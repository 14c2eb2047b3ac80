package presence

import (
	"maps"
	"slices"
	"time"

	"github.com/natter-chat/natter/shared/proto"
)

// state is presence's view of the world: the sessions of every edge and,
// derived from them, how many sessions each user has in each room. It is
// owned by the service's loop goroutine and has no lock.
type state struct {
	edges map[string]*edgeState
	rooms map[string]map[string]int // room → user → sessions present
	pairs int                       // session-room pairs held
	// edgesGen changes whenever an edge is added or dropped.
	edgesGen uint64
}

// edgeState is what presence knows of one edge.
type edgeState struct {
	id       string
	lastSeen time.Time // the last heartbeat (or first report)
	sessions map[string]*session
	digest   proto.Digest // of sessions, computed like the edge does
	sync     *syncState   // a sync in progress, or nil
	// confirmed: a heartbeat agreed with this view, or a sync made it.
	confirmed bool
}

type session struct {
	user  string
	rooms map[string]struct{}
}

// change is a user's presence in a room turning on (join) or off.
type change struct {
	room, user string
	join       bool
}

func newState() *state {
	return &state{edges: make(map[string]*edgeState), rooms: make(map[string]map[string]int)}
}

// edge returns the state of edge id, creating it, last seen at now, when
// it is new.
func (s *state) edge(id string, now time.Time) *edgeState {
	e := s.edges[id]
	if e == nil {
		e = &edgeState{id: id, lastSeen: now, sessions: make(map[string]*session)}
		s.edges[id] = e
		s.edgesGen++
	}
	return e
}

// add puts session of user in room on edge e and appends the change it
// makes to presence, if any.
func (s *state) add(e *edgeState, sid, user, room string, out []change) []change {
	ss := e.sessions[sid]
	if ss == nil {
		ss = &session{user: user, rooms: make(map[string]struct{})}
		e.sessions[sid] = ss
	}
	if _, ok := ss.rooms[room]; ok {
		return out
	}
	ss.rooms[room] = struct{}{}
	s.pairs++
	e.digest.Toggle(sid, room)
	users := s.rooms[room]
	if users == nil {
		users = make(map[string]int)
		s.rooms[room] = users
	}
	users[ss.user]++
	if users[ss.user] == 1 {
		out = append(out, change{room: room, user: ss.user, join: true})
	}
	return out
}

// remove takes session out of room on edge e and appends the change it
// makes to presence, if any.
func (s *state) remove(e *edgeState, sid, room string, out []change) []change {
	ss := e.sessions[sid]
	if ss == nil {
		return out
	}
	if _, ok := ss.rooms[room]; !ok {
		return out
	}
	delete(ss.rooms, room)
	if len(ss.rooms) == 0 {
		delete(e.sessions, sid)
	}
	e.digest.Toggle(sid, room)
	return s.uncount(room, ss.user, out)
}

// replace makes sessions the whole state of edge e. It adds before it
// removes, so a user present before and after never flickers.
func (s *state) replace(e *edgeState, sessions map[string]*session, out []change) []change {
	old := e.sessions
	e.sessions = make(map[string]*session, len(sessions))
	// The old pairs stay counted in rooms until they are removed below;
	// the digest is rebuilt from scratch.
	e.digest = proto.Digest{}
	for _, sid := range slices.Sorted(maps.Keys(sessions)) {
		ss := sessions[sid]
		for _, room := range slices.Sorted(maps.Keys(ss.rooms)) {
			out = s.add(e, sid, ss.user, room, out)
		}
	}
	for _, sid := range slices.Sorted(maps.Keys(old)) {
		ss := old[sid]
		for _, room := range slices.Sorted(maps.Keys(ss.rooms)) {
			out = s.uncount(room, ss.user, out)
		}
	}
	return out
}

// uncount removes one session of user from room's count.
func (s *state) uncount(room, user string, out []change) []change {
	s.pairs--
	users := s.rooms[room]
	users[user]--
	if users[user] == 0 {
		delete(users, user)
		if len(users) == 0 {
			delete(s.rooms, room)
		}
		out = append(out, change{room: room, user: user})
	}
	return out
}

// drop forgets edge e and every session on it.
func (s *state) drop(e *edgeState, out []change) []change {
	delete(s.edges, e.id)
	s.edgesGen++
	for _, sid := range slices.Sorted(maps.Keys(e.sessions)) {
		ss := e.sessions[sid]
		for _, room := range slices.Sorted(maps.Keys(ss.rooms)) {
			out = s.uncount(room, ss.user, out)
		}
	}
	e.sessions = nil
	return out
}

// users is the sorted list of users present in room.
func (s *state) users(room string) []string {
	users := slices.Sorted(maps.Keys(s.rooms[room]))
	if users == nil {
		users = []string{}
	}
	return users
}
