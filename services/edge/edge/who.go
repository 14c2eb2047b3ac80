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
	users []string
	at    time.Time
}

// joinedUsers is the users list of a joined answer for user: a who answer
// shared with the other joins of the room for whoShareFor, with user
// added (its own report may be newer than the answer).
func (e *Edge) joinedUsers(room, user string) ([]string, error) {
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
			e.whos.shared[room] = sharedWho{users: users, at: time.Now()}
			e.whos.mu.Unlock()
			return users, nil
		})
		if err != nil {
			return nil, err
		}
		s.users = v.([]string)
	}
	i, found := slices.BinarySearch(s.users, user)
	if found {
		return s.users, nil
	}
	return slices.Insert(slices.Clone(s.users), i, user), nil
}

// forgetWho drops room's shared who answer: its presence has changed.
func (e *Edge) forgetWho(room string) {
	e.whos.mu.Lock()
	delete(e.whos.shared, room)
	e.whos.mu.Unlock()
}
