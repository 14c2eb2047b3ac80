// Package proto holds natter's wire formats: the WebSocket requests and
// events of PROTOCOL.md section 3, their JSON-lines frame codec, and the
// payloads exchanged over NATS.
package proto

import (
	"bytes"
	"encoding/json"
	"strings"
	"unicode"

	"github.com/natter-chat/natter/shared/names"
)

// Error codes of PROTOCOL.md section 3, in the order they are checked.
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
	Since  *int64
	Before *int64
	After  *int64
	Limit  *int64

	// RawID is the id field as sent, whatever its type, so that an error
	// can echo it.
	RawID json.RawMessage
}

// rawRequest lets each field be checked on its own: a mistyped field is a
// bad_request, but the id must still be echoed.
type rawRequest struct {
	Type   json.RawMessage `json:"type"`
	Room   json.RawMessage `json:"room"`
	Text   json.RawMessage `json:"text"`
	To     json.RawMessage `json:"to"`
	DM     json.RawMessage `json:"dm"`
	ID     json.RawMessage `json:"id"`
	Since  json.RawMessage `json:"since"`
	Before json.RawMessage `json:"before"`
	After  json.RawMessage `json:"after"`
	Limit  json.RawMessage `json:"limit"`
}

// Error is a refusal to send back as an error event.
type Error struct {
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

func errorf(code, msg string) *Error { return &Error{Code: code, Message: msg} }

// ParseRequest decodes one JSON object. It checks everything that needs no
// state: JSON, field types, the type, required fields, blank text, fields
// that exclude each other, and name rules. The returned Request carries
// RawID even when err is not nil, when the object had an id.
func ParseRequest(line []byte) (Request, *Error) {
	var req Request
	var raw rawRequest
	if err := json.Unmarshal(line, &raw); err != nil {
		return req, errorf(CodeBadRequest, "not a JSON object")
	}
	if present(raw.ID) {
		req.RawID = raw.ID
	}
	if !present(raw.Type) {
		return req, errorf(CodeBadRequest, "missing field type")
	}
	var e *Error
	var typ *string
	typ, e = str(raw.Type, "type", e)
	req.Room, e = str(raw.Room, "room", e)
	req.Text, e = str(raw.Text, "text", e)
	req.To, e = str(raw.To, "to", e)
	req.DM, e = str(raw.DM, "dm", e)
	req.ID, e = str(raw.ID, "id", e)
	req.Since, e = count(raw.Since, "since", e)
	req.Before, e = count(raw.Before, "before", e)
	req.After, e = count(raw.After, "after", e)
	req.Limit, e = count(raw.Limit, "limit", e)
	if e != nil {
		return req, e
	}
	req.Type = *typ
	if e := req.checkFields(); e != nil {
		return req, e
	}
	return req, req.checkNames()
}

// checkFields applies the bad_request and unknown_type rules of each type.
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
		return nil
	case TypeDMs:
		return nil
	}
	return errorf(CodeUnknownType, "unknown type "+quote(r.Type))
}

func (r *Request) checkText() *Error {
	if r.Text == nil {
		return errorf(CodeBadRequest, "missing field text for "+r.Type)
	}
	if Blank(*r.Text) {
		return errorf(CodeBadRequest, "text is blank")
	}
	return nil
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

func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

// str decodes a string field; a field of another type is a bad_request.
// It keeps the first error it was given.
func str(raw json.RawMessage, field string, prev *Error) (*string, *Error) {
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
func count(raw json.RawMessage, field string, prev *Error) (*int64, *Error) {
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
