package subject

import "testing"

func TestRoundTrip(t *testing.T) {
	if r, ok := RoomOfInRoom(InRoom("lobby")); !ok || r != "lobby" {
		t.Fatalf("RoomOfInRoom = %q, %v", r, ok)
	}
	if r, ok := RoomOfRoomMsg(RoomMsg("lobby")); !ok || r != "lobby" {
		t.Fatalf("RoomOfRoomMsg = %q, %v", r, ok)
	}
	for _, bad := range []string{"chat.in.room.", "chat.in.room.a.b", "chat.in.dm.x"} {
		if _, ok := RoomOfInRoom(bad); ok {
			t.Errorf("RoomOfInRoom(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"chat.room..msg", "chat.room.a.b.msg", "chat.room.a.presence"} {
		if _, ok := RoomOfRoomMsg(bad); ok {
			t.Errorf("RoomOfRoomMsg(%q) accepted", bad)
		}
	}
}
