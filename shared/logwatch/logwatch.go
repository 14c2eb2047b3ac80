// Package logwatch collects a process's log output in tests and finds the
// lines every process promises (docs/operations.md): "listening", the kind of listener
// and the bound host:port.
package logwatch

import (
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Watch is an io.Writer for log output; it is safe for concurrent use.
type Watch struct {
	mu      sync.Mutex
	buf     strings.Builder // guarded by mu
	changed chan struct{}   // a buffer of one: something was written
}

// New returns an empty Watch.
func New() *Watch { return &Watch{changed: make(chan struct{}, 1)} }

// Write appends p to the collected output.
func (w *Watch) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// String returns everything written so far.
func (w *Watch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// listenRE finds the line in text and in JSON, where a quote ends the
// message.
var listenRE = regexp.MustCompile(`listening (http|nats) ([^\s"]+:\d+)`)

// Await waits up to timeout for the listening line of kind ("http" or
// "nats") and returns its address, failing the test when none comes or
// when the logged port is 0.
func (w *Watch) Await(t testing.TB, kind string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, m := range listenRE.FindAllStringSubmatch(w.String(), -1) {
			if m[1] != kind {
				continue
			}
			if strings.HasSuffix(m[2], ":0") {
				t.Fatalf("logged port 0: %s", m[0])
			}
			return m[2]
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("no 'listening %s' line in:\n%s", kind, w.String())
		}
	}
}
