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
