package main

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/natstest"
)

// Every bad request object gets its error code (with the id it carried),
// stores nothing, and leaves the connection usable.
func TestBadInputGetsItsError(t *testing.T) {
	t.Parallel()
	ns, e := setup(t)
	nc := natstest.Connect(t, ns)
	c := dial(t, e.url, "alice")
	c.join("lobby")

	tests := []struct {
		name, frame, code, id string
	}{
		{"not json", `hello`, "bad_request", ""},
		{"not an object", `[1,2]`, "bad_request", ""},
		{"no type", `{"room":"lobby"}`, "bad_request", ""},
		{"type not a string", `{"type":5,"id":"t"}`, "bad_request", `"t"`},
		{"join without room", `{"type":"join"}`, "bad_request", ""},
		{"mistyped room, numeric id echoed", `{"type":"join","room":5,"id":7}`, "bad_request", "7"},
		{"mistyped text", `{"type":"message","room":"lobby","text":1,"id":"m"}`, "bad_request", `"m"`},
		{"message without text", `{"type":"message","room":"lobby","id":"m"}`, "bad_request", `"m"`},
		{"blank text", `{"type":"message","room":"lobby","text":" \n\t ","id":"b"}`, "bad_request", `"b"`},
		{"empty id", `{"type":"message","room":"lobby","text":"x","id":""}`, "bad_request", `""`},
		{"id not a string", `{"type":"message","room":"lobby","text":"x","id":{"a":1}}`, "bad_request", `{"a":1}`},
		{"negative since", `{"type":"join","room":"lobby","since":-1}`, "bad_request", ""},
		{"fractional since", `{"type":"join","room":"lobby","since":1.5}`, "bad_request", ""},
		{"since as string", `{"type":"join","room":"lobby","since":"3"}`, "bad_request", ""},
		{"room and dm together", `{"type":"history","room":"lobby","dm":"bob"}`, "bad_request", ""},
		{"before and after together", `{"type":"history","room":"lobby","before":5,"after":1}`, "bad_request", ""},
		{"unknown type", `{"type":"shout","id":"u"}`, "unknown_type", `"u"`},
		{"invalid room", `{"type":"join","room":"Lobby"}`, "invalid_room", ""},
		{"room with a dot", `{"type":"message","room":"a.b","text":"x","id":"d"}`, "invalid_room", `"d"`},
		{"room wildcard", `{"type":"join","room":">"}`, "invalid_room", ""},
		{"invalid user", `{"type":"dm","to":"no spaces","text":"x"}`, "invalid_user", ""},
		{"message to a room not joined", `{"type":"message","room":"elsewhere","text":"x","id":"n"}`, "not_joined", `"n"`},
		{"leave a room not joined", `{"type":"leave","room":"elsewhere"}`, "not_joined", ""},
		{"typing in a room not joined", `{"type":"typing","room":"elsewhere"}`, "not_joined", ""},
		{"text too long", fmt.Sprintf(`{"type":"message","room":"lobby","text":%q,"id":"l"}`, strings.Repeat("é", 4001)), "too_long", `"l"`},
		{"id too long", fmt.Sprintf(`{"type":"message","room":"lobby","text":"x","id":%q}`, strings.Repeat("i", 65)), "too_long", fmt.Sprintf("%q", strings.Repeat("i", 65))},
		{"typing without room", `{"type":"typing"}`, "bad_request", ""},
		{"typing in an invalid room", `{"type":"typing","room":"Bad Room"}`, "invalid_room", ""},
		{"dm id too long", fmt.Sprintf(`{"type":"dm","to":"bob","text":"x","id":%q}`, strings.Repeat("i", 65)), "too_long", fmt.Sprintf("%q", strings.Repeat("i", 65))},
		{"dm text too long, its id echoed", fmt.Sprintf(`{"type":"dm","to":"bob","text":%q,"id":"t"}`, strings.Repeat("é", 4001)), "too_long", `"t"`},
		{"dm to an invalid user, its id echoed", `{"type":"dm","to":"a.b","text":"x","id":"d"}`, "invalid_user", `"d"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.t = t
			c.sendRaw(tt.frame)
			ev := c.expect("error")
			if ev.Code != tt.code || ev.Message == "" {
				t.Fatalf("got %s, want code %s", ev.raw, tt.code)
			}
			if string(ev.ID) != tt.id {
				t.Fatalf("error id %s, want %s", ev.ID, tt.id)
			}
		})
	}
	c.t = t
	if n := streamMsgs(t, nc); n != 0 {
		t.Fatalf("%d messages stored by refused requests", n)
	}
	// Still usable: a frame mixing bad and good objects handles each.
	c.sendRaw("garbage\n\n{\"type\":\"message\",\"room\":\"lobby\",\"text\":\"4000 code points fit\",\"id\":\"ok\"}\n")
	if ev := c.expect("error"); ev.Code != "bad_request" {
		t.Fatalf("got %s", ev.raw)
	}
	// Its echo may come before or after its ack: both, before the flood.
	for ack, echo := false, false; !ack || !echo; {
		switch ev := c.next(); ev.Type {
		case "ack":
			ack = true
		case "message":
			echo = true
		default:
			t.Fatalf("got %s", ev.raw)
		}
	}
	// A flood of bad objects gets every error and no disconnect: answers
	// wait for the client to read them, they never count as a slow client.
	const flood = 20000
	c.sendRaw(strings.Repeat("{}\n", flood))
	for i := range flood {
		if ev := c.next(); ev.Type != "error" || ev.Code != "bad_request" {
			t.Fatalf("answer %d: %s", i, ev.raw)
		}
	}
	// The longest text is accepted: 4,000 code points of 4 bytes each.
	c.post("lobby", strings.Repeat("😀", 4000), "longest")
	if n := streamMsgs(t, nc); n != 2 {
		t.Fatalf("%d messages stored, want 2", n)
	}
}

func TestTooManyRooms(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Limits.MaxRooms = 3 })
	c := dial(t, e.url, "alice")
	for i := range 3 {
		c.join(fmt.Sprintf("r%d", i))
	}
	c.send(map[string]any{"type": "join", "room": "r3", "id": "j"})
	if ev := c.expect("error"); ev.Code != "too_many_rooms" || ev.id() != "j" {
		t.Fatalf("got %s", ev.raw)
	}
	c.join("r0") // joining a joined room is not one more
	c.send(map[string]any{"type": "leave", "room": "r1"})
	c.expect("left")
	c.join("r3")
}

// Protocol violations close the connection with the RFC 6455 code.
func TestProtocolViolationsClose(t *testing.T) {
	t.Parallel()
	_, e := setup(t)
	tests := []struct {
		name  string
		write func(*websocket.Conn) error
		code  int
	}{
		{"binary frame", func(c *websocket.Conn) error {
			return c.WriteMessage(websocket.BinaryMessage, []byte(`{"type":"join","room":"x"}`))
		}, websocket.CloseUnsupportedData},
		{"invalid UTF-8", func(c *websocket.Conn) error {
			return c.WriteMessage(websocket.TextMessage, []byte("{\"type\":\"join\",\"room\":\"\xff\"}"))
		}, websocket.CloseInvalidFramePayloadData},
		{"frame over 64 KiB", func(c *websocket.Conn) error {
			return c.WriteMessage(websocket.TextMessage, []byte(strings.Repeat(" ", 64<<10+1)))
		}, websocket.CloseMessageTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, e.url, "alice")
			if err := tt.write(c.conn); err != nil {
				t.Fatal(err)
			}
			if got := c.closeCode(); got != tt.code {
				t.Fatalf("closed with %d, want %d", got, tt.code)
			}
		})
	}
	// A frame of exactly 64 KiB is fine.
	c := dial(t, e.url, "bob")
	c.sendRaw(`{"type":"join","room":"big"}` + strings.Repeat(" ", 64<<10-28))
	c.expect("joined")
}

// Upgrades are refused before the upgrade: origin 403, bad name 400.
func TestUpgradeRefusals(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Web.AllowedOrigins = []string{"https://chat.example"} })
	host := strings.TrimPrefix(e.url, "http://")
	_, port, _ := net.SplitHostPort(host)
	p, _ := strconv.Atoi(port)
	otherPort := strconv.Itoa(p%65535 + 1) // a real port, not this one
	tests := []struct {
		name, user, origin string
		status             int
	}{
		{"no origin", "alice", "", http.StatusSwitchingProtocols},
		{"same origin", "alice", "http://" + host, http.StatusSwitchingProtocols},
		{"allowed origin", "alice", "https://chat.example", http.StatusSwitchingProtocols},
		{"foreign origin", "alice", "https://evil.example", http.StatusForbidden},
		{"same host other port", "alice", "http://127.0.0.1:" + otherPort, http.StatusForbidden},
		{"origin checked before the name", "bad name", "https://evil.example", http.StatusForbidden},
		{"missing user", "", "", http.StatusBadRequest},
		{"invalid user", "a.b", "", http.StatusBadRequest},
		{"user too long", strings.Repeat("u", 33), "", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.origin != "" {
				h.Set("Origin", tt.origin)
			}
			conn, resp, err := websocket.DefaultDialer.Dial(wsURL(e.url, tt.user), h)
			if conn != nil {
				defer conn.Close()
			}
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
		})
	}
}
