// Package subject is the one place where natter's NATS subjects are built
// (docs/protocol.md). Every subject says who publishes and who
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

// DirectGet is the JetStream direct-get request of stream: edges send
// reads of a room's messages there.
func DirectGet(stream string) string { return "$JS.API.DIRECT.GET." + stream }

// DirectGetLast is the JetStream direct-get request for the newest message
// stored on subj in stream; edges send it to learn a room's newest seq.
func DirectGetLast(stream, subj string) string {
	return "$JS.API.DIRECT.GET." + stream + "." + subj
}

// RoomAll is every subject of room that edges deliver to its members
// (RoomMsg, RoomPresence, RoomTyping): an edge holds this one
// subscription per room with local members. Its last token says what the
// event is.
func RoomAll(room string) string { return "chat.room." + room + ".*" }

// Kinds of room event, the last token of a chat.room.<room>.<kind> subject.
const (
	KindMsg      = "msg"
	KindPresence = "presence"
)

// RoomOf returns the room and kind of a chat.room.<room>.<kind> subject.
func RoomOf(subj string) (room, kind string, ok bool) {
	rest, ok := strings.CutPrefix(subj, "chat.room.")
	if !ok {
		return "", "", false
	}
	room, kind, ok = strings.Cut(rest, ".")
	if !ok || room == "" || kind == "" || strings.Contains(kind, ".") {
		return "", "", false
	}
	return room, kind, true
}

// RoomPresence carries the presence service's join and leave events of
// room; the edges with members in room receive them (RoomAll).
func RoomPresence(room string) string { return "chat.room." + room + "." + KindPresence }

const (
	presenceSessionPrefix = "chat.presence.session."
	presenceWhoPrefix     = "chat.presence.who."
	edgePrefix            = "chat.edge."
)

// PresenceSession is where an edge reports a session joining or leaving
// room; the presence service subscribes to PresenceSessionAll.
func PresenceSession(room string) string { return presenceSessionPrefix + room }

// PresenceSessionAll is what the presence service subscribes to for
// session reports.
const PresenceSessionAll = presenceSessionPrefix + "*"

// PresenceWho is the request an edge (or anyone) sends to the active
// presence service for the users present in room.
func PresenceWho(room string) string { return presenceWhoPrefix + room }

// PresenceWhoAll is what the active presence service answers, in the
// queue group PresenceQueue.
const PresenceWhoAll = presenceWhoPrefix + "*"

// PresenceQueue is the presence replicas' queue group for who, so that a
// moment with two active replicas still gives one answer.
const PresenceQueue = "presence"

// RoomOfPresence returns the room token of a PresenceSession or
// PresenceWho subject.
func RoomOfPresence(subj string) (string, bool) {
	for _, prefix := range []string{presenceSessionPrefix, presenceWhoPrefix} {
		if room, ok := strings.CutPrefix(subj, prefix); ok {
			return room, room != "" && !strings.Contains(room, ".")
		}
	}
	return "", false
}

// EdgeHeartbeat is where edge publishes its heartbeat every 5 s; the
// presence service subscribes to EdgeHeartbeatAll.
func EdgeHeartbeat(edge string) string { return edgePrefix + edge + ".heartbeat" }

// EdgeHeartbeatAll is what the presence service subscribes to for
// heartbeats.
const EdgeHeartbeatAll = edgePrefix + "*.heartbeat"

// EdgeOfHeartbeat returns the edge of an EdgeHeartbeat subject.
func EdgeOfHeartbeat(subj string) (string, bool) {
	rest, ok := strings.CutPrefix(subj, edgePrefix)
	if !ok {
		return "", false
	}
	edge, ok := strings.CutSuffix(rest, ".heartbeat")
	return edge, ok && edge != "" && !strings.Contains(edge, ".")
}

// EdgeSync is the request the presence service sends to edge for its full
// session state, one page per request; the edge subscribes.
func EdgeSync(edge string) string { return edgePrefix + edge + ".sync" }

// PresenceBucket is the JetStream key-value bucket of the presence
// service: which replica is active (key PresenceLeaderKey), and what it
// last announced per room (keys PresenceRoomKey), so that a restarted or
// standby replica announces only the net change.
const (
	PresenceBucket    = "CHAT_PRESENCE"
	PresenceLeaderKey = "leader"
	// PresenceBaselineKey is written once the room keys hold a complete
	// view; without it a new active replica has no baseline.
	PresenceBaselineKey = "baseline"
	// PresenceEdgesKey lists the edges the active replica knows, so that
	// its successor waits to hear from each before it announces.
	PresenceEdgesKey = "edges"
	presenceRoomKey  = "room."
	// PresenceRoomKeys matches every room key.
	PresenceRoomKeys = presenceRoomKey + "*"
)

// PresenceRoomKey is the key of room's announced users.
func PresenceRoomKey(room string) string { return presenceRoomKey + room }

// RoomOfPresenceKey returns the room of a PresenceRoomKey.
func RoomOfPresenceKey(key string) (string, bool) {
	room, ok := strings.CutPrefix(key, presenceRoomKey)
	return room, ok && room != ""
}

// Direct messages (docs/protocol.md). A conversation between a and
// b is named by the two users in bytewise order, a <= b (a == b for notes
// to oneself), so both parties find it under the same subjects.
const (
	// InDMAll is what the broadcasters subscribe to for posted dms, in
	// the queue group BroadcasterQueue.
	InDMAll = "chat.in.dm.*"

	// DMStream is the JetStream stream that stores every dm.
	DMStream = "CHAT_DM"

	// StoreDMAll is the dm stream's subject filter; it republishes each
	// stored dm on DM(a, b) with its Nats-Sequence.
	StoreDMAll = "chat.store.dm.*.*"

	// RepublishDM is the RePublish destination of StoreDMAll.
	RepublishDM = "chat.dm.{{wildcard(1)}}.{{wildcard(2)}}"

	inDMPrefix    = "chat.in.dm."
	storeDMPrefix = "chat.store.dm."
	dmPrefix      = "chat.dm."
)

// Pair orders two users as a conversation names them: a <= b bytewise.
func Pair(x, y string) (a, b string) {
	if y < x {
		return y, x
	}
	return x, y
}

// InDM is where an edge posts a dm to user to; the broadcasters' queue
// group receives it. An edge sends it as a request and the reply carries
// the stored seq.
func InDM(to string) string { return inDMPrefix + to }

// UserOfInDM returns the recipient of an InDM subject, and false when
// subj is not of that form.
func UserOfInDM(subj string) (string, bool) {
	to, ok := strings.CutPrefix(subj, inDMPrefix)
	if !ok || to == "" || strings.Contains(to, ".") {
		return "", false
	}
	return to, true
}

// StoreDM is the dm stream subject of the conversation of x and y, in
// either order: the broadcaster stores there; edges read history from it.
func StoreDM(x, y string) string {
	a, b := Pair(x, y)
	return storeDMPrefix + a + "." + b
}

// StoreDMsOf are the dm stream filters of every conversation of user:
// those where it is the first party and those where it is the second.
func StoreDMsOf(user string) [2]string {
	return [2]string{storeDMPrefix + user + ".*", storeDMPrefix + "*." + user}
}

// StoreDMAny matches every stored dm: the dm stream's newest message.
const StoreDMAny = "chat.store.dm.>"

// DM carries the stored dms of the conversation of x and y (either
// order), republished by the stream with their seq; the edges with a
// session of either party receive them (DMsOf).
func DM(x, y string) string {
	a, b := Pair(x, y)
	return dmPrefix + a + "." + b
}

// DMsOf are the two subscriptions an edge holds for a user with local
// sessions: the conversations where the user is the first party, and
// those where it is the second.
func DMsOf(user string) [2]string {
	return [2]string{dmPrefix + user + ".*", dmPrefix + "*." + user}
}

// PartiesOf returns the two users of a DM or StoreDM subject, a <= b.
func PartiesOf(subj string) (a, b string, ok bool) {
	rest, ok := strings.CutPrefix(subj, dmPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(subj, storeDMPrefix); !ok {
			return "", "", false
		}
	}
	a, b, ok = strings.Cut(rest, ".")
	if !ok || a == "" || b == "" || strings.Contains(b, ".") || b < a {
		return "", "", false
	}
	return a, b, true
}

// KindTyping is the kind of a room's typing events.
const KindTyping = "typing"

// RoomTyping carries the typing signals of room, published by the edges
// and delivered by the edges with members in room (RoomAll). They are
// never stored.
func RoomTyping(room string) string { return "chat.room." + room + "." + KindTyping }

// Inbox is the prefix of the reply subjects of a natter service's NATS
// connection (named edge, broadcaster, presence): each service has its
// own, so that its permissions can let it read its own replies only
// (deploy/nats/nats.conf).
func Inbox(service string) string { return "_INBOX_" + service }

// IsReply reports whether reply can be answered: a reply subject of a
// NATS client (one of the inboxes, natter's or a client's default), not
// any subject a requester names. A service that answered any reply
// subject would publish, with its own rights, wherever a requester
// pointed it.
func IsReply(reply string) bool {
	return (strings.HasPrefix(reply, "_INBOX.") || strings.HasPrefix(reply, "_INBOX_")) &&
		!strings.ContainsAny(reply, "*> \t")
}

// The names natter's services register under with the NATS services
// framework (nats.go micro), which answers on $SRV.PING, $SRV.INFO and
// $SRV.STATS, each alone, with the name, and with the name and the
// instance's id: `nats micro ls` lists them.
const (
	ServiceEdge        = "natter-edge"
	ServicePresence    = "natter-presence"
	ServiceBroadcaster = "natter-broadcaster"
)
