package ops

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The healthcheck passes only on a 200 from /readyz, reads a wildcard host
// as 127.0.0.1 (the line printed names the URL asked) and refuses an
// address it cannot ask.
func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	mux := http.NewServeMux()
	Handle(mux, ready.Load, NewRegistry())
	srv := httptest.NewServer(mux)
	defer srv.Close()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nobody := ln.Addr().String()
	ln.Close()

	for _, tt := range []struct {
		name, addr string
		ready      bool
		want       string // in the line printed, or in the error when it starts with "not ready" or "healthcheck"
	}{
		{"ready", "127.0.0.1:" + port, true, "ready: GET http://127.0.0.1:" + port + "/readyz: 200 OK"},
		{"empty host", ":" + port, true, "ready: GET http://127.0.0.1:" + port + "/readyz: 200"},
		{"IPv4 wildcard", "0.0.0.0:" + port, true, "ready: GET http://127.0.0.1:" + port + "/readyz: 200"},
		{"IPv6 wildcard", "[::]:" + port, true, "ready: GET http://127.0.0.1:" + port + "/readyz: 200"},
		{"503", "127.0.0.1:" + port, false, `not ready: GET http://127.0.0.1:` + port + `/readyz: 503 Service Unavailable ("not ready: NATS unavailable")`},
		{"503 on a wildcard", ":" + port, false, "not ready: GET http://127.0.0.1:" + port + "/readyz: 503"},
		{"nothing listens", nobody, true, "not ready: Get"},
		{"no port", "127.0.0.1", true, "healthcheck: "},
		{"empty port", "127.0.0.1:", true, "healthcheck: "},
		{"port 0", "127.0.0.1:0", true, "port 0"},
		{"port too large", "127.0.0.1:65536", true, "healthcheck: "},
		{"port not a number", "127.0.0.1:no-such-port", true, "healthcheck: "},
		{"unclosed bracket", "[::1:" + port, true, "healthcheck: "},
		{"empty", "", true, "healthcheck: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ready.Store(tt.ready)
			var out strings.Builder
			err := Healthcheck(context.Background(), tt.addr, &out)
			if strings.HasPrefix(tt.want, "ready") {
				if err != nil || !strings.Contains(out.String(), tt.want) || strings.Count(out.String(), "\n") != 1 {
					t.Fatalf("Healthcheck(%q) = %v, printed %q; want nil and a line with %q", tt.addr, err, out.String(), tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Healthcheck(%q) = %v, want an error with %q", tt.addr, err, tt.want)
			}
			if out.Len() > 0 {
				t.Errorf("printed %q as well as the error", out.String())
			}
		})
	}
}

// A server that accepts and never answers fails the check within the
// 3 s the README promises, instead of holding it. The test's own deadline
// is longer, so a check without its timeout fails here instead of hanging.
func TestHealthcheckSilentServer(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // before srv.Close, which waits for the handler
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	err := Healthcheck(ctx, srv.Listener.Addr().String(), &strings.Builder{})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("Healthcheck = %v, want not ready", err)
	}
	if took > 3*time.Second {
		t.Fatalf("took %v, more than 3 s", took)
	}
	t.Logf("gave up after %v: %v", took, err)
}
