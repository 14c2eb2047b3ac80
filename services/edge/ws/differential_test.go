package ws

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The edge's Reader against gorilla/websocket's, a reader in wide use
// whose Upgrader the edge already relies on: both read the same bytes
// from a client and must deliver the same messages and control frames,
// in order, and end alike. They may differ only by design, as each case
// below says (TestReaderDifferences shows each):
//
//   - When a reader refuses, the close code is compared where both send
//     one: 1002 for what RFC 6455 calls a protocol error, 1009 for a
//     message over the limit, which both choose. Gorilla sends no close
//     frame for a 64-bit length with its top bit set, nor for lengths
//     whose sum overflows; the edge sends 1002 and 1009 for those.
//   - A close reason that is not UTF-8: the edge sends 1007 (RFC 6455
//     7.4.1, data not consistent with its type), gorilla 1002. The RFC
//     fixes neither.
//   - A close frame of one byte: the edge refuses it with 1002 (RFC 6455
//     5.5.1: a body starts with a two-byte code); gorilla reads it as a
//     close without a code.
//   - A close frame with code 1014: the edge takes it, as IANA's
//     registry of close codes has it (Bad Gateway); gorilla's table of
//     valid codes stops at 1013, and it refuses 1014 with 1002.
//   - Both check the opcode, FIN and a control frame's length from the
//     frame's first two bytes (the edge did so only once the extended
//     length had come, and took a control frame whose length was in the
//     16- or 64-bit form but at most 125, until this test showed it).
//     The edge checks the limit before the mask key, gorilla after it:
//     a stream that ends in between is refused by one and awaited by the
//     other, and the comparison then adds the missing bytes of that
//     header.
//   - Neither checks that a text message is UTF-8: the edge's caller
//     does (services/edge/edge, 1007); gorilla leaves it to its user.
//   - Pings, pongs and closes are delivered to the caller by the edge
//     and to handlers by gorilla, which here record them as the edge's
//     caller sees them (a close without a code has an empty payload) and
//     answer nothing. Both stop at a close frame, as the edge's caller
//     does (fn returns false).

// ending is how a reader left a stream.
type ending int

const (
	waiting ending = iota // between or inside frames: more may come
	closed                // at a close frame the client sent
	refused               // at a frame that breaks the protocol
)

func (e ending) String() string { return [...]string{"waiting", "closed", "refused"}[e] }

// reading is what a reader made of a stream.
type reading struct {
	got  []got  // the messages and control frames, in order
	end  ending // how it ended
	code int    // the close code sent on refusal; 0 for none
	why  string // the edge's reason for refusing
}

func (rd reading) String() string {
	var b strings.Builder
	for _, g := range rd.got {
		fmt.Fprintf(&b, "op %d %.60q, ", g.op, g.payload)
	}
	fmt.Fprintf(&b, "%v", rd.end)
	if rd.end == refused {
		fmt.Fprintf(&b, " with %d", rd.code)
	}
	if rd.why != "" {
		fmt.Fprintf(&b, ": %s", rd.why)
	}
	return b.String()
}

// edgeReads feeds stream to a Reader with limit, as the edge's client
// does: it stops at a close frame.
func edgeReads(t *testing.T, stream []byte, limit int) reading {
	t.Helper()
	r := Reader{Limit: limit}
	var rd reading
	err := r.Feed(bytes.Clone(stream), func(op Op, p []byte) bool {
		rd.got = append(rd.got, got{op, string(p)})
		if op == OpClose {
			rd.end = closed
			return false
		}
		return true
	})
	if err != nil {
		we, ok := errors.AsType[*Error](err)
		if !ok {
			t.Fatalf("edge: an error that is not an *Error: %v", err)
		}
		rd.end, rd.code, rd.why = refused, we.Code, we.Text
	}
	return rd
}

// memConn is the server's end of a connection on which a client sent
// in: reads take from in, and what the server writes goes to out.
type memConn struct {
	net.Conn // never called: gorilla only reads, writes and sets deadlines
	in       *bytes.Reader
	out      bytes.Buffer
}

func (c *memConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *memConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *memConn) Close() error                     { return nil }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

// hijackable is a ResponseWriter whose connection is conn, for gorilla's
// Upgrader.
type hijackable struct {
	*httptest.ResponseRecorder
	conn *memConn
}

func (h hijackable) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}

// gorillaReads has a server-side gorilla connection read stream, its
// read limit limit, with handlers that record pings, pongs and closes.
func gorillaReads(t *testing.T, stream []byte, limit int) reading {
	t.Helper()
	conn := &memConn{in: bytes.NewReader(stream)}
	// The edge's Upgrader's settings for reading (edge.New).
	u := websocket.Upgrader{ReadBufferSize: 1024, CheckOrigin: func(*http.Request) bool { return true }}
	req := &http.Request{Method: http.MethodGet, Header: http.Header{
		"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
		"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="},
	}}
	c, err := u.Upgrade(hijackable{httptest.NewRecorder(), conn}, req, nil)
	if err != nil {
		t.Fatalf("gorilla: upgrade: %v", err)
	}
	conn.out.Reset() // its 101: what it writes from here on are frames
	c.SetReadLimit(int64(limit))

	var rd reading
	control := func(op Op) func(string) error {
		return func(p string) error {
			rd.got = append(rd.got, got{op, p})
			return nil
		}
	}
	c.SetPingHandler(control(OpPing))
	c.SetPongHandler(control(OpPong))
	c.SetCloseHandler(func(code int, text string) error {
		p := ""
		if code != websocket.CloseNoStatusReceived {
			p = string(closePayload(code, text))
		}
		rd.got = append(rd.got, got{OpClose, p})
		rd.end = closed
		return nil
	})
	for {
		op, p, err := c.ReadMessage()
		if err == nil {
			rd.got = append(rd.got, got{Op(op), string(p)})
			continue
		}
		if rd.end == closed {
			return rd
		}
		if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
			if ce.Code != websocket.CloseAbnormalClosure {
				t.Fatalf("gorilla: %v without a close frame read", err)
			}
			return rd // the stream ended: gorilla's unexpected EOF
		}
		rd.end, rd.code = refused, sentCode(t, conn.out.Bytes())
		return rd
	}
}

// sentCode is the code of the close frame a gorilla server wrote on
// refusing, 0 when it wrote none.
func sentCode(t *testing.T, out []byte) int {
	t.Helper()
	if len(out) == 0 {
		return 0
	}
	if len(out) < 4 || out[0] != 0x80|byte(OpClose) || int(out[1]) != len(out)-2 {
		t.Fatalf("gorilla wrote %q, not one close frame", out)
	}
	return CloseCode(out[2:])
}

// head is a frame's header as a stream has it, read without checking
// anything: both readers split a stream into frames alike for as long as
// they take its frames.
type head struct {
	b0, b1 byte
	size   uint64 // the payload's length, once the extended length has come
	sized  bool   // the extended length has come
	n      int    // the header's length, mask key included when masked
}

func (h head) op() Op { return Op(h.b0 & 0x0F) }

// controlPlain reports whether the frame is a control frame with nothing
// else wrong in its first two bytes: FIN, no reserved bit, masked.
func (h head) controlPlain() bool {
	return h.op() >= OpClose && h.op() <= OpPong && h.b0&0xF0 == 0x80 && h.b1&0x80 != 0
}

// headAt reads the header at the start of s; ok is false when s does not
// hold its first two bytes.
func headAt(s []byte) (h head, ok bool) {
	if len(s) < 2 {
		return h, false
	}
	h.b0, h.b1 = s[0], s[1]
	ext := 0
	switch h.b1 & 0x7F {
	case 126:
		ext = 2
	case 127:
		ext = 8
	}
	h.n = 2 + ext
	if h.b1&0x80 != 0 {
		h.n += 4
	}
	switch {
	case ext == 0:
		h.size, h.sized = uint64(h.b1&0x7F), true
	case len(s) >= 2+ext:
		h.sized = true
		h.size = uint64(binary.BigEndian.Uint16(s[2:]))
		if ext == 8 {
			h.size = binary.BigEndian.Uint64(s[2:])
		}
	}
	return h, true
}

// difference is a frame on which the two readers differ by design.
type difference int

const (
	none            difference = iota
	oneByteClose               // a close frame of one byte
	badGatewayClose            // a close frame with code 1014
)

// frameAt reads the frame at stream[at:]: its header, its end (the
// stream's when it is not whole) and whether it is whole; ok is false
// when not even its first two bytes have come.
func frameAt(stream []byte, at int) (h head, end int, whole, ok bool) {
	if h, ok = headAt(stream[at:]); !ok {
		return h, 0, false, false
	}
	rest := uint64(len(stream) - at)
	if h.sized && uint64(h.n) <= rest && h.size <= rest-uint64(h.n) {
		return h, at + h.n + int(h.size), true, true
	}
	return h, len(stream), false, true
}

// firstDifference finds the first frame of stream on which the readers
// differ by design: its start, and its end (the stream's when the frame
// is not whole).
func firstDifference(stream []byte) (d difference, start, end int) {
	for at := 0; ; {
		h, end, whole, ok := frameAt(stream, at)
		switch {
		case !ok:
			return none, 0, 0
		case h.controlPlain() && h.op() == OpClose && h.b1&0x7F == 1 && whole:
			return oneByteClose, at, end
		case h.controlPlain() && h.op() == OpClose && h.b1&0x7F >= 2 && h.b1&0x7F <= maxControlPayload && whole &&
			closeCodeOf(stream[at:end]) == 1014:
			return badGatewayClose, at, end
		case !whole:
			return none, 0, 0
		}
		at = end
	}
}

// closeCodeOf is the code of a whole masked close frame that has one.
func closeCodeOf(frame []byte) int {
	key, p := frame[2:6], frame[6:8]
	return int(p[0]^key[0])<<8 | int(p[1]^key[1])
}

// readBoth reads stream with both readers. When one refuses a frame
// whose header the other has not all read yet, it reads again with the
// missing bytes of that header as zeros, so that both decide on it.
func readBoth(t *testing.T, stream []byte, limit int) (edge, gorilla reading) {
	t.Helper()
	edge, gorilla = edgeReads(t, stream, limit), gorillaReads(t, stream, limit)
	at, h := lastFrame(stream)
	if at < 0 {
		return edge, gorilla
	}
	have := len(stream) - at
	extEnd := h.n
	if h.b1&0x80 != 0 {
		extEnd -= 4
	}
	switch {
	case edge.end == refused && gorilla.end == waiting && have >= extEnd && have < h.n:
		// Gorilla checks the limit after the mask key.
		gorilla = gorillaReads(t, append(bytes.Clone(stream), make([]byte, h.n-have)...), limit)
	}
	return edge, gorilla
}

// lastFrame finds the frame that stream ends in, not whole, and its
// header: -1 when stream ends between frames or inside a frame's first
// two bytes.
func lastFrame(stream []byte) (int, head) {
	for at := 0; ; {
		h, end, whole, ok := frameAt(stream, at)
		switch {
		case !ok:
			return -1, h
		case !whole:
			return at, h
		}
		at = end
	}
}

// sameReading fails t unless edge and gorilla read a stream alike, up to
// the differences by design of the close codes.
func sameReading(t *testing.T, edge, gorilla reading) {
	t.Helper()
	if !slices.Equal(edge.got, gorilla.got) || edge.end != gorilla.end {
		t.Fatalf("edge: %v\ngorilla: %v", edge, gorilla)
	}
	if edge.end != refused || edge.code == gorilla.code {
		return
	}
	switch {
	case gorilla.code == 0 && edge.code == CloseProtocolError && edge.why == "frame length has its top bit set":
	case gorilla.code == 0 && edge.code == CloseMessageTooBig: // gorilla's sum of lengths overflowed
	case gorilla.code == CloseProtocolError && edge.code == CloseInvalidPayload && edge.why == "close reason is not valid UTF-8":
	default:
		t.Fatalf("edge refuses with %d (%s), gorilla with %d", edge.code, edge.why, gorilla.code)
	}
}

// The differences by design, each on its smallest stream.
func TestReaderDifferences(t *testing.T) {
	zeroKey := []byte{0, 0, 0, 0}
	tests := []struct {
		name          string
		stream        []byte
		limit         int
		edge, gorilla string
	}{
		{"close reason not UTF-8", clientFrame(true, OpClose, closePayload(1000, "\xff")), 100,
			"refused with 1007: close reason is not valid UTF-8", "refused with 1002"},
		{"close frame of one byte", clientFrame(true, OpClose, []byte{3}), 100,
			"refused with 1002: close frame of one byte", `op 8 "", closed`},
		{"close code 1014", clientFrame(true, OpClose, closePayload(1014, "")), 100,
			`op 8 "\x03\xf6", closed`, "refused with 1002"},
		{"top bit of a 64-bit length", cat([]byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}, zeroKey), 100,
			"refused with 1002: frame length has its top bit set", "refused with 0"},
		{"lengths that overflow", cat(clientFrame(false, OpText, []byte("a")), []byte{0x80, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, zeroKey), 100,
			"refused with 1009: message larger than 100 bytes", "refused with 0"},
		{"too big, the mask key not come", []byte{0x81, 0x80 | 126, 1, 0}, 100,
			"refused with 1009: message larger than 100 bytes", "waiting"},
		{"text not UTF-8", clientFrame(true, OpText, []byte("\xff")), 100,
			`op 1 "\xff", waiting`, `op 1 "\xff", waiting`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			edge, gorilla := edgeReads(t, tt.stream, tt.limit), gorillaReads(t, tt.stream, tt.limit)
			if edge.String() != tt.edge || gorilla.String() != tt.gorilla {
				t.Fatalf("edge: %v\ngorilla: %v\nwant\nedge: %v\ngorilla: %v", edge, gorilla, tt.edge, tt.gorilla)
			}
		})
	}
}

// FuzzReaderAgainstGorilla feeds the same client bytes to the edge's
// Reader and to gorilla/websocket's server connection, with the same read
// limit (1 when limit is 0): both deliver the same messages and control
// frames and end alike (waiting, at a close, or refusing with the same
// code), up to the differences by design listed at the top of this file.
//
//	go test -run '^$' -fuzz '^FuzzReaderAgainstGorilla$' ./services/edge/ws
func FuzzReaderAgainstGorilla(f *testing.F) {
	text := []byte(`{"type":"post","room":"lobby","text":"hi"}`)
	f.Add(clientFrame(true, OpText, text), uint16(4096))
	f.Add(cat(clientFrame(false, OpText, []byte("he")), clientFrame(true, OpPing, []byte("p")),
		clientFrame(true, OpContinuation, []byte("llo"))), uint16(4096))
	f.Add(cat(clientFrame(true, OpPong, nil), clientFrame(true, OpClose, closePayload(1000, "bye"))), uint16(4096))
	f.Add(clientFrame(true, OpBinary, make([]byte, 300)), uint16(200))
	f.Add([]byte{0x81, 0x02, 'h', 'i'}, uint16(4096))
	f.Add(clientFrame(true, OpClose, []byte{3}), uint16(4096))
	f.Add([]byte{0x89, 0x80 | 126, 0, 1, 0, 0, 0, 0, 'x'}, uint16(4096))
	f.Fuzz(func(t *testing.T, stream []byte, limit uint16) {
		lim := max(int(limit), 1) // gorilla reads 0 as no limit
		d, start, end := firstDifference(stream)
		prefix := stream
		if d != none {
			prefix = stream[:start]
		}
		edge, gorilla := readBoth(t, prefix, lim)
		sameReading(t, edge, gorilla)
		if d == none || edge.end != waiting {
			return
		}
		// Both took the frames before; the frame that differs by design
		// is the last one compared.
		before := edge.got
		edge, gorilla = edgeReads(t, stream[:end], lim), gorillaReads(t, stream[:end], lim)
		switch d {
		case badGatewayClose:
			if gorilla.end != refused || gorilla.code != CloseProtocolError || !slices.Equal(gorilla.got, before) {
				t.Fatalf("close code 1014: gorilla %v, want refused with 1002", gorilla)
			}
			// The edge takes it, or refuses a reason that is not UTF-8.
			if edge.end == refused && (edge.code != CloseInvalidPayload || !slices.Equal(edge.got, before)) ||
				edge.end == closed && (len(edge.got) != len(before)+1 || !slices.Equal(edge.got[:len(before)], before)) ||
				edge.end == waiting {
				t.Fatalf("close code 1014: edge %v, want it taken", edge)
			}
		case oneByteClose:
			if edge.end != refused || edge.code != CloseProtocolError || !slices.Equal(edge.got, before) {
				t.Fatalf("a close frame of one byte: edge %v, want refused with 1002", edge)
			}
			if gorilla.end != closed || !slices.Equal(gorilla.got, append(before, got{OpClose, ""})) {
				t.Fatalf("a close frame of one byte: gorilla %v, want a close without a code", gorilla)
			}
		}
	})
}
