package proto

import "unicode/utf8"

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
