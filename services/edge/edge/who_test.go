package edge

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
)

// A shared list with a user put in its place encodes as the list with the
// user inserted and encoded whole, wherever the user falls.
func TestUserListWith(t *testing.T) {
	for _, names := range [][]string{{}, {"bob"}, {"ann", "cat", "eve"}, {"a\"b", "<x>", "é"}} {
		l := newUserList(names)
		for _, user := range []string{"ann", "aaa", "bob", "dan", "zed", "eve", "<x>"} {
			want := names
			if i, found := slices.BinarySearch(names, user); !found {
				want = slices.Insert(slices.Clone(names), i, user)
			}
			wantJSON, _ := json.Marshal(want)
			if got := bytes.Join(l.with(user), nil); !bytes.Equal(got, wantJSON) {
				t.Errorf("%q with %q = %s, want %s", names, user, got, wantJSON)
			}
		}
	}
}
