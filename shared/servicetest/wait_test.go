package servicetest

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		holdAt int // the check at which cond first holds; 0: never
		want   bool
	}{
		{"holds at once", 1, true},
		{"holds after a few checks", 5, true},
		{"never holds", 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checks := 0
			start := time.Now()
			got := Poll(200*time.Millisecond, func() bool { checks++; return checks == tt.holdAt })
			if got != tt.want {
				t.Fatalf("Poll = %v after %d checks, want %v", got, checks, tt.want)
			}
			if tt.want && checks != tt.holdAt {
				t.Errorf("%d checks, want Poll to stop at the one that held (%d)", checks, tt.holdAt)
			}
			if !tt.want && time.Since(start) < 200*time.Millisecond {
				t.Errorf("gave up after %v, before the limit", time.Since(start))
			}
			// Pauses grow to pollStep: a limit of 200 ms allows a handful
			// of checks, not a busy loop.
			if !tt.want && checks > 20 {
				t.Errorf("%d checks in 200 ms: busy-spinning", checks)
			}
		})
	}
}

// fatalRecorder records a Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}
func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestWaitForNamesWhatAndHowLong(t *testing.T) {
	t.Parallel()
	r := &fatalRecorder{TB: t}
	WaitFor(r, 30*time.Millisecond, "the moon blue", func() bool { return false })
	waited, ok := strings.CutPrefix(r.msg, "the moon blue: still not so after ")
	if d, err := time.ParseDuration(waited); !ok || err != nil || d < 30*time.Millisecond {
		t.Errorf("failed with %q, want what and how long, at least the 30 ms limit", r.msg)
	}
	r.msg = ""
	WaitFor(r, time.Second, "true", func() bool { return true })
	if r.msg != "" {
		t.Errorf("failed with %q on a condition that holds", r.msg)
	}
}
