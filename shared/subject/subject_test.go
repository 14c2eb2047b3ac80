package subject

import "testing"

func TestRoundTrip(t *testing.T) {
	if r, ok := RoomOfInRoom(InRoom("lobby")); !ok || r != "lobby" {
		t.Fatalf("RoomOfInRoom = %q, %v", r, ok)
	}
	for _, bad := range []string{"chat.in.room.", "chat.in.room.a.b", "chat.in.dm.x"} {
		if _, ok := RoomOfInRoom(bad); ok {
			t.Errorf("RoomOfInRoom(%q) accepted", bad)
		}
	}
}

func TestPresenceSubjects(t *testing.T) {
	if room, kind, ok := RoomOf(RoomPresence("lobby")); !ok || room != "lobby" || kind != KindPresence {
		t.Fatalf("RoomOf(RoomPresence) = %q, %q, %v", room, kind, ok)
	}
	if room, kind, ok := RoomOf(RoomMsg("lobby")); !ok || room != "lobby" || kind != KindMsg {
		t.Fatalf("RoomOf(RoomMsg) = %q, %q, %v", room, kind, ok)
	}
	for _, bad := range []string{"chat.room.lobby", "chat.room..msg", "chat.room.a.b.msg", "chat.roomx.a.msg"} {
		if _, _, ok := RoomOf(bad); ok {
			t.Errorf("RoomOf(%q) accepted", bad)
		}
	}
	for _, subj := range []string{PresenceSession("lobby"), PresenceWho("lobby")} {
		if room, ok := RoomOfPresence(subj); !ok || room != "lobby" {
			t.Errorf("RoomOfPresence(%q) = %q, %v", subj, room, ok)
		}
	}
	if _, ok := RoomOfPresence("chat.presence.who.a.b"); ok {
		t.Error("RoomOfPresence accepted two tokens")
	}
	if e, ok := EdgeOfHeartbeat(EdgeHeartbeat("edge-1")); !ok || e != "edge-1" {
		t.Fatalf("EdgeOfHeartbeat = %q, %v", e, ok)
	}
	if _, ok := EdgeOfHeartbeat(EdgeSync("edge-1")); ok {
		t.Error("EdgeOfHeartbeat accepted a sync subject")
	}
	if room, ok := RoomOfPresenceKey(PresenceRoomKey("lobby")); !ok || room != "lobby" {
		t.Fatalf("RoomOfPresenceKey = %q, %v", room, ok)
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

func TestDMSubjects(t *testing.T) {
	if DM("bob", "alice") != "chat.dm.alice.bob" || DM("alice", "bob") != "chat.dm.alice.bob" {
		t.Fatalf("DM = %q", DM("bob", "alice"))
	}
	if StoreDM("Zed", "amy") != "chat.store.dm.Zed.amy" { // bytewise: 'Z' < 'a'
		t.Fatalf("StoreDM = %q", StoreDM("Zed", "amy"))
	}
	if DM("me", "me") != "chat.dm.me.me" {
		t.Fatalf("DM to oneself = %q", DM("me", "me"))
	}
	for _, subj := range []string{DM("bob", "alice"), StoreDM("bob", "alice")} {
		if a, b, ok := PartiesOf(subj); !ok || a != "alice" || b != "bob" {
			t.Errorf("PartiesOf(%q) = %q, %q, %v", subj, a, b, ok)
		}
	}
	for _, bad := range []string{"chat.dm.bob.alice", "chat.dm.a", "chat.dm.a.b.c", "chat.dm..b", "chat.room.a.msg"} {
		if _, _, ok := PartiesOf(bad); ok {
			t.Errorf("PartiesOf(%q) accepted", bad)
		}
	}
	if u, ok := UserOfInDM(InDM("bob")); !ok || u != "bob" {
		t.Fatalf("UserOfInDM = %q, %v", u, ok)
	}
	for _, bad := range []string{"chat.in.dm.", "chat.in.dm.a.b", "chat.in.room.a"} {
		if _, ok := UserOfInDM(bad); ok {
			t.Errorf("UserOfInDM(%q) accepted", bad)
		}
	}
	if room, kind, ok := RoomOf(RoomTyping("lobby")); !ok || room != "lobby" || kind != KindTyping {
		t.Fatalf("RoomOf(RoomTyping) = %q, %q, %v", room, kind, ok)
	}
}
