package servicetest

import (
	"testing"
	"time"
)

// pollStep is the longest pause between two checks of a condition: short
// enough that a test does not wait long past the moment it holds, long
// enough that checking a state outside the process (a container's health,
// a stream on a cluster) does not load the machine.
const pollStep = 50 * time.Millisecond

// WaitFor checks cond until it holds and fails the test, naming what it
// waited for and for how long, when it still does not after limit.
func WaitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	if !Poll(limit, cond) {
		t.Fatalf("%s: still not so after %v", what, time.Since(start).Round(time.Millisecond))
	}
}

// Poll checks cond until it holds, for up to limit, and reports whether
// it did: for a test that does more than fail when it does not (skip,
// report what it saw). The pause between checks grows from 1 ms to
// pollStep, so a condition that soon holds is seen soon.
func Poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for step := time.Millisecond; !cond(); step = min(2*step, pollStep) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(step)
	}
	return true
}
