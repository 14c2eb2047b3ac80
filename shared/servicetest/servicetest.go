// Package servicetest runs a service binary's run function in-process for
// a test, the way STYLE.md asks binaries to be tested: configuration from
// the environment (t.Setenv), logs captured, the HTTP address taken from
// the contract's "listening" line.
package servicetest

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/logwatch"
)

// Run starts run in a goroutine and waits for its "listening http" line.
// stop cancels it, waits for it and fails the test if it returned an
// error; it also runs when the test ends.
func Run(t *testing.T, run func(context.Context, io.Writer) error) (addr string, stop func()) {
	t.Helper()
	logs := logwatch.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, logs) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v\n%s", err, logs.String())
		}
	}
	t.Cleanup(stop)
	return logs.Await(t, "http", 10*time.Second), stop
}

// GetOK checks that each path answers 200 on addr.
func GetOK(t *testing.T, addr string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}
}
