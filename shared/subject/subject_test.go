package subject

import "testing"

// Each parser gives back what its builder put in a subject, and refuses
// the subjects that are not its own.
func TestParsers(t *testing.T) {
	// The parsers with two results give them joined by a space.
	roomOf := func(s string) (string, bool) { room, kind, ok := RoomOf(s); return room + " " + kind, ok }
	partiesOf := func(s string) (string, bool) { a, b, ok := PartiesOf(s); return a + " " + b, ok }
	tests := []struct {
		name  string
		parse func(string) (string, bool)
		good  map[string]string // a subject and what parse gives for it
		bad   []string
	}{
		{"RoomOfInRoom", RoomOfInRoom,
			map[string]string{InRoom("lobby"): "lobby"},
			[]string{"chat.in.room.", "chat.in.room.a.b", "chat.in.dm.x"}},
		{"RoomOf", roomOf,
			map[string]string{RoomMsg("lobby"): "lobby " + KindMsg, RoomPresence("lobby"): "lobby " + KindPresence, RoomTyping("lobby"): "lobby " + KindTyping},
			[]string{"chat.room.lobby", "chat.room..msg", "chat.room.a.b.msg", "chat.roomx.a.msg"}},
		{"RoomOfPresence", RoomOfPresence,
			map[string]string{PresenceSession("lobby"): "lobby", PresenceWho("lobby"): "lobby"},
			[]string{"chat.presence.who.a.b"}},
		{"EdgeOfHeartbeat", EdgeOfHeartbeat,
			map[string]string{EdgeHeartbeat("edge-1"): "edge-1"},
			[]string{EdgeSync("edge-1")}},
		{"RoomOfPresenceKey", RoomOfPresenceKey,
			map[string]string{PresenceRoomKey("lobby"): "lobby"},
			nil},
		{"UserOfInDM", UserOfInDM,
			map[string]string{InDM("bob"): "bob"},
			[]string{"chat.in.dm.", "chat.in.dm.a.b", "chat.in.room.a"}},
		{"PartiesOf", partiesOf,
			map[string]string{DM("bob", "alice"): "alice bob", StoreDM("bob", "alice"): "alice bob"},
			[]string{"chat.dm.bob.alice", "chat.dm.a", "chat.dm.a.b.c", "chat.dm..b", "chat.room.a.msg"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for subj, want := range tt.good {
				if got, ok := tt.parse(subj); !ok || got != want {
					t.Errorf("%s(%q) = %q, %v; want %q", tt.name, subj, got, ok, want)
				}
			}
			for _, subj := range tt.bad {
				if got, ok := tt.parse(subj); ok {
					t.Errorf("%s(%q) accepted, as %q", tt.name, subj, got)
				}
			}
		})
	}
}

func TestIsReply(t *testing.T) {
	for _, ok := range []string{"_INBOX.abc.1", Inbox("edge") + ".x.y"} {
		if !IsReply(ok) {
			t.Errorf("IsReply(%q) = false", ok)
		}
	}
	for _, bad := range []string{"", "$JS.API.STREAM.PURGE.CHAT", "chat.room.lobby.msg", "$KV.CHAT_PRESENCE.leader", "_INBOX.>", "_INBOXES.x"} {
		if IsReply(bad) {
			t.Errorf("IsReply(%q) = true", bad)
		}
	}
}

// A conversation's subjects name its two parties in one order, whoever
// sends.
func TestDMSubjects(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{DM("bob", "alice"), "chat.dm.alice.bob"},
		{DM("alice", "bob"), "chat.dm.alice.bob"},
		{DM("me", "me"), "chat.dm.me.me"},
		{StoreDM("Zed", "amy"), "chat.store.dm.Zed.amy"}, // bytewise: 'Z' < 'a'
	} {
		if tt.got != tt.want {
			t.Errorf("%q, want %q", tt.got, tt.want)
		}
	}
}
