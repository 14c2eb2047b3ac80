package proto

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
)

// Presence events and requests (docs/protocol.md).
const (
	TypePresence = "presence"

	// EventJoin and EventLeave are the values of a presence event's and a
	// session report's event field.
	EventJoin  = "join"
	EventLeave = "leave"
)

// Presence tells a room's members that a user's first session joined it
// or its last one left it.
type Presence struct {
	Type  string `json:"type"`
	Room  string `json:"room"`
	Event string `json:"event"`
	User  string `json:"user"`
	TS    int64  `json:"ts"`
}

// Who answers who.
type Who struct {
	Type  string   `json:"type"`
	Room  string   `json:"room"`
	Users []string `json:"users"`
}

// WhoReply is the presence service's answer on chat.presence.who.<room>.
type WhoReply struct {
	Users []string `json:"users"`
}

// SessionReport is what an edge publishes on chat.presence.session.<room>
// when one of its sessions joins or leaves the room.
type SessionReport struct {
	Event   string `json:"event"`
	Room    string `json:"room"`
	User    string `json:"user"`
	Edge    string `json:"edge"`
	Session string `json:"session"`
}

// Heartbeat is what an edge publishes on chat.edge.<edge>.heartbeat every
// 5 s: the number of open sockets and the Digest of its session-room
// pairs.
type Heartbeat struct {
	Edge     string `json:"edge"`
	Sessions int    `json:"sessions"`
	Digest   string `json:"digest"`
}

// SyncRequest asks an edge for one page of its state. Page 0 takes a new
// snapshot; later pages name it with Snapshot, so that every page comes
// from the same moment (a request without it gets the newest snapshot).
type SyncRequest struct {
	Page     int    `json:"page"`
	Snapshot string `json:"snapshot,omitempty"`
}

// SyncPage is one page of an edge's state. A session may span pages when
// its rooms do not fit in one; the receiver merges them. Error is set, and
// the rest empty, when the snapshot asked for is gone.
type SyncPage struct {
	Edge     string        `json:"edge"`
	Page     int           `json:"page"`
	Pages    int           `json:"pages"`
	Snapshot string        `json:"snapshot,omitempty"`
	Sessions []SyncSession `json:"sessions"`
	Error    string        `json:"error,omitempty"`
}

// SyncSession is one session of a SyncPage.
type SyncSession struct {
	Session string   `json:"session"`
	User    string   `json:"user"`
	Rooms   []string `json:"rooms"`
}

// MaxSyncPage is the largest encoded SyncPage (docs/protocol.md: under 512 KiB).
const MaxSyncPage = 500 << 10

// Digest is a hash of a set of session-room pairs that is kept up to date
// one pair at a time: the XOR of a SHA-256 of each pair, so equal sets have
// equal digests whatever the order they were built in. Edge and presence
// compute it the same way; a difference means their views differ.
type Digest [2]uint64

// Toggle adds the pair (session, room) when absent from the set the digest
// stands for, and removes it when present.
func (d *Digest) Toggle(session, room string) {
	h := sha256.New()
	h.Write([]byte(session))
	h.Write([]byte{0})
	h.Write([]byte(room))
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	d[0] ^= binary.BigEndian.Uint64(sum[0:8])
	d[1] ^= binary.BigEndian.Uint64(sum[8:16])
}

// String is the digest as sent in a heartbeat: 32 hex digits.
func (d Digest) String() string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[0:8], d[0])
	binary.BigEndian.PutUint64(b[8:16], d[1])
	return hex.EncodeToString(b[:])
}

// SyncPages splits sessions, sorted by the caller, into encoded pages of
// at most MaxSyncPage bytes each, for edge (Page, Pages and Snapshot
// filled in). A session whose rooms do not fit in one page is split over
// several. There is always at least one page.
func SyncPages(edge, snapshot string, sessions []SyncSession) [][]byte {
	var pages [][]SyncSession
	var cur []SyncSession
	size := 0
	const envelope = 256 // edge, page, pages, snapshot and punctuation
	flush := func() {
		pages = append(pages, cur)
		cur, size = nil, 0
	}
	for _, s := range sessions {
		base := len(s.Session) + len(s.User) + 48
		part := SyncSession{Session: s.Session, User: s.User, Rooms: []string{}}
		partSize := base
		for _, room := range s.Rooms {
			n := len(room) + 3
			if envelope+size+partSize+n > MaxSyncPage && (len(cur) > 0 || len(part.Rooms) > 0) {
				if len(part.Rooms) > 0 {
					cur = append(cur, part)
					part = SyncSession{Session: s.Session, User: s.User, Rooms: []string{}}
				}
				flush()
				partSize = base
			}
			part.Rooms = append(part.Rooms, room)
			partSize += n
		}
		cur = append(cur, part)
		size += partSize
	}
	if len(cur) > 0 || len(pages) == 0 {
		flush()
	}
	out := make([][]byte, len(pages))
	for i, p := range pages {
		if p == nil {
			p = []SyncSession{}
		}
		b, err := json.Marshal(SyncPage{Edge: edge, Page: i, Pages: len(pages), Snapshot: snapshot, Sessions: p})
		if err != nil {
			panic("proto: encoding a sync page: " + err.Error())
		}
		out[i] = b
	}
	return out
}
