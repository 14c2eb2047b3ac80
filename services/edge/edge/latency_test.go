package edge

import (
	"testing"

	"github.com/natter-chat/natter/shared/proto"
)

// storedTS reads the ts of what the broadcaster stores, room messages and
// dms alike, and finds none where the last member is not a top-level ts.
func TestStoredTS(t *testing.T) {
	const ts = 1764000000123
	for _, tt := range []struct {
		name string
		data []byte
		want int64
	}{
		{"message", proto.Encode(proto.Message{Type: proto.TypeMessage, Room: "lobby", From: "alice", Text: `say "ts":5}`, ID: "1", TS: ts}), ts},
		{"message without id", proto.Encode(proto.Message{Type: proto.TypeMessage, Room: "lobby", From: "alice", Text: "hi", TS: ts}), ts},
		{"dm", proto.Encode(proto.DM{Type: proto.TypeDM, From: "alice", To: "bob", Text: "hi", ID: "x", TS: ts}), ts},
		{"only ts", []byte(`{"ts":42}`), 42},
		{"ts not last", []byte(`{"ts":42,"text":"hi"}`), 0},
		{"nested ts", []byte(`{"a":{"ts":42}}`), 0},
		{"a key ending in ts", []byte(`{"a\"ts":42}`), 0},
		{"spaced", []byte(`{"a":1, "ts":42}`), 0},
		{"negative", []byte(`{"ts":-42}`), 0},
		{"fraction", []byte(`{"ts":4.2}`), 0},
		{"too long", []byte(`{"ts":1234567890123456789}`), 0},
		{"no digits", []byte(`{"ts":}`), 0},
		{"empty object", []byte(`{}`), 0},
		{"empty", nil, 0},
	} {
		if got := storedTS(tt.data); got != tt.want {
			t.Errorf("%s: storedTS(%s) = %d, want %d", tt.name, tt.data, got, tt.want)
		}
	}
}
