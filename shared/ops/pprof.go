package ops

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// The pprof listener (CHAT_PPROF_ADDR) is a listener of its own, never
// the service's public one: its endpoints have no authentication and a
// CPU profile or trace costs the process while it runs.

// pprofStopTimeout bounds a stop's wait for requests in progress: a CPU
// profile or a trace runs as long as it was asked to (profile's default
// is 30 s), far past the 10 s a stop may take, so only the quick ones
// (heap, goroutine) are waited for.
const pprofStopTimeout = time.Second

// pprofHandler serves net/http/pprof's endpoints under /debug/pprof/: the
// index and the named profiles (heap, goroutine, allocs...), profile
// (CPU), symbol and trace.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// pprofLog is the logger of the pprof listener's lines: its listening
// line carries listener=pprof, so that a reader of the logs tells it
// from the service's own "listening http" line.
func pprofLog(log *slog.Logger) *slog.Logger { return log.With("listener", "pprof") }

// ListenPProf opens the pprof listener on addr and logs its listening
// line, with listener=pprof. An empty addr, the default, opens none: it
// returns a nil listener and no error.
func ListenPProf(addr string, log *slog.Logger) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := Listen(addr, pprofLog(log))
	if err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	return ln, nil
}

// ServePProf serves the pprof endpoints on ln until ctx ends, as Serve
// does; a nil ln (no CHAT_PPROF_ADDR) serves nothing and returns nil at
// once.
func ServePProf(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	if ln == nil {
		return nil
	}
	return Serve(ctx, ln, pprofHandler(), pprofStopTimeout, pprofLog(log))
}
