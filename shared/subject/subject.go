// Package subject is the one place where natter's NATS subjects are built
// (PROTOCOL.md section 4). Every subject says who publishes and who
// subscribes. Room and user names are checked by package names before they
// get here, so no token ever holds '.', '*', '>' or a space.
package subject

import "strings"

const (
	// All is every natter subject: what an operator watches with
	// `nats sub 'chat.>'`.
	All = "chat.>"

	// InRoomAll is what the broadcasters subscribe to, as one queue group.
	InRoomAll = "chat.in.room.>"

	// BroadcasterQueue is the queue group of the broadcasters.
	BroadcasterQueue = "broadcaster"

	// Stream is the JetStream stream that stores every room message.
	Stream = "CHAT"

	// StoreRoomAll is the stream's subject filter. The broadcaster publishes
	// on StoreRoom(room); nobody subscribes: the stream stores the message
	// and republishes it on RoomMsg(room) with its Nats-Sequence.
	StoreRoomAll = "chat.store.room.*"

	// RepublishRoom is the RePublish destination of StoreRoomAll.
	RepublishRoom = "chat.room.{{wildcard(1)}}.msg"

	inRoomPrefix    = "chat.in.room."
	storeRoomPrefix = "chat.store.room."
)

// InRoom is where an edge (or a bot) posts a message to room; the
// broadcasters' queue group receives it. An edge sends it as a request and
// the reply carries the stored seq.
func InRoom(room string) string { return inRoomPrefix + room }

// RoomOfInRoom returns the room token of an InRoom subject, and false when
// subj is not of that form (a bot may publish on chat.in.room.a.b).
func RoomOfInRoom(subj string) (string, bool) {
	room, ok := strings.CutPrefix(subj, inRoomPrefix)
	if !ok || room == "" || strings.Contains(room, ".") {
		return "", false
	}
	return room, true
}

// StoreRoom is the stream subject of room's messages: the broadcaster
// publishes there through JetStream; edges read history from it.
func StoreRoom(room string) string { return storeRoomPrefix + room }

// RoomMsg carries the stored messages of room, republished by the stream
// with their seq; the edges with members in room subscribe.
func RoomMsg(room string) string { return "chat.room." + room + ".msg" }

// RoomOfRoomMsg returns the room of a RoomMsg subject.
func RoomOfRoomMsg(subj string) (string, bool) {
	rest, ok := strings.CutPrefix(subj, "chat.room.")
	if !ok {
		return "", false
	}
	room, ok := strings.CutSuffix(rest, ".msg")
	if !ok || room == "" || strings.Contains(room, ".") {
		return "", false
	}
	return room, true
}

// DirectGetLast is the JetStream direct-get request for the newest message
// stored on subj in stream; edges send it to learn a room's newest seq.
func DirectGetLast(stream, subj string) string {
	return "$JS.API.DIRECT.GET." + stream + "." + subj
}
