package proto

import (
	"encoding/json"
	"strconv"
)

// Server event types.
const (
	TypeWelcome = "welcome"
	TypeJoined  = "joined"
	TypeLeft    = "left"
	TypeAck     = "ack"
	TypeError   = "error"
)

// History answers history: stored messages (each with its seq), oldest
// first; More when further messages exist in the direction asked.
type History struct {
	Type     string            `json:"type"`
	Room     string            `json:"room,omitempty"`
	DM       string            `json:"dm,omitempty"`
	Messages []json.RawMessage `json:"messages"`
	More     bool              `json:"more"`
}

// Welcome is the first event after the upgrade.
type Welcome struct {
	Type    string `json:"type"`
	User    string `json:"user"`
	Session string `json:"session"`
}

// Joined answers join. Users is left out while presence is unavailable;
// Recovered is set only for a join with since.
type Joined struct {
	Type      string    `json:"type"`
	Room      string    `json:"room"`
	Users     *[]string `json:"users,omitempty"`
	Seq       uint64    `json:"seq"`
	Recovered *bool     `json:"recovered,omitempty"`
}

// Left answers leave.
type Left struct {
	Type string `json:"type"`
	Room string `json:"room"`
}

// Message is a stored room message. It is stored in JetStream without Seq
// (the stream assigns it: Nats-Sequence) and sent to clients with it.
type Message struct {
	Type string `json:"type"`
	Room string `json:"room"`
	From string `json:"from"`
	Text string `json:"text"`
	File *File  `json:"file,omitempty"`
	ID   string `json:"id,omitempty"`
	Seq  uint64 `json:"seq,omitempty"`
	TS   int64  `json:"ts"`
}

// File is a shared file as a stored message or dm carries it: its ID
// (GET /files/ID), its name, size in bytes, and the type the server found
// in its first bytes.
type File struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
	Type string `json:"type"`
}

// DM is a stored direct message. Like Message, it is stored without Seq
// and sent to clients with it.
type DM struct {
	Type string `json:"type"`
	From string `json:"from"`
	To   string `json:"to"`
	Text string `json:"text"`
	File *File  `json:"file,omitempty"`
	ID   string `json:"id,omitempty"`
	Seq  uint64 `json:"seq,omitempty"`
	TS   int64  `json:"ts"`
}

// Typing is a room member's typing signal; never stored.
type Typing struct {
	Type string `json:"type"`
	Room string `json:"room"`
	User string `json:"user"`
}

// DMs answers dms: the user's conversations, newest first.
type DMs struct {
	Type          string         `json:"type"`
	Conversations []Conversation `json:"conversations"`
}

// Conversation is one entry of DMs: the other party (the user itself for
// notes to oneself), and the seq and ts of the newest dm.
type Conversation struct {
	With string `json:"with"`
	Seq  uint64 `json:"seq"`
	TS   int64  `json:"ts"`
}

// Ack tells the sender that the post with ID is stored as Seq.
type Ack struct {
	Type string `json:"type"`
	ID   string `json:"id"`
	Seq  uint64 `json:"seq"`
}

// ErrorEvent refuses one request; the connection stays open.
type ErrorEvent struct {
	Type    string          `json:"type"`
	Code    string          `json:"code"`
	Message string          `json:"message"`
	ID      json.RawMessage `json:"id,omitempty"`
}

// Encode marshals an event into one line (no newline). Events are plain
// structs of strings and numbers, so marshalling cannot fail.
func Encode(ev any) []byte {
	b, err := json.Marshal(ev)
	if err != nil {
		panic("proto: encoding " + err.Error())
	}
	return b
}

// EncodeJoined encodes a joined answer exactly as Encode encodes Joined,
// with its users already encoded: users are the parts of their JSON
// array, in order; none leaves the field out, as a nil Users does. A big
// room's list is encoded once and shared by the joins that answer with
// it: when thousands rejoin a room of thousands, encoding the list for
// each was a third of the joins' time.
func EncodeJoined(room string, seq uint64, recovered *bool, users ...[]byte) []byte {
	quoted, err := json.Marshal(room)
	if err != nil {
		panic("proto: encoding " + err.Error())
	}
	n := len(`{"type":"joined","room":,"users":,"seq":,"recovered":false}`) + len(quoted) + 20
	for _, p := range users {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, `{"type":"joined","room":`...)
	out = append(out, quoted...)
	if len(users) > 0 {
		out = append(out, `,"users":`...)
		for _, p := range users {
			out = append(out, p...)
		}
	}
	out = append(out, `,"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	if recovered != nil {
		out = append(out, `,"recovered":`...)
		out = strconv.AppendBool(out, *recovered)
	}
	return append(out, '}')
}

// WithSeq returns the stored message payload with "seq" added as the first
// field, without decoding it: the edge does this once per room and event,
// not once per recipient. payload must be a JSON object.
func WithSeq(payload []byte, seq uint64) []byte {
	out := make([]byte, 0, len(payload)+28)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	if len(payload) > 2 {
		out = append(out, ',')
	}
	return append(out, payload[1:]...)
}

// Post is what an edge (or a bot) publishes on chat.in.room.<room>, or
// on chat.in.dm.<to> for a dm. Edge and Session are left out by bots;
// Room (To) may be left out, the subject names it.
type Post struct {
	Room    string `json:"room,omitempty"`
	To      string `json:"to,omitempty"`
	From    string `json:"from"`
	Text    string `json:"text"`
	File    string `json:"file,omitempty"` // a file ID, to share
	ID      string `json:"id,omitempty"`
	Edge    string `json:"edge,omitempty"`
	Session string `json:"session,omitempty"`
}

// PostReply is the broadcaster's answer to a post sent as a request: Seq
// when stored (the original seq for a repeated id), or an error Code.
type PostReply struct {
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Code      string `json:"code,omitempty"`
	Message   string `json:"message,omitempty"`
}
