// Package names holds the naming rules of docs/protocol.md. They keep
// names safe as NATS subject tokens: '.', '*', '>' and spaces never reach a
// subject.
package names

// ValidUser reports whether s matches ^[A-Za-z0-9_-]{1,32}$.
func ValidUser(s string) bool {
	if len(s) < 1 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !userByte(s[i]) {
			return false
		}
	}
	return true
}

// ValidRoom reports whether s matches ^[a-z0-9][a-z0-9_-]{0,63}$.
func ValidRoom(s string) bool {
	if len(s) < 1 || len(s) > 64 {
		return false
	}
	if !lowerAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !lowerAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func lowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

func userByte(c byte) bool {
	return lowerAlnum(c) || c >= 'A' && c <= 'Z' || c == '_' || c == '-'
}
