package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/ops"
)

// A part that returns before it is stopped makes the failure happen, once
// however many fail, and its error is its result; one that is stopped
// returns its own.
func TestPartFailing(t *testing.T) {
	t.Parallel()
	m := &Main{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f := &failure{ch: make(chan struct{})}
	boom := errors.New("boom")
	a := m.start("a", func(context.Context) error { return boom }, f)
	b := m.start("b", func(context.Context) error { return nil }, f)
	c := m.start("c", func(ctx context.Context) error { <-ctx.Done(); return nil }, f)
	<-f.ch
	<-a.done
	<-b.done
	if !f.happened() {
		t.Fatal("the failure did not happen")
	}
	m.stop(time.Now().Add(time.Second), c)
	if err := a.result(); !errors.Is(err, boom) {
		t.Errorf("a: %v, want boom", err)
	}
	if err := b.result(); err == nil || !strings.Contains(err.Error(), "b stopped by itself") {
		t.Errorf("b: %v, want that it stopped by itself", err)
	}
	if err := c.result(); err != nil {
		t.Errorf("c, stopped: %v", err)
	}
}

// A part that does not stop by the deadline is left behind: stop returns
// at the deadline, and its result says it did not stop.
func TestPartLeftBehindAtTheDeadline(t *testing.T) {
	t.Parallel()
	m := &Main{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f := &failure{ch: make(chan struct{})}
	release := make(chan struct{})
	stuck := m.start("stuck", func(context.Context) error { <-release; return nil }, f)
	quick := m.start("quick", func(ctx context.Context) error {
		<-ctx.Done()
		if _, ok := errors.AsType[ops.StopDeadline](context.Cause(ctx)); !ok {
			return errors.New("stopped without a deadline")
		}
		return nil
	}, f)
	began := time.Now()
	m.stop(began.Add(200*time.Millisecond), stuck, quick)
	if took := time.Since(began); took > 5*time.Second {
		t.Errorf("stop waited %v for a part that does not stop", took)
	}
	if err := stuck.result(); err == nil || !strings.Contains(err.Error(), "did not stop") {
		t.Errorf("stuck: %v, want that it did not stop", err)
	}
	if err := quick.result(); err != nil {
		t.Errorf("quick: %v", err)
	}
	close(release)
	<-stuck.done
}
