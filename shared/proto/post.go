package proto

import (
	"encoding/json"
	"unicode/utf8"
)

// MaxTextChars is the default limit of a message's text, in code points.
const MaxTextChars = 4000

// CheckPost applies the rules that edge and broadcaster both enforce on a
// message: text not blank unless a file is shared, at most maxChars code
// points, a well-formed file ID, id at most MaxIDBytes bytes. The
// broadcaster repeats them: it never trusts an edge.
func CheckPost(text, file, id string, maxChars int) *Error {
	if file != "" && !ValidFileID(file) {
		return errorf(CodeBadRequest, "file is not a file ID")
	}
	if file == "" && Blank(text) {
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
// field is a string, from is required, and text unless a file is shared.
// Names and limits are checked by the caller (CheckPost and package
// names).
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
		{"id", &post.ID}, {"file", &post.File}, {"edge", &post.Edge}, {"session", &post.Session},
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
	if _, ok := obj["text"]; !ok && post.File == "" {
		return post, errorf(CodeBadRequest, "missing field text")
	}
	if id, ok := obj["id"]; ok && present(id) && post.ID == "" {
		return post, errorf(CodeBadRequest, "id is empty")
	}
	return post, nil
}
