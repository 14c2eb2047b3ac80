// Package ops serves the operational endpoints every natter service has:
// /healthz, /readyz and /metrics, and /debug/pprof/ on a listener of its
// own when CHAT_PPROF_ADDR is set (pprof.go). It runs HTTP servers that
// log their address and stop with their context, asks a service's
// /readyz for its healthcheck subcommand, builds each process's logger
// (CHAT_LOG_FORMAT, CHAT_LOG_LEVEL), and registers a service with the
// NATS services framework with the build's version (micro.go).
package ops

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// NewRegistry returns a registry with the Go and process collectors, so
// each process has its own and no package state is shared.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handle adds /healthz, /readyz and /metrics to mux. ready reports whether
// the process is connected to NATS and able to serve.
func Handle(mux *http.ServeMux, ready func() bool, reg *prometheus.Registry) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: NATS unavailable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
}

// Listen opens addr and logs the line the contract promises: the word
// listening, the kind and the bound host:port. Accepted connections get no
// TCP keep-alive: four setsockopt calls per connection that nothing needs,
// since WebSockets are pinged (CHAT_PING_INTERVAL) and idle HTTP
// connections time out (Serve).
func Listen(addr string, log *slog.Logger) (net.Listener, error) {
	ln, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http listen %s: %w", addr, err)
	}
	LogListening(log, "http", ln.Addr().String())
	return ln, nil
}

// idleTimeout closes a keep-alive HTTP connection idle this long: the
// listener's connections have no TCP keep-alive to find dead peers.
const idleTimeout = 2 * time.Minute

// Serve serves h on ln until ctx ends, then shuts down: it waits up to
// timeout (less when ctx's stop deadline leaves less: Budget) for
// requests in progress, then closes what is left (an idle or
// half-sent connection must not turn a clean stop into a failure).
// Hijacked connections (WebSockets) are not its business: their owner
// closes them. What net/http itself logs (a panic in a handler, an accept
// error) goes to log as warnings, in its format, not to the standard
// logger. It returns an error only when serving failed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, timeout time.Duration, log *slog.Logger) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: idleTimeout,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http serve %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), Budget(ctx, timeout))
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc // http.ErrServerClosed
	return nil
}

// RunService runs a service that has no HTTP of its own: it serves
// /healthz, /readyz and /metrics on addr next to run, and the pprof
// endpoints on pprofAddr when it is set (ListenPProf), until ctx ends or
// one of them fails, and returns after all have stopped. The pprof
// listener opens after addr's, so that the first listening line is
// still the service's own.
func RunService(ctx context.Context, addr, pprofAddr string, ready func() bool, reg *prometheus.Registry, log *slog.Logger,
	run func(context.Context) error) error {
	mux := http.NewServeMux()
	Handle(mux, ready, reg)
	ln, err := Listen(addr, log)
	if err != nil {
		return err
	}
	pprof, err := ListenPProf(pprofAddr, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return run(gctx) })
	g.Go(func() error { return Serve(gctx, ln, mux, 2*time.Second, log) })
	g.Go(func() error { return ServePProf(gctx, pprof, log) })
	return g.Wait()
}
