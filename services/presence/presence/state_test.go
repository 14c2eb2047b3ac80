package presence

import (
	"slices"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/proto"
)

func changes(cs []change) []string {
	out := make([]string, 0, len(cs))
	for _, c := range cs {
		ev := "leave"
		if c.join {
			ev = "join"
		}
		out = append(out, c.room+" "+ev+" "+c.user)
	}
	slices.Sort(out)
	return out
}

func sessions(pairs ...string) map[string]*session {
	out := make(map[string]*session)
	for i := 0; i < len(pairs); i += 3 {
		sid, user, room := pairs[i], pairs[i+1], pairs[i+2]
		if out[sid] == nil {
			out[sid] = &session{user: user, rooms: make(map[string]struct{})}
		}
		out[sid].rooms[room] = struct{}{}
	}
	return out
}

func TestStatePerUserNotPerSession(t *testing.T) {
	t.Parallel()
	s := newState()
	now := time.Now()
	a, b := s.edge("a", now), s.edge("b", now)
	tests := []struct {
		name string
		do   func() []change
		want []string
	}{
		{"first tab joins", func() []change { return s.add(a, "s1", "alice", "lobby", nil) }, []string{"lobby join alice"}},
		{"second tab, other edge", func() []change { return s.add(b, "s2", "alice", "lobby", nil) }, []string{}},
		{"repeated join", func() []change { return s.add(b, "s2", "alice", "lobby", nil) }, []string{}},
		{"first tab leaves", func() []change { return s.remove(a, "s1", "lobby", nil) }, []string{}},
		{"unknown leave", func() []change { return s.remove(a, "s9", "lobby", nil) }, []string{}},
		{"last tab leaves", func() []change { return s.remove(b, "s2", "lobby", nil) }, []string{"lobby leave alice"}},
	}
	for _, tc := range tests {
		if got := changes(tc.do()); !slices.Equal(got, tc.want) {
			t.Fatalf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if len(s.rooms) != 0 || s.pairs != 0 || len(a.sessions) != 0 || a.digest != (proto.Digest{}) {
		t.Fatalf("state not empty after everyone left: rooms %v, pairs %d", s.rooms, s.pairs)
	}
}

// A sync replaces an edge's sessions: users present before and after see
// no event, whatever the sessions.
func TestStateReplaceAnnouncesOnlyTheDifference(t *testing.T) {
	t.Parallel()
	s := newState()
	now := time.Now()
	a, b := s.edge("a", now), s.edge("b", now)
	s.add(a, "s1", "alice", "lobby", nil)
	s.add(a, "s2", "bob", "lobby", nil)
	s.add(a, "s2", "bob", "dev", nil)
	s.add(b, "s3", "carol", "lobby", nil)

	got := changes(s.replace(a, sessions(
		"s4", "alice", "lobby", // alice, another session
		"s2", "bob", "dev", // bob left lobby, kept dev
		"s5", "carol", "lobby", // carol, also on edge b
		"s6", "dave", "lobby", // new
	), nil))
	want := []string{"lobby join dave", "lobby leave bob"}
	if !slices.Equal(got, want) {
		t.Fatalf("replace: %q, want %q", got, want)
	}
	var d proto.Digest
	for _, p := range [][2]string{{"s4", "lobby"}, {"s2", "dev"}, {"s5", "lobby"}, {"s6", "lobby"}} {
		d.Toggle(p[0], p[1])
	}
	if a.digest != d {
		t.Fatal("digest after replace differs from the edge's")
	}
	if s.pairs != 5 {
		t.Fatalf("pairs = %d, want 5", s.pairs)
	}

	got = changes(s.drop(a, nil))
	want = []string{"dev leave bob", "lobby leave alice", "lobby leave dave"}
	if !slices.Equal(got, want) {
		t.Fatalf("drop: %q, want %q", got, want)
	}
	if !slices.Equal(s.users("lobby"), []string{"carol"}) || s.pairs != 1 {
		t.Fatalf("after drop: lobby %q, pairs %d", s.users("lobby"), s.pairs)
	}
	if s.users("nowhere") == nil {
		t.Fatal("users of an empty room is nil, want an empty list")
	}
}
