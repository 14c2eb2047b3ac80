package servicetest

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// CheckPProf tests a separate service's CHAT_PPROF_ADDR against the NATS
// server at url. Unset or empty, the default, nothing listens beyond the
// HTTP address: its listening line is the only one. Set to 127.0.0.1:0,
// a listener of its own, logged with listener=pprof after the HTTP line,
// serves /debug/pprof/heap, which the HTTP address does not serve. An
// address that cannot be opened stops run at start, with an error that
// says it is pprof's.
func CheckPProf(t *testing.T, run RunFunc, url string) {
	t.Helper()
	t.Setenv("CHAT_NATS_URL", url)
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	for _, tt := range []struct {
		name  string
		unset bool
		value string
		want  []string // the kinds of the listening lines, in order
	}{
		{"unset", true, "", []string{"http"}},
		{"empty", false, "", []string{"http"}},
		{"on a port of its own", false, "127.0.0.1:0", []string{"http", "pprof"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("CHAT_PPROF_ADDR", tt.value)
			if tt.unset {
				// envconfig takes a variable set to "" as a value, not as unset.
				os.Unsetenv("CHAT_PPROF_ADDR") // t.Setenv restores it
			}
			addr, logs, stop := RunWatched(t, run)
			// Served, so every listener is open: the pprof one opens
			// before the HTTP one serves.
			GetOK(t, addr, "/healthz")
			if code := getStatus(t, addr, "/debug/pprof/heap"); code != http.StatusNotFound {
				t.Errorf("GET /debug/pprof/heap on the HTTP address %s: %d, want 404", addr, code)
			}
			var kinds []string
			for _, l := range logs.Listening() {
				kinds = append(kinds, l.Kind)
			}
			if !slices.Equal(kinds, tt.want) {
				t.Fatalf("listening lines of kinds %v, want %v:\n%s", kinds, tt.want, logs.String())
			}
			if slices.Contains(kinds, "pprof") {
				pprof := logs.Await(t, "pprof", time.Second)
				if pprof == addr {
					t.Fatalf("pprof listens on the HTTP address %s", addr)
				}
				GetOK(t, pprof, "/debug/pprof/heap", "/debug/pprof/")
			}
			stop()
		})
	}
	t.Run("address taken", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		t.Setenv("CHAT_PPROF_ADDR", ln.Addr().String())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := run(ctx, nil, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "pprof: http listen "+ln.Addr().String()) {
			t.Fatalf("CHAT_PPROF_ADDR=%s, taken: run returned %v, want an error naming pprof and the address", ln.Addr(), err)
		}
	})
}

// getStatus is the status of GET path on addr.
func getStatus(t *testing.T, addr, path string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
