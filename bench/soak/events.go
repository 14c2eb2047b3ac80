package main

import (
	"bytes"
	"encoding/json"
	"strconv"
)

// event is any server event but a room message, decoded with
// encoding/json: they come some hundreds a second, the room messages a
// million, which parseRoomMessage reads without decoding.
type event struct {
	Type          string            `json:"type"`
	Seq           uint64            `json:"seq"`
	Room          string            `json:"room"`
	From          string            `json:"from"`
	To            string            `json:"to"`
	Text          string            `json:"text"`
	ID            string            `json:"id"`
	Code          string            `json:"code"`
	Message       string            `json:"message"`
	Recovered     *bool             `json:"recovered"`
	DM            string            `json:"dm"`
	Messages      []json.RawMessage `json:"messages"`
	More          bool              `json:"more"`
	Conversations []struct {
		With string `json:"with"`
		Seq  uint64 `json:"seq"`
	} `json:"conversations"`
}

var (
	msgSeqPrefix = []byte(`{"seq":`)
	msgTypeRoom  = []byte(`,"type":"message","room":"`)
	msgText      = []byte(`"text":"`)
)

// parseRoomMessage reads a room message as the edge sends it (the stored
// event with "seq" put first, docs/protocol.md): its seq, its room and
// the send time the generator put in its text (0 for another text). ok
// is false for any other line.
func parseRoomMessage(line []byte) (seq uint64, room []byte, sent int64, ok bool) {
	rest, found := bytes.CutPrefix(line, msgSeqPrefix)
	if !found {
		return 0, nil, 0, false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		seq = seq*10 + uint64(rest[i]-'0')
		i++
	}
	if i == 0 {
		return 0, nil, 0, false
	}
	if rest, found = bytes.CutPrefix(rest[i:], msgTypeRoom); !found {
		return 0, nil, 0, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return 0, nil, 0, false
	}
	room, rest = rest[:end], rest[end:]
	if _, after, found := bytes.Cut(rest, msgText); found {
		sent = sendTime(after)
	}
	return seq, room, sent, true
}

// A text the generator sends is "lg <sendUnixNano> <user>-<n> <padding>",
// as loadgen's.
func postText(now int64, user string, n int, pad string) string {
	return "lg " + strconv.FormatInt(now, 10) + " " + user + "-" + strconv.Itoa(n) + " " + pad
}

// sendTime is the send time at the start of a text, 0 when it has none.
func sendTime(text []byte) int64 {
	rest, ok := bytes.CutPrefix(text, []byte("lg "))
	if !ok {
		return 0
	}
	var n int64
	for i := 0; i < len(rest) && rest[i] >= '0' && rest[i] <= '9'; i++ {
		n = n*10 + int64(rest[i]-'0')
	}
	return n
}
