package ops

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/logwatch"
)

// Without an address there is no pprof listener, and serving none ends
// at once; with one, its line carries listener=pprof and it serves the
// profiles until its context ends.
func TestPProf(t *testing.T) {
	ln, err := ListenPProf("", slog.New(slog.DiscardHandler))
	if ln != nil || err != nil {
		t.Fatalf("ListenPProf(\"\") = %v, %v; want nil, nil", ln, err)
	}
	if err := ServePProf(context.Background(), nil, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("ServePProf without a listener: %v", err)
	}

	logs := logwatch.New()
	log := slog.New(slog.NewTextHandler(logs, nil))
	if ln, err = ListenPProf("127.0.0.1:0", log); err != nil {
		t.Fatal(err)
	}
	if got := logs.Await(t, "pprof", time.Second); got != ln.Addr().String() {
		t.Fatalf("logged %s, listening on %s", got, ln.Addr())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServePProf(ctx, ln, log) }()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/symbol"} {
		resp, err := client.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", path, resp.Status)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ServePProf: %v", err)
	}
}
