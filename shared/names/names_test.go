package names

import (
	"regexp"
	"testing"
)

var (
	userRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)
	roomRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
)

func TestNames(t *testing.T) {
	long := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = 'a'
		}
		return string(b)
	}
	tests := []struct {
		in         string
		user, room bool
	}{
		{"", false, false},
		{"alice", true, true},
		{"Alice", true, false},
		{"a_b-c", true, true},
		{"_x", true, false},
		{"-x", true, false},
		{"a.b", false, false},
		{"a*", false, false},
		{"a>", false, false},
		{"a b", false, false},
		{"é", false, false},
		{long(32), true, true},
		{long(33), false, true},
		{long(64), false, true},
		{long(65), false, false},
		{"a\n", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := ValidUser(tt.in); got != tt.user {
				t.Errorf("ValidUser(%q) = %v, want %v", tt.in, got, tt.user)
			}
			if got := ValidRoom(tt.in); got != tt.room {
				t.Errorf("ValidRoom(%q) = %v, want %v", tt.in, got, tt.room)
			}
		})
	}
}

// FuzzNames checks the hand-written rules against the contract's regular
// expressions, which are the definition.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"alice", "Bob_1", "room-1", "a.b", "*", ">", " ", "\x00", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidUser(s), userRE.MatchString(s); got != want {
			t.Fatalf("ValidUser(%q) = %v, regexp says %v", s, got, want)
		}
		if got, want := ValidRoom(s), roomRE.MatchString(s); got != want {
			t.Fatalf("ValidRoom(%q) = %v, regexp says %v", s, got, want)
		}
	})
}
