package proto

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		line  string
		code  string // "" when accepted
		rawID string
	}{
		{`{"type":"join","room":"lobby"}`, "", ""},
		{`{"type":"join","room":"lobby","since":0}`, "", ""},
		{`{"type":"join","room":"lobby","extra":[1,{"x":2}]}`, "", ""},
		{`{"type":"message","room":"lobby","text":"hi","id":"1"}`, "", `"1"`},
		{`{"type":"history","dm":"bob","after":3,"limit":500}`, "", ""},
		{`{"type":"dms"}`, "", ""},
		{`{"type":"who","room":"r"}`, "", ""},
		{`{"type":"typing","room":"r"}`, "", ""},
		{`{"type":"dm","to":"bob","text":"x"}`, "", ""},
		{`{"type":"message","room":"r","file":"0123456789abcdef0123456789abcdef"}`, "", ""},
		{`{"type":"dm","to":"bob","text":" ","file":"0123456789abcdef0123456789abcdef"}`, "", ""},
		{`{"type":"message","room":"r","text":"x","file":"../../etc/passwd"}`, CodeBadRequest, ""},
		{`{"type":"message","room":"r","file":42}`, CodeBadRequest, ""},
		{`{"type":"join","room":"r","file":"not even looked at"}`, "", ""},
		{`nope`, CodeBadRequest, ""},
		{`"join"`, CodeBadRequest, ""},
		{`null`, CodeBadRequest, ""},
		{`{"id":"x"}`, CodeBadRequest, `"x"`},
		{`{"type":null}`, CodeBadRequest, ""},
		{`{"type":["join"],"id":3}`, CodeBadRequest, "3"},
		{`{"type":"join","room":null}`, CodeBadRequest, ""},
		{`{"type":"join","room":"lobby","since":1e2}`, CodeBadRequest, ""},
		{`{"type":"join","room":"lobby","since":18446744073709551616}`, CodeBadRequest, ""},
		{`{"type":"history","room":"r","limit":-5}`, CodeBadRequest, ""},
		{`{"type":"history"}`, CodeBadRequest, ""},
		{`{"type":"dm","text":"x"}`, CodeBadRequest, ""},
		{`{"type":"dm","to":"bob","text":""}`, CodeBadRequest, ""},
		{`{"type":"message","room":"r","text":"\u00a0\u2003"}`, CodeBadRequest, ""},
		{`{"type":"bogus","room":5}`, CodeUnknownType, ""},     // the fields of an unknown type are unknown
		{`{"TYPE":"join","ROOM":"lobby"}`, CodeBadRequest, ""}, // keys are case-sensitive
		{`{"type":"join","Room":"lobby","room":"r"}`, "", ""},
		{`{"type":"message","room":"r","text":"x","ID":"1"}`, "", ""},
		{`{"type":"join","room":"lobby","id":7}`, "", "7"},   // id is not a field of join
		{`{"type":"join","room":"lobby","id":""}`, "", `""`}, // nor is an empty one
		{`{"type":"join","room":"lobby","text":5,"limit":-1}`, "", ""},
		{`{"type":"leave","id":null}`, CodeBadRequest, "null"}, // a null id is still echoed
		{`{"type":"bogus"}`, CodeUnknownType, ""},
		{`{"type":"JOIN","room":"r"}`, CodeUnknownType, ""},
		{`{"type":"join","room":""}`, CodeInvalidRoom, ""},
		{`{"type":"history","dm":"a b"}`, CodeInvalidUser, ""},
		{`{"type":"dm","to":"bob.x","text":"x"}`, CodeInvalidUser, ""},
		{`{"type":"message","room":"R","text":""}`, CodeBadRequest, ""}, // blank before invalid_room
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			req, err := ParseRequest([]byte(tt.line))
			code := ""
			if err != nil {
				code = err.Code
				if err.Message == "" {
					t.Error("error without a message")
				}
			}
			if code != tt.code {
				t.Fatalf("code %q (%v), want %q", code, err, tt.code)
			}
			if string(req.RawID) != tt.rawID {
				t.Fatalf("raw id %s, want %s", req.RawID, tt.rawID)
			}
		})
	}
}

func TestCheckPost(t *testing.T) {
	for _, tt := range []struct {
		name, text, file, id, code string // code "": accepted
	}{
		{"4000 code points", strings.Repeat("😀", 4000), "", "", ""},
		{"4001 characters", strings.Repeat("a", 4001), "", "", CodeTooLong},
		{"a 65-byte id", "x", "", strings.Repeat("i", 65), CodeTooLong},
		{"blank", " \t", "", "", CodeBadRequest},
		{"blank with a file", " ", strings.Repeat("0f", 16), "", ""},
		{"a file and 4001 characters", strings.Repeat("a", 4001), strings.Repeat("0f", 16), "", CodeTooLong},
		{"a file ID too short", "", strings.Repeat("0", 31), "", CodeBadRequest},
		{"a file ID in capitals", "", strings.Repeat("A", 32), "", CodeBadRequest},
		{"a file ID with a dot", "", strings.Repeat("a", 31) + ".", "", CodeBadRequest},
		{"a file ID of 65", "", strings.Repeat("a", 65), "", CodeBadRequest},
		{"a bot's file ID", "", "report-2026-12-07_weekly-chart-0001", "", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code := ""
			if e := CheckPost(tt.text, tt.file, tt.id, 4000); e != nil {
				code = e.Code
			}
			if code != tt.code {
				t.Errorf("code %q, want %q", code, tt.code)
			}
		})
	}
}

func TestParsePost(t *testing.T) {
	tests := []struct{ data, code string }{
		{`{"from":"bot","text":"hi"}`, ""},
		{`{"room":"r","from":"a","text":"hi","id":"1","edge":"e","session":"s","extra":1}`, ""},
		{`{"FROM":"bot","text":"hi"}`, CodeBadRequest},
		{`{"from":"bot"}`, CodeBadRequest},
		{`{"from":"bot","file":"0123456789abcdef0123456789abcdef"}`, ""},
		{`{"from":"bot","text":"","file":"0123456789abcdef0123456789abcdef"}`, ""},
		{`{"from":"bot","text":"x","file":7}`, CodeBadRequest},
		{`{"from":"bot","text":5}`, CodeBadRequest},
		{`{"from":"bot","text":"x","id":7}`, CodeBadRequest},
		{`{"from":"bot","text":"x","id":""}`, CodeBadRequest},
		{`[1]`, CodeBadRequest},
		{`null`, CodeBadRequest},
	}
	for _, tt := range tests {
		_, err := ParsePost([]byte(tt.data))
		code := ""
		if err != nil {
			code = err.Code
		}
		if code != tt.code {
			t.Errorf("%s: code %q, want %q", tt.data, code, tt.code)
		}
	}
}

func TestLines(t *testing.T) {
	var got []string
	Lines([]byte("a\n\n  \nb\r\n c \n"), func(l []byte) bool {
		got = append(got, string(l))
		return true
	})
	if strings.Join(got, "|") != "a|b\r| c " {
		t.Fatalf("lines %q", got)
	}
	n := 0
	Lines([]byte("a\nb\nc"), func([]byte) bool { n++; return n < 2 })
	if n != 2 {
		t.Fatalf("did not stop early: %d", n)
	}
}

func TestFrames(t *testing.T) {
	ev := func(n int) []byte { return []byte(strings.Repeat("x", n)) }
	var frames []string
	emit := func(f []byte) error { frames = append(frames, string(f)); return nil }
	if _, err := Frames([][]byte{ev(4), ev(4), ev(4), ev(20), ev(3)}, 10, nil, emit); err != nil {
		t.Fatal(err)
	}
	want := []string{"xxxx\nxxxx", "xxxx", strings.Repeat("x", 20), "xxx"}
	if strings.Join(frames, "|") != strings.Join(want, "|") {
		t.Fatalf("frames %q, want %q", frames, want)
	}
}

func TestWithSeq(t *testing.T) {
	payload := Encode(Message{Type: "message", Room: "r", From: "a", Text: "t", TS: 5})
	var m Message
	if err := json.Unmarshal(WithSeq(payload, 42), &m); err != nil || m.Seq != 42 || m.Text != "t" || m.TS != 5 {
		t.Fatalf("%s -> %+v %v", WithSeq(payload, 42), m, err)
	}
	if got := string(WithSeq([]byte("{}"), 7)); got != `{"seq":7}` {
		t.Fatalf("empty object: %s", got)
	}
}

// FuzzFrame runs arbitrary frames through the decoder: it must never
// panic, every object gets a verdict, and an accepted request is one the
// server can act on.
func FuzzFrame(f *testing.F) {
	for _, s := range []string{
		`{"type":"join","room":"lobby","since":0}`,
		"{\"type\":\"message\",\"room\":\"r\",\"text\":\"hi\",\"id\":\"1\"}\n{\"type\":\"leave\",\"room\":\"r\"}\n",
		`{"type":"history","room":"r","before":10,"limit":2}`,
		`{"type":"dm","to":"bob","text":"😀"}`,
		`{"type":5,"id":{"x":[1]}}`,
		"\n\n",
		`{"type":"join","room":"lobby","since":-1.5e3}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		Lines(frame, func(line []byte) bool {
			req, err := ParseRequest(line)
			if err != nil {
				if err.Code == "" || err.Message == "" {
					t.Fatalf("error without code or message for %q", line)
				}
				if req.RawID != nil && !json.Valid(req.RawID) {
					t.Fatalf("raw id %q is not JSON", req.RawID)
				}
				return true
			}
			switch req.Type {
			case TypeJoin, TypeLeave, TypeTyping, TypeWho:
				if req.Room == nil {
					t.Fatalf("%s accepted without room: %q", req.Type, line)
				}
			case TypeMessage, TypeDM:
				if req.Text == nil || Blank(*req.Text) {
					t.Fatalf("%s accepted without text: %q", req.Type, line)
				}
			case TypeHistory, TypeDMs:
			default:
				t.Fatalf("unknown type %q accepted", req.Type)
			}
			for _, n := range []*int64{req.Since, req.Before, req.After, req.Limit} {
				if n != nil && *n < 0 {
					t.Fatalf("negative number accepted: %q", line)
				}
			}
			return true
		})
	})
}

func BenchmarkParseRequest(b *testing.B) {
	line := []byte(`{"type":"message","room":"lobby","text":"hello there, how are you doing today?","id":"c0ffee-42"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseRequest(line); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeMessage(b *testing.B) {
	m := Message{Type: TypeMessage, Room: "lobby", From: "alice", Text: "hello there, how are you doing today?", ID: "c0ffee-42", TS: 1764000000000}
	b.ReportAllocs()
	for b.Loop() {
		_ = Encode(m)
	}
}

func BenchmarkWithSeq(b *testing.B) {
	payload := Encode(Message{Type: TypeMessage, Room: "lobby", From: "alice", Text: "hello there, how are you doing today?", ID: "c0ffee-42", TS: 1764000000000})
	b.ReportAllocs()
	for b.Loop() {
		_ = WithSeq(payload, 123456789)
	}
}

func BenchmarkFrames(b *testing.B) {
	line := Encode(Message{Type: TypeMessage, Room: "lobby", From: "alice", Text: "hello there, how are you doing today?", ID: "c0ffee-42", Seq: 42, TS: 1764000000000})
	events := make([][]byte, 64)
	for i := range events {
		events[i] = line
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf, _ = Frames(events, MaxFrameBytes, buf, func([]byte) error { return nil })
	}
}

func TestDigestIsASetHash(t *testing.T) {
	var a, b Digest
	a.Toggle("s1", "lobby")
	a.Toggle("s2", "lobby")
	a.Toggle("s1", "dev")
	b.Toggle("s1", "dev")
	b.Toggle("s2", "lobby")
	b.Toggle("s1", "lobby")
	if a != b || a.String() != b.String() || len(a.String()) != 32 {
		t.Fatalf("same set, different digests: %s %s", a, b)
	}
	// The separator keeps ("s1x", "y") and ("s1", "xy") apart.
	var c, d Digest
	c.Toggle("s1x", "y")
	d.Toggle("s1", "xy")
	if c == d {
		t.Fatal("different pairs, same digest")
	}
	a.Toggle("s1", "dev")
	if a == b {
		t.Fatal("removing a pair left the digest unchanged")
	}
	a.Toggle("s1", "dev")
	if a != b {
		t.Fatal("adding the pair back did not restore the digest")
	}
	if (Digest{}).String() != strings.Repeat("0", 32) {
		t.Fatal("the empty set's digest is not zero")
	}
}

func TestSyncPages(t *testing.T) {
	rooms := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s-%060d", prefix, i)
		}
		return out
	}
	cases := []struct {
		name     string
		sessions []SyncSession
	}{
		{"none", nil},
		{"one", []SyncSession{{Session: "a", User: "ann", Rooms: []string{"lobby"}}}},
		{"many small", func() []SyncSession {
			var out []SyncSession
			for i := range 20000 {
				out = append(out, SyncSession{Session: fmt.Sprintf("s%06d", i), User: "u", Rooms: rooms("r", 3)})
			}
			return out
		}()},
		{"one huge session", []SyncSession{{Session: "big", User: "bob", Rooms: rooms("r", 20000)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pages := SyncPages("e1", "snap", tc.sessions)
			if len(pages) == 0 {
				t.Fatal("no page")
			}
			got := map[string][]string{}
			for i, b := range pages {
				if len(b) >= 512<<10 {
					t.Fatalf("page %d is %d bytes", i, len(b))
				}
				var p SyncPage
				if err := json.Unmarshal(b, &p); err != nil {
					t.Fatal(err)
				}
				if p.Edge != "e1" || p.Page != i || p.Pages != len(pages) || p.Snapshot != "snap" || p.Sessions == nil {
					t.Fatalf("page %d header: %+v", i, p)
				}
				for _, s := range p.Sessions {
					got[s.Session] = append(got[s.Session], s.Rooms...)
				}
			}
			want := map[string][]string{}
			for _, s := range tc.sessions {
				want[s.Session] = s.Rooms
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("pages hold %d sessions, want %d (or rooms differ)", len(got), len(want))
			}
		})
	}
}

// EncodeJoined writes what Encode writes for the same Joined, whether the
// users come in one part or several, and leaves them out with none.
func TestEncodeJoined(t *testing.T) {
	yes, no := true, false
	for _, tc := range []struct {
		name      string
		room      string
		users     *[]string
		seq       uint64
		recovered *bool
	}{
		{"no users", "lobby", nil, 0, nil},
		{"empty", "lobby", &[]string{}, 7, nil},
		{"users", "r-1", &[]string{"ann", "bob", "<zed>"}, 18446744073709551615, &yes},
		{"not recovered", "r_2.x", &[]string{"ann"}, 3, &no},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := Encode(Joined{Type: TypeJoined, Room: tc.room, Users: tc.users, Seq: tc.seq, Recovered: tc.recovered})
			var parts [][]byte
			if tc.users != nil {
				whole, err := json.Marshal(*tc.users)
				if err != nil {
					t.Fatal(err)
				}
				// Split anywhere: the parts are only concatenated.
				parts = [][]byte{whole[:len(whole)/2], whole[len(whole)/2:]}
			}
			if got := EncodeJoined(tc.room, tc.seq, tc.recovered, parts...); string(got) != string(want) {
				t.Errorf("EncodeJoined = %s\nEncode      = %s", got, want)
			}
		})
	}
}
