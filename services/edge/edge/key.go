package edge

import (
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/shared/subject"
)

// conversation is the dms between two users, a <= b bytewise (a == b for
// notes to oneself), so that both parties name it alike. It is not
// store.Conversation, which is one user's view of it: the other party
// and the newest dm.
type conversation struct{ a, b string }

// conversationOf is the conversation of x and y, in either order.
func conversationOf(x, y string) conversation {
	a, b := subject.Pair(x, y)
	return conversation{a, b}
}

// key is what a stored message belongs to: a room or a conversation. The
// hub dispatches and repairs by key, and a client keeps the newest seq it
// was sent by key, so the code that serves both never guesses which one a
// name is.
type key struct {
	room string       // a room's name; "" for a conversation
	conv conversation // zero for a room
}

// roomKey is the key of room's messages.
func roomKey(room string) key { return key{room: room} }

// dmKey is the key of the dms between x and y, in either order.
func dmKey(x, y string) key { return key{conv: conversationOf(x, y)} }

// isDM reports whether k is a conversation. Room names are never empty
// (names.ValidRoom), so an empty room is the mark of one.
func (k key) isDM() bool { return k.room == "" }

// log is the store log of k, which gap repairs and history read.
func (k key) log() store.Log {
	if k.isDM() {
		return store.Between(k.conv.a, k.conv.b)
	}
	return store.Room(k.room)
}

// String names k for log lines as the store's errors do: "room lobby",
// "dm alice.bob".
func (k key) String() string { return k.log().Name }
