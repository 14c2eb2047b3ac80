package ws

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"
)

// clientFrame is a frame as a client sends it: masked.
func clientFrame(fin bool, op Op, payload []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	var f []byte
	n := len(payload)
	switch {
	case n <= 125:
		f = []byte{b0, 0x80 | byte(n)}
	case n <= 0xFFFF:
		f = []byte{b0, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		f = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	f = append(f, key[:]...)
	start := len(f)
	f = append(f, payload...)
	for i := range payload {
		f[start+i] ^= key[i%4]
	}
	return f
}

type got struct {
	op      Op
	payload string
}

// feed feeds stream to a fresh Reader in pieces of size step (0: all at
// once) and returns what it delivered and its error.
func feed(stream []byte, limit, step int) ([]got, error) {
	r := Reader{Limit: limit}
	var out []got
	fn := func(op Op, p []byte) bool {
		out = append(out, got{op, string(p)})
		return true
	}
	data := bytes.Clone(stream)
	if step <= 0 {
		step = len(data) + 1
	}
	for len(data) > 0 {
		n := min(step, len(data))
		if err := r.Feed(data[:n], fn); err != nil {
			return out, err
		}
		data = data[n:]
	}
	return out, nil
}

func cat(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

func closePayload(code int, text string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), text...)
}

func TestReaderMessages(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 70000)
	tests := []struct {
		name   string
		stream []byte
		want   []got
	}{
		{"text", clientFrame(true, OpText, []byte("hello")), []got{{OpText, "hello"}}},
		{"empty text", clientFrame(true, OpText, nil), []got{{OpText, ""}}},
		{"two in one read", cat(clientFrame(true, OpText, []byte("a")), clientFrame(true, OpBinary, []byte("b"))),
			[]got{{OpText, "a"}, {OpBinary, "b"}}},
		{"16-bit length", clientFrame(true, OpText, long[:300]), []got{{OpText, string(long[:300])}}},
		{"64-bit length", clientFrame(true, OpText, long), []got{{OpText, string(long)}}},
		{"fragments", cat(clientFrame(false, OpText, []byte("he")), clientFrame(false, OpContinuation, []byte("ll")),
			clientFrame(true, OpContinuation, []byte("o"))), []got{{OpText, "hello"}}},
		{"control between fragments", cat(clientFrame(false, OpText, []byte("he")), clientFrame(true, OpPing, []byte("p")),
			clientFrame(true, OpContinuation, []byte("llo"))), []got{{OpPing, "p"}, {OpText, "hello"}}},
		{"ping pong close", cat(clientFrame(true, OpPing, nil), clientFrame(true, OpPong, []byte("x")),
			clientFrame(true, OpClose, closePayload(1000, "bye"))),
			[]got{{OpPing, ""}, {OpPong, "x"}, {OpClose, string(closePayload(1000, "bye"))}}},
		{"close without code", clientFrame(true, OpClose, nil), []got{{OpClose, ""}}},
		{"close with an application code", clientFrame(true, OpClose, closePayload(4000, "")), []got{{OpClose, string(closePayload(4000, ""))}}},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 3, 7, 100} {
			t.Run(fmt.Sprintf("%s/step %d", tt.name, step), func(t *testing.T) {
				out, err := feed(tt.stream, 1<<20, step)
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(out) != fmt.Sprint(tt.want) {
					t.Fatalf("got %.200v\nwant %.200v", out, tt.want)
				}
			})
		}
	}
}

func TestReaderRefuses(t *testing.T) {
	unmasked := []byte{0x81, 0x02, 'h', 'i'}
	tests := []struct {
		name   string
		stream []byte
		limit  int
		code   int
	}{
		{"unmasked", unmasked, 100, CloseProtocolError},
		{"reserved bits", func() []byte { f := clientFrame(true, OpText, []byte("x")); f[0] |= 0x40; return f }(), 100, CloseProtocolError},
		{"unknown opcode", clientFrame(true, 0x3, []byte("x")), 100, CloseProtocolError},
		{"fragmented ping", clientFrame(false, OpPing, nil), 100, CloseProtocolError},
		{"long ping", clientFrame(true, OpPing, make([]byte, 126)), 1000, CloseProtocolError},
		{"ping of one byte with a 16-bit length", cat([]byte{0x89, 0x80 | 126, 0, 1}, make([]byte, 4), []byte("p")), 100, CloseProtocolError},
		{"unknown opcode, from its first two bytes", []byte{0x83, 0x80 | 126}, 100, CloseProtocolError},
		{"continuation first", clientFrame(true, OpContinuation, []byte("x")), 100, CloseProtocolError},
		{"message in a message", cat(clientFrame(false, OpText, []byte("a")), clientFrame(true, OpText, []byte("b"))), 100, CloseProtocolError},
		{"one-byte close", clientFrame(true, OpClose, []byte{3}), 100, CloseProtocolError},
		{"close code 1005", clientFrame(true, OpClose, closePayload(1005, "")), 100, CloseProtocolError},
		{"close code 999", clientFrame(true, OpClose, closePayload(999, "")), 100, CloseProtocolError},
		{"close reason not UTF-8", clientFrame(true, OpClose, closePayload(1000, "\xff")), 100, CloseInvalidPayload},
		{"top bit of the length", cat([]byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}, make([]byte, 4)), 100, CloseProtocolError},
		{"too big", clientFrame(true, OpText, make([]byte, 101)), 100, CloseMessageTooBig},
		{"too big in fragments", cat(clientFrame(false, OpText, make([]byte, 60)), clientFrame(true, OpContinuation, make([]byte, 41))), 100, CloseMessageTooBig},
		{"reserved bit 2", func() []byte { f := clientFrame(true, OpText, []byte("x")); f[0] |= 0x20; return f }(), 100, CloseProtocolError},
		{"reserved bit 3", func() []byte { f := clientFrame(true, OpText, []byte("x")); f[0] |= 0x10; return f }(), 100, CloseProtocolError},
		{"fragmented close", clientFrame(false, OpClose, closePayload(1000, "")), 100, CloseProtocolError},
		{"long close", clientFrame(true, OpClose, closePayload(1000, string(make([]byte, 124)))), 1000, CloseProtocolError},
		{"no limit, 2^63-1 bytes announced", cat([]byte{0x81, 0x80 | 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, make([]byte, 4)), math.MaxInt, 0},
		{"negative limit", clientFrame(true, OpText, []byte("x")), -1, CloseMessageTooBig},
	}
	for _, code := range []int{0, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535} {
		tests = append(tests, struct {
			name   string
			stream []byte
			limit  int
			code   int
		}{fmt.Sprint("close code ", code), clientFrame(true, OpClose, closePayload(code, "")), 100, CloseProtocolError})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := feed(tt.stream, tt.limit, 0)
			if tt.code == 0 { // only the header came: wait for the rest, no panic
				if err != nil {
					t.Fatalf("error %v, want none yet", err)
				}
				return
			}
			var we *Error
			if !errors.As(err, &we) || we.Code != tt.code {
				t.Fatalf("error %v, want close code %d", err, tt.code)
			}
		})
	}
}

// The close codes a peer may send (RFC 6455 7.4) pass, with their reason.
func TestReaderTakesCloseCodes(t *testing.T) {
	for _, code := range []int{1000, 1003, 1007, 1014, 3000, 4999} {
		out, err := feed(clientFrame(true, OpClose, closePayload(code, "bye")), 100, 0)
		if err != nil || len(out) != 1 || out[0].op != OpClose || CloseCode([]byte(out[0].payload)) != code {
			t.Errorf("close code %d: %v %v", code, out, err)
		}
	}
}

// A message over the limit is refused from its header alone: nothing of
// it needs to arrive, or be held.
func TestReaderRefusesBigFromHeader(t *testing.T) {
	header := clientFrame(true, OpText, make([]byte, 1<<20))[:14]
	_, err := feed(header, 64<<10, 0)
	var we *Error
	if !errors.As(err, &we) || we.Code != CloseMessageTooBig {
		t.Fatalf("error %v, want 1009", err)
	}
}

// Between whole messages a Reader holds no buffer; within one it holds
// what it has.
func TestReaderHoldsNothingIdle(t *testing.T) {
	r := Reader{Limit: 1 << 20}
	f := clientFrame(true, OpText, bytes.Repeat([]byte("y"), 5000))
	noop := func(Op, []byte) bool { return true }
	if err := r.Feed(bytes.Clone(f[:3000]), noop); err != nil {
		t.Fatal(err)
	}
	if len(r.rest) != 3000 {
		t.Fatalf("holds %d bytes of a partial frame, want 3000", len(r.rest))
	}
	if err := r.Feed(bytes.Clone(f[3000:]), noop); err != nil {
		t.Fatal(err)
	}
	if r.rest != nil || r.msg != nil {
		t.Fatalf("holds %d+%d bytes after a whole message", cap(r.rest), cap(r.msg))
	}
}

// Feed stops at the first fn that says so.
func TestReaderStops(t *testing.T) {
	r := Reader{Limit: 100}
	n := 0
	stream := cat(clientFrame(true, OpText, []byte("a")), clientFrame(true, OpText, []byte("b")))
	if err := r.Feed(stream, func(Op, []byte) bool { n++; return false }); err != nil || n != 1 {
		t.Fatalf("%d calls, %v; want 1, nil", n, err)
	}
}

// AppendFrame's frames read back (with the mask bit a client would set),
// at each length boundary.
func TestAppendFrame(t *testing.T) {
	for _, n := range []int{0, 125, 126, 0xFFFF, 0x10000} {
		payload := bytes.Repeat([]byte("z"), n)
		f := AppendFrame(nil, OpText, payload)
		head := len(f) - n
		want := 2
		if n > 125 {
			want = 4
		}
		if n > 0xFFFF {
			want = 10
		}
		if head != want {
			t.Fatalf("length %d: header of %d bytes, want %d", n, head, want)
		}
		// Mask it with a zero key, as a client's: the Reader reads it.
		masked := append([]byte{f[0], f[1] | 0x80}, f[2:head]...)
		masked = append(append(masked, 0, 0, 0, 0), payload...)
		out, err := feed(masked, 1<<20, 0)
		if err != nil || len(out) != 1 || out[0].op != OpText || len(out[0].payload) != n {
			t.Fatalf("length %d: read back %d messages, %v", n, len(out), err)
		}
	}
	c := AppendClose(nil, CloseGoingAway, string(bytes.Repeat([]byte("é"), 100)))
	if len(c) > 2+125 || len(c) < 2+124 || CloseCode(c[2:]) != CloseGoingAway {
		t.Fatalf("close frame of %d bytes, code %d", len(c), CloseCode(c[2:]))
	}
	if err := checkClose(c[2:]); err != nil {
		t.Fatalf("a cut reason must stay UTF-8: %v", err)
	}
}

// FuzzReader feeds any bytes, whole and cut in two: it never panics, and
// where it is cut does not change what it reads.
func FuzzReader(f *testing.F) {
	f.Add(clientFrame(true, OpText, []byte(`{"type":"join","room":"lobby"}`)), 5)
	f.Add(cat(clientFrame(false, OpText, []byte("he")), clientFrame(true, OpPing, nil), clientFrame(true, OpContinuation, []byte("llo"))), 9)
	f.Add(clientFrame(true, OpClose, closePayload(1000, "bye")), 3)
	f.Add([]byte{0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0x10, 0}, 4)
	f.Fuzz(func(t *testing.T, data []byte, cut int) {
		whole, werr := feed(data, 4096, 0)
		cut = max(cut, 0) % (len(data) + 1)
		r := Reader{Limit: 4096}
		var parts []got
		fn := func(op Op, p []byte) bool {
			parts = append(parts, got{op, string(p)})
			return true
		}
		d := bytes.Clone(data)
		perr := r.Feed(d[:cut], fn)
		if perr == nil {
			perr = r.Feed(d[cut:], fn)
		}
		if (werr == nil) != (perr == nil) || fmt.Sprint(whole) != fmt.Sprint(parts) {
			t.Fatalf("whole: %v %v; cut at %d: %v %v", whole, werr, cut, parts, perr)
		}
		for _, g := range whole {
			if g.op != OpText && g.op != OpBinary && g.op != OpClose && g.op != OpPing && g.op != OpPong {
				t.Fatalf("delivered opcode %d", g.op)
			}
			if len(g.payload) > 4096 {
				t.Fatalf("delivered %d bytes, over the limit", len(g.payload))
			}
		}
	})
}
