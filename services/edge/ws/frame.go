package ws

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Op is a frame's opcode (RFC 6455, 5.2).
type Op byte

// The opcodes a connection may carry.
const (
	OpContinuation Op = 0x0
	OpText         Op = 0x1
	OpBinary       Op = 0x2
	OpClose        Op = 0x8
	OpPing         Op = 0x9
	OpPong         Op = 0xA
)

// Close codes (RFC 6455, 7.4.1) the edge sends or reads.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	CloseUnsupportedData = 1003
	CloseNoStatus        = 1005 // never sent: a close frame without a code
	CloseAbnormal        = 1006 // never sent: a connection that ended without a close frame
	CloseInvalidPayload  = 1007
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseTryAgainLater   = 1013
)

// maxControlPayload is the largest payload of a control frame.
const maxControlPayload = 125

// Error is why a connection must be closed: the code and text of the
// close frame to send.
type Error struct {
	Code int
	Text string
}

func (e *Error) Error() string { return fmt.Sprintf("websocket: %d %s", e.Code, e.Text) }

func protocolError(text string) *Error { return &Error{Code: CloseProtocolError, Text: text} }

// Reader parses the frames a client sends (masked, RFC 6455 5.1) from
// the bytes read off its socket, a read at a time, and joins fragmented
// messages. Between reads it holds only an unfinished frame or message:
// nothing for a connection that is idle between whole messages.
type Reader struct {
	// Limit is the largest message payload accepted, fragments summed;
	// a larger one is an Error with CloseMessageTooBig, raised as soon
	// as its header is read. 0 or less accepts empty messages only.
	Limit int

	rest  []byte // the start of a frame not yet complete
	msg   []byte // the fragments so far of a message not yet complete
	msgOp Op     // that message's opcode; OpContinuation when none
}

// Feed parses data after what the previous feeds left, and calls fn with
// each complete message (OpText or OpBinary, its fragments joined) and
// each control frame (OpClose, OpPing, OpPong), in order. payload is
// valid only during the call; data may be changed (unmasked in place).
// Feed stops at the first fn that returns false, with nil, or at the
// first violation of the protocol, with an *Error; the Reader must not be
// fed after an error.
func (r *Reader) Feed(data []byte, fn func(op Op, payload []byte) bool) error {
	buf := data
	if len(r.rest) > 0 {
		r.rest = append(r.rest, data...)
		buf = r.rest
	}
	for {
		n, err := r.frame(buf, fn)
		if err != nil {
			return err
		}
		if n < 0 {
			// Stopped by fn: what follows is not wanted.
			r.rest = nil
			return nil
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
	}
	switch {
	case len(buf) == 0:
		r.rest = nil // an idle connection holds no buffer
	case len(r.rest) > 0:
		// Keep the unfinished frame at the start of the buffer it is in
		// (where it is already, when no frame was taken from it).
		if len(buf) < len(r.rest) {
			r.rest = r.rest[:copy(r.rest, buf)]
		}
	default:
		r.rest = append(make([]byte, 0, len(buf)), buf...)
	}
	return nil
}

// frame parses one frame at the start of buf. It returns how many bytes
// the frame took, 0 when buf does not hold a whole frame yet, or -1 when
// fn asked to stop.
func (r *Reader) frame(buf []byte, fn func(op Op, payload []byte) bool) (int, error) {
	if len(buf) < 2 {
		return 0, nil
	}
	b0, b1 := buf[0], buf[1]
	fin, op := b0&0x80 != 0, Op(b0&0x0F)
	if b0&0x70 != 0 {
		return 0, protocolError("reserved bits set (no extension was agreed)")
	}
	if b1&0x80 == 0 {
		return 0, protocolError("a client's frames must be masked")
	}
	// What the first two bytes show is refused before the length is
	// read, as gorilla/websocket does (differential_test.go).
	switch op {
	case OpClose, OpPing, OpPong:
		if !fin {
			return 0, protocolError("fragmented control frame")
		}
		// The 7-bit length: a control frame's length is never in the
		// 16- or 64-bit form (RFC 6455, 5.5, and 5.2's shortest form),
		// whatever that form says.
		if b1&0x7F > maxControlPayload {
			return 0, protocolError("control frame longer than 125 bytes")
		}
	case OpText, OpBinary:
		if r.msgOp != OpContinuation {
			return 0, protocolError("a new message before the last one ended")
		}
	case OpContinuation:
		if r.msgOp == OpContinuation {
			return 0, protocolError("continuation frame without a message")
		}
	default:
		return 0, protocolError(fmt.Sprintf("unknown opcode %d", op))
	}
	size, head := uint64(b1&0x7F), 2
	switch size {
	case 126:
		if len(buf) < 4 {
			return 0, nil
		}
		size, head = uint64(binary.BigEndian.Uint16(buf[2:])), 4
	case 127:
		if len(buf) < 10 {
			return 0, nil
		}
		size, head = binary.BigEndian.Uint64(buf[2:]), 10
		if size>>63 != 0 {
			return 0, protocolError("frame length has its top bit set")
		}
	}
	// In uint64, so that no limit and no length can overflow: a Limit of
	// 0 or less takes empty messages only.
	if op < OpClose && size > uint64(max(r.Limit-len(r.msg), 0)) {
		return 0, &Error{Code: CloseMessageTooBig, Text: fmt.Sprintf("message larger than %d bytes", max(r.Limit, 0))}
	}
	if len(buf) < head+4 || uint64(len(buf)-head-4) < size {
		return 0, nil
	}
	total := head + 4 + int(size) // size < len(buf): no overflow
	payload := buf[head+4 : total]
	unmask(payload, [4]byte(buf[head:head+4]))

	if op >= OpClose {
		if op == OpClose {
			if err := checkClose(payload); err != nil {
				return 0, err
			}
		}
		if !fn(op, payload) {
			return -1, nil
		}
		return total, nil
	}
	if op != OpContinuation {
		r.msgOp = op
	}
	if !fin {
		r.msg = append(r.msg, payload...)
		return total, nil
	}
	if len(r.msg) > 0 {
		payload = append(r.msg, payload...)
	}
	op = r.msgOp
	r.msg, r.msgOp = nil, OpContinuation
	if !fn(op, payload) {
		return -1, nil
	}
	return total, nil
}

// checkClose checks a close frame's payload: empty, or a code a peer may
// send and a UTF-8 reason.
func checkClose(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	if len(p) == 1 {
		return protocolError("close frame of one byte")
	}
	code := int(binary.BigEndian.Uint16(p))
	if !validReceivedCode(code) {
		return protocolError(fmt.Sprintf("invalid close code %d", code))
	}
	if !utf8.Valid(p[2:]) {
		return &Error{Code: CloseInvalidPayload, Text: "close reason is not valid UTF-8"}
	}
	return nil
}

// validReceivedCode reports whether a peer may send code (RFC 6455 7.4).
func validReceivedCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}

// CloseCode reads a close frame's payload (as checked by Feed): its code,
// CloseNoStatus when it has none.
func CloseCode(payload []byte) int {
	if len(payload) < 2 {
		return CloseNoStatus
	}
	return int(binary.BigEndian.Uint16(payload))
}

func unmask(p []byte, key [4]byte) {
	k := binary.LittleEndian.Uint32(key[:])
	k64 := uint64(k) | uint64(k)<<32
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, binary.LittleEndian.Uint64(p)^k64)
		p = p[8:]
	}
	for i := range p {
		p[i] ^= key[i&3]
	}
}

// AppendFrame appends a whole, unmasked frame (a server's) of op
// carrying payload to dst.
func AppendFrame(dst []byte, op Op, payload []byte) []byte {
	n := len(payload)
	switch {
	case n <= 125:
		dst = append(dst, 0x80|byte(op), byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|byte(op), 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|byte(op), 127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	return append(dst, payload...)
}

// AppendClose appends a close frame with code and text to dst; text is
// cut to fit a control frame (at a rune boundary).
func AppendClose(dst []byte, code int, text string) []byte {
	max := maxControlPayload - 2
	if len(text) > max {
		text = text[:max]
		for len(text) > 0 && !utf8.ValidString(text) {
			text = text[:len(text)-1]
		}
	}
	p := make([]byte, 2, 2+len(text))
	binary.BigEndian.PutUint16(p, uint16(code))
	return AppendFrame(dst, OpClose, append(p, text...))
}
