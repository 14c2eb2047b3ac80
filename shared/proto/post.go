package proto

import (
	"encoding/json"
	"unicode/utf8"
)

// MaxTextChars is the default limit of a message's text, in code points.
const MaxTextChars = 4000

// CheckPost applies the rules that edge and broadcaster both enforce on a
// message: text not blank and at most maxChars code points, id at most
// MaxIDBytes bytes. The broadcaster repeats them: it never trusts an edge.
func CheckPost(text, id string, maxChars int) *Error {
	if Blank(text) {
		return errorf(CodeBadRequest, "text is blank")
	}
	if utf8.RuneCountInString(text) > maxChars {
		return errorf(CodeTooLong, "text is longer than the limit")
	}
	if len(id) > MaxIDBytes {
		return errorf(CodeTooLong, "id is longer than 64 bytes")
	}
	return nil
}

// ParsePost decodes what an edge or a bot publishes on chat.in.room.<room>
// or chat.in.dm.<to> with the same rules as a client request: keys match exactly, every
// field is a string, from and text are required. Names and limits are
// checked by the caller (CheckPost and package names).
func ParsePost(data []byte) (Post, *Error) {
	var post Post
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		return post, errorf(CodeBadRequest, "payload is not a JSON object")
	}
	var e *Error
	fields := []struct {
		name string
		dst  *string
	}{
		{"room", &post.Room}, {"to", &post.To}, {"from", &post.From}, {"text", &post.Text},
		{"id", &post.ID}, {"edge", &post.Edge}, {"session", &post.Session},
	}
	for _, f := range fields {
		var v *string
		if v, e = str(obj, f.name, e); v != nil {
			*f.dst = *v
		}
	}
	if e != nil {
		return post, e
	}
	if _, ok := obj["from"]; !ok {
		return post, errorf(CodeBadRequest, "missing field from")
	}
	if _, ok := obj["text"]; !ok {
		return post, errorf(CodeBadRequest, "missing field text")
	}
	if id, ok := obj["id"]; ok && present(id) && post.ID == "" {
		return post, errorf(CodeBadRequest, "id is empty")
	}
	return post, nil
}
