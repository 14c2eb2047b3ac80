// Package proto holds natter's wire formats: the WebSocket requests and
// events of docs/protocol.md, their JSON-lines frame codec, and the
// payloads exchanged over NATS.
package proto

import (
	"bytes"
	"encoding/json"
	"strings"
	"unicode"

	"github.com/natter-chat/natter/shared/names"
)

// Error codes of docs/protocol.md, in the order they are checked.
const (
	CodeBadRequest   = "bad_request"
	CodeUnknownType  = "unknown_type"
	CodeInvalidRoom  = "invalid_room"
	CodeInvalidUser  = "invalid_user"
	CodeNotJoined    = "not_joined"
	CodeTooLong      = "too_long"
	CodeTooManyRooms = "too_many_rooms"
	CodeRateLimited  = "rate_limited"
	CodeUnavailable  = "unavailable"
)

// Request types a client may send.
const (
	TypeJoin    = "join"
	TypeLeave   = "leave"
	TypeMessage = "message"
	TypeDM      = "dm"
	TypeTyping  = "typing"
	TypeHistory = "history"
	TypeDMs     = "dms"
	TypeWho     = "who"
)

// MaxIDBytes is the longest client id accepted.
const MaxIDBytes = 64

// Request is one client object of a frame, with every field typed. A nil
// pointer is an absent field.
type Request struct {
	Type   string
	Room   *string
	Text   *string
	To     *string
	DM     *string
	ID     *string
	File   *string
	Since  *int64
	Before *int64
	After  *int64
	Limit  *int64

	// RawID is the id field as sent, whatever its type, so that an error
	// can echo it.
	RawID json.RawMessage
}

// Error is a refusal to send back as an error event.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, msg string) *Error { return &Error{Code: code, Message: msg} }

// fields returns the fields that belong to a request type, and false for
// an unknown type. Fields of other types are ignored, like unknown ones.
func fields(typ string) ([]string, bool) {
	switch typ {
	case TypeJoin:
		return []string{"room", "since"}, true
	case TypeLeave, TypeTyping, TypeWho:
		return []string{"room"}, true
	case TypeMessage:
		return []string{"room", "text", "id", "file"}, true
	case TypeDM:
		return []string{"to", "text", "id", "file"}, true
	case TypeHistory:
		return []string{"room", "dm", "before", "after", "limit"}, true
	case TypeDMs:
		return nil, true
	}
	return nil, false
}

// ParseRequest decodes one JSON object. It checks everything that needs no
// state, in the contract's order: JSON, the type, the types of the fields
// that belong to it, required fields, blank text, fields that exclude each
// other, then the name rules. Keys match exactly (encoding/json alone would
// match them regardless of case). The returned Request carries RawID
// whenever the object had an id key, even when err is not nil.
func ParseRequest(line []byte) (Request, *Error) {
	var req Request
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil || obj == nil {
		return req, errorf(CodeBadRequest, "not a JSON object")
	}
	if id, ok := obj["id"]; ok {
		req.RawID = id
	}
	typ, e := str(obj, "type", nil)
	if e != nil {
		return req, e
	}
	if typ == nil {
		return req, errorf(CodeBadRequest, "missing field type")
	}
	req.Type = *typ
	names, known := fields(req.Type)
	if !known {
		return req, errorf(CodeUnknownType, "unknown type "+quote(req.Type))
	}
	for _, f := range names {
		switch f {
		case "room":
			req.Room, e = str(obj, f, e)
		case "text":
			req.Text, e = str(obj, f, e)
		case "to":
			req.To, e = str(obj, f, e)
		case "dm":
			req.DM, e = str(obj, f, e)
		case "id":
			req.ID, e = str(obj, f, e)
		case "file":
			req.File, e = str(obj, f, e)
		case "since":
			req.Since, e = count(obj, f, e)
		case "before":
			req.Before, e = count(obj, f, e)
		case "after":
			req.After, e = count(obj, f, e)
		case "limit":
			req.Limit, e = count(obj, f, e)
		}
	}
	if e != nil {
		return req, e
	}
	if e := req.checkFields(); e != nil {
		return req, e
	}
	return req, req.checkNames()
}

// checkFields applies the bad_request rules of each known type.
func (r *Request) checkFields() *Error {
	need := func(ok bool, field string) *Error {
		if !ok {
			return errorf(CodeBadRequest, "missing field "+field+" for "+r.Type)
		}
		return nil
	}
	if r.ID != nil && *r.ID == "" {
		return errorf(CodeBadRequest, "id is empty")
	}
	switch r.Type {
	case TypeJoin, TypeLeave, TypeTyping, TypeWho:
		return need(r.Room != nil, "room")
	case TypeMessage:
		if e := need(r.Room != nil, "room"); e != nil {
			return e
		}
		return r.checkText()
	case TypeDM:
		if e := need(r.To != nil, "to"); e != nil {
			return e
		}
		return r.checkText()
	case TypeHistory:
		if r.Room != nil && r.DM != nil {
			return errorf(CodeBadRequest, "room and dm together")
		}
		if e := need(r.Room != nil || r.DM != nil, "room or dm"); e != nil {
			return e
		}
		if r.Before != nil && r.After != nil {
			return errorf(CodeBadRequest, "before and after together")
		}
	}
	return nil
}

// checkText applies the rules of a message's or dm's text and file: a
// text that is not blank, or a file (then the text may be blank or
// absent) whose ID is well formed.
func (r *Request) checkText() *Error {
	if r.File != nil {
		if !ValidFileID(*r.File) {
			return errorf(CodeBadRequest, "file is not a file ID")
		}
		return nil
	}
	if r.Text == nil {
		return errorf(CodeBadRequest, "missing field text for "+r.Type)
	}
	if Blank(*r.Text) {
		return errorf(CodeBadRequest, "text is blank")
	}
	return nil
}

// ValidFileID reports whether s can be a file ID: 32 to 64 characters of
// [0-9a-z_-]. natter's own are 32 lowercase hex digits (128 random
// bits); a bot names the objects it puts into the bucket itself.
func ValidFileID(s string) bool {
	if len(s) < 32 || len(s) > 64 {
		return false
	}
	for i := range len(s) {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// checkNames applies invalid_room and invalid_user to the fields present.
func (r *Request) checkNames() *Error {
	if r.Room != nil && !names.ValidRoom(*r.Room) {
		return errorf(CodeInvalidRoom, "invalid room name "+quote(*r.Room))
	}
	for _, u := range []*string{r.To, r.DM} {
		if u != nil && !names.ValidUser(*u) {
			return errorf(CodeInvalidUser, "invalid user name "+quote(*u))
		}
	}
	return nil
}

// Blank reports whether s is empty or only white space.
func Blank(s string) bool {
	return strings.TrimFunc(s, unicode.IsSpace) == ""
}

// present reports whether a field has a value; null counts as absent.
func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

// str decodes a string field; a field of another type is a bad_request.
// It keeps the first error it was given.
func str(obj map[string]json.RawMessage, field string, prev *Error) (*string, *Error) {
	raw := obj[field]
	if !present(raw) {
		return nil, prev
	}
	var s string
	if raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return nil, firstErr(prev, errorf(CodeBadRequest, field+" must be a string"))
	}
	return &s, prev
}

// count decodes a non-negative JSON integer field.
func count(obj map[string]json.RawMessage, field string, prev *Error) (*int64, *Error) {
	raw := obj[field]
	if !present(raw) {
		return nil, prev
	}
	var n int64
	if json.Unmarshal(raw, &n) != nil || n < 0 {
		return nil, firstErr(prev, errorf(CodeBadRequest, field+" must be a non-negative integer"))
	}
	return &n, prev
}

func firstErr(prev, e *Error) *Error {
	if prev != nil {
		return prev
	}
	return e
}

// quote keeps error messages short and printable whatever the client sent.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	b, _ := json.Marshal(s)
	return string(b)
}
