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

// pprofRE finds the attribute that sets the pprof listener's line apart
// from the service's own "listening http" line: listener=pprof in text,
// "listener":"pprof" in JSON.
var pprofRE = regexp.MustCompile(`\blistener=pprof\b|"listener":"pprof"`)

// Await waits up to timeout for the listening line of kind ("http" or
// "nats", or "pprof" for the http line with listener=pprof, which "http"
// skips) and returns its address, failing the test when none comes or
// when the logged port is 0.
func (w *Watch) Await(t testing.TB, kind string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, l := range listening(w.String()) {
			if l.Kind != kind {
				continue
			}
			if strings.HasSuffix(l.Addr, ":0") {
				t.Fatalf("logged port 0: %s", l.Line)
			}
			return l.Addr
		}
		select {
		case <-w.changed:
		case <-deadline:
			t.Fatalf("no listening line of kind %s in:\n%s", kind, w.String())
		}
	}
}

// A Listener is one listening line: its kind (http, nats, or pprof for
// the http line with listener=pprof), its address and the line itself.
type Listener struct{ Kind, Addr, Line string }

// Listening returns the listening lines written so far, in their order:
// one per listener the process opened.
func (w *Watch) Listening() []Listener { return listening(w.String()) }

func listening(logs string) []Listener {
	var ls []Listener
	for line := range strings.Lines(logs) {
		m := listenRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		kind := m[1]
		if kind == "http" && pprofRE.MatchString(line) {
			kind = "pprof"
		}
		ls = append(ls, Listener{Kind: kind, Addr: m[2], Line: strings.TrimSuffix(line, "\n")})
	}
	return ls
}
