package edge

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"golang.org/x/sync/singleflight"

	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// whoTimeout bounds a who request to presence. A presence that is down
// answers at once (no responders); this is for one that is overloaded.
const whoTimeout = 2 * time.Second

// whoShareFor is how long the users of a room, asked for a joined answer,
// serve the joins that follow (a presence event for the room ends it
// sooner): when thousands rejoin a big room at once, presence answers a
// few requests instead of thousands of lists of thousands.
const whoShareFor = 250 * time.Millisecond

// whoShare shares who answers between the joins of a room
// (joinedUsers).
type whoShare struct {
	flight singleflight.Group
	mu     sync.Mutex
	shared map[string]sharedWho // guarded by mu
}

// who asks presence for the users present in room. It fails at once when
// NATS or presence is away.
func (e *Edge) who(room string) ([]string, error) {
	if !e.nc.IsConnected() {
		return nil, nats.ErrConnectionClosed
	}
	ctx, cancel := context.WithTimeout(e.ctx, whoTimeout)
	defer cancel()
	msg, err := e.nc.RequestWithContext(ctx, subject.PresenceWho(room), nil)
	if err != nil {
		// Presence is away: the answers shared between joins are not
		// handed out any more either.
		e.whos.mu.Lock()
		clear(e.whos.shared)
		e.whos.mu.Unlock()
		return nil, fmt.Errorf("who %s: %w", room, err)
	}
	var reply proto.WhoReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return nil, fmt.Errorf("who %s: bad reply: %w", room, err)
	}
	if reply.Users == nil {
		reply.Users = []string{}
	}
	return reply.Users, nil
}

// sharedWho is a who answer shared between joins.
type sharedWho struct {
	users *userList
	at    time.Time
}

// userList is a who answer with its JSON array encoded once, for the
// joined answers it is shared by.
type userList struct {
	names []string // sorted, as presence answers
	enc   []byte   // the JSON array of names
	at    []int    // at[i]: where names[i] starts in enc
}

func newUserList(names []string) *userList {
	l := &userList{names: names, enc: make([]byte, 0, 2+len(names)*12), at: make([]int, len(names))}
	l.enc = append(l.enc, '[')
	for i, name := range names {
		if i > 0 {
			l.enc = append(l.enc, ',')
		}
		l.at[i] = len(l.enc)
		q, _ := json.Marshal(name) // a string always encodes
		l.enc = append(l.enc, q...)
	}
	l.enc = append(l.enc, ']')
	return l
}

// with returns the JSON array of the list with user in its place, as
// parts for proto.EncodeJoined: the shared encoding itself when user is
// in the list, else the encoding cut where user goes and user between.
func (l *userList) with(user string) [][]byte {
	i, found := slices.BinarySearch(l.names, user)
	if found {
		return [][]byte{l.enc}
	}
	q, _ := json.Marshal(user)
	switch {
	case len(l.names) == 0:
		return [][]byte{{'['}, q, {']'}}
	case i == len(l.names):
		return [][]byte{l.enc[:len(l.enc)-1], {','}, q, {']'}}
	default:
		return [][]byte{l.enc[:l.at[i]], q, {','}, l.enc[l.at[i]:]}
	}
}

// joinedUsers is the users list of a joined answer for user, as parts of
// its JSON array (proto.EncodeJoined): a who answer shared with the other
// joins of the room for whoShareFor, with user added (its own report may
// be newer than the answer).
func (e *Edge) joinedUsers(room, user string) ([][]byte, error) {
	e.whos.mu.Lock()
	s, ok := e.whos.shared[room]
	e.whos.mu.Unlock()
	if !ok || time.Since(s.at) >= whoShareFor {
		v, err, _ := e.whos.flight.Do(room, func() (any, error) {
			users, err := e.who(room)
			if err != nil {
				return nil, err
			}
			e.whos.mu.Lock()
			if len(e.whos.shared) > 4096 {
				for r, old := range e.whos.shared {
					if time.Since(old.at) >= whoShareFor {
						delete(e.whos.shared, r)
					}
				}
			}
			list := newUserList(users)
			e.whos.shared[room] = sharedWho{users: list, at: time.Now()}
			e.whos.mu.Unlock()
			return list, nil
		})
		if err != nil {
			return nil, err
		}
		s.users = v.(*userList)
	}
	return s.users.with(user), nil
}

// forgetWho drops room's shared who answer: its presence has changed.
func (e *Edge) forgetWho(room string) {
	e.whos.mu.Lock()
	delete(e.whos.shared, room)
	e.whos.mu.Unlock()
}
