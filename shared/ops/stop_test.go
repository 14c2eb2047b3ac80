package ops

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBudget(t *testing.T) {
	stopped := func(cause error) context.Context {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(cause)
		return ctx
	}
	child := func(parent context.Context) context.Context {
		ctx, cancel := context.WithCancel(parent)
		t.Cleanup(cancel)
		return ctx
	}
	far, near, past := time.Now().Add(time.Hour), time.Now().Add(time.Second), time.Now().Add(-time.Second)
	for _, tt := range []struct {
		name     string
		ctx      context.Context
		min, max time.Duration
	}{
		{"running", context.Background(), 3 * time.Second, 3 * time.Second},
		{"stopped without a deadline", stopped(context.Canceled), 3 * time.Second, 3 * time.Second},
		{"stopped for another reason", stopped(errors.New("failed")), 3 * time.Second, 3 * time.Second},
		{"a deadline beyond the part's own", stopped(StopDeadline{At: far}), 3 * time.Second, 3 * time.Second},
		{"a nearer deadline", stopped(StopDeadline{At: near}), time.Nanosecond, time.Second},
		{"a deadline passed", stopped(StopDeadline{At: past}), 0, 0},
		{"a deadline through a child context", child(stopped(StopDeadline{At: near})), time.Nanosecond, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Budget(tt.ctx, 3*time.Second); got < tt.min || got > tt.max {
				t.Errorf("Budget = %v, want between %v and %v", got, tt.min, tt.max)
			}
		})
	}
}
