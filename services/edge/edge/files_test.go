package edge

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/shared/files"
)

func TestLimited(t *testing.T) {
	for _, tc := range []struct {
		body  string
		limit int64
		over  bool
	}{
		{"", 4, false},
		{"abcd", 4, false},
		{"abcde", 4, true},
		{strings.Repeat("x", 10000), 9999, true},
		{strings.Repeat("x", 10000), 10000, false},
	} {
		l := &limited{r: io.MultiReader(strings.NewReader(tc.body)), left: tc.limit}
		got, err := io.ReadAll(l)
		if l.over != tc.over || (tc.over && !errors.Is(err, errTooLarge)) || (!tc.over && (err != nil || string(got) != tc.body)) {
			t.Errorf("%d bytes, limit %d: over %v, %d read, %v", len(tc.body), tc.limit, l.over, len(got), err)
		}
	}
	// A client gone mid-upload is its own error, not "too large".
	cut := errors.New("connection reset")
	l := &limited{r: io.MultiReader(strings.NewReader("ab"), errReader{cut}), left: 10}
	if _, err := io.ReadAll(l); !errors.Is(err, cut) || l.err == nil || l.over {
		t.Errorf("a cut body: %v, kept %v, over %v", err, l.err, l.over)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestBearer(t *testing.T) {
	for header, want := range map[string]string{
		"Bearer abc.def.ghi": "abc.def.ghi",
		"bearer  abc ":       "abc",
		"Basic abc":          "",
		"Bearer":             "",
		"":                   "",
	} {
		r, _ := http.NewRequest(http.MethodPost, "/files", nil)
		r.Header.Set("Authorization", header)
		if got := bearer(r); got != want {
			t.Errorf("bearer(%q) = %q, want %q", header, got, want)
		}
	}
}

func TestMayRead(t *testing.T) {
	dm := files.Meta{Target: files.DMTarget("bob", "alice")}
	room := files.Meta{Target: files.RoomTarget("lobby")}
	for _, tc := range []struct {
		meta files.Meta
		user string
		want bool
	}{
		{dm, "alice", true}, {dm, "bob", true}, {dm, "carol", false}, {dm, "alice.bob", false},
		{room, "carol", true}, {files.Meta{}, "carol", true},
	} {
		if got := mayRead(tc.meta, tc.user); got != tc.want {
			t.Errorf("mayRead(%q, %q) = %v", tc.meta.Target, tc.user, got)
		}
	}
}

func TestBucketFull(t *testing.T) {
	full := &jetstream.APIError{ErrorCode: errCodeStoreFailed, Code: 503, Description: "maximum bytes exceeded"}
	if !bucketFull(full) || !bucketFull(errors.Join(errors.New("put"), full)) {
		t.Error("a refused chunk is not seen as a full bucket")
	}
	if bucketFull(&jetstream.APIError{ErrorCode: errCodeStoreFailed, Description: "disk I/O error"}) || bucketFull(errors.New("timeout")) {
		t.Error("another failure is seen as a full bucket")
	}
}
