package edge

import (
	"testing"

	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

func TestKey(t *testing.T) {
	tests := []struct {
		name   string
		k      key
		dm     bool
		log    store.Log
		String string
	}{
		{"room", roomKey("lobby"), false,
			store.Log{Stream: subject.Stream, Subject: "chat.store.room.lobby", Name: "room lobby"}, "room lobby"},
		{"dm", dmKey("alice", "bob"), true,
			store.Log{Stream: subject.DMStream, Subject: "chat.store.dm.alice.bob", Name: "dm alice.bob"}, "dm alice.bob"},
		{"dm named the other way", dmKey("bob", "alice"), true,
			store.Log{Stream: subject.DMStream, Subject: "chat.store.dm.alice.bob", Name: "dm alice.bob"}, "dm alice.bob"},
		{"notes to oneself", dmKey("alice", "alice"), true,
			store.Log{Stream: subject.DMStream, Subject: "chat.store.dm.alice.alice", Name: "dm alice.alice"}, "dm alice.alice"},
		{"bytewise order", dmKey("bob", "Zed"), true, // 'Z' < 'b'
			store.Log{Stream: subject.DMStream, Subject: "chat.store.dm.Zed.bob", Name: "dm Zed.bob"}, "dm Zed.bob"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.k.isDM(); got != tt.dm {
				t.Errorf("isDM: %v, want %v", got, tt.dm)
			}
			if got := tt.k.log(); got != tt.log {
				t.Errorf("log: %+v, want %+v", got, tt.log)
			}
			if got := tt.k.String(); got != tt.String {
				t.Errorf("String: %q, want %q", got, tt.String)
			}
		})
	}
}

// A key is a map key: the same room or conversation, however it was
// named, is one key, and a room never meets a conversation.
func TestKeyEquality(t *testing.T) {
	tests := []struct {
		name string
		x, y key
		same bool
	}{
		{"same room", roomKey("lobby"), roomKey("lobby"), true},
		{"other room", roomKey("lobby"), roomKey("games"), false},
		{"either order", dmKey("alice", "bob"), dmKey("bob", "alice"), true},
		{"other conversation", dmKey("alice", "bob"), dmKey("alice", "carl"), false},
		{"notes to oneself and a room of that name", dmKey("alice", "alice"), roomKey("alice"), false},
		{"a dm with one party named like the room", dmKey("alice", "bob"), roomKey("alice"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.x == tt.y; got != tt.same {
				t.Errorf("%v == %v: %v, want %v", tt.x, tt.y, got, tt.same)
			}
			m := map[key]bool{tt.x: true}
			if m[tt.y] != tt.same {
				t.Errorf("map of %v finds %v: %v, want %v", tt.x, tt.y, m[tt.y], tt.same)
			}
		})
	}
}
