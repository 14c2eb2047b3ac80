package ops

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A process stops its parts one after another under one deadline: the
// single binary stops its edge, then its broadcaster and presence, then
// its NATS connections and server, and the contract gives the whole of it
// 10 seconds. Each part has waits of its own (for requests in progress,
// for clients to close, for stores to be acknowledged), each bounded by a
// budget that fits when the part stops alone. Together they could pass
// the deadline; so the process cancels each part's context with a
// StopDeadline as its cause, and the part's waits take what is left of
// it when that is less than their own budget (Budget).

// StopDeadline is the cause of a context cancelled to stop a part of a
// process that must be done by At.
type StopDeadline struct{ At time.Time }

func (d StopDeadline) Error() string {
	return fmt.Sprintf("stopping, to be done by %s", d.At.Format(time.RFC3339Nano))
}

// Budget is how long a wait of a stopping part may take: own, or what is
// left until the deadline of ctx's StopDeadline cause when that is
// shorter (never below zero). A context without one leaves own.
func Budget(ctx context.Context, own time.Duration) time.Duration {
	if d, ok := errors.AsType[StopDeadline](context.Cause(ctx)); ok {
		return max(min(own, time.Until(d.At)), 0)
	}
	return own
}
