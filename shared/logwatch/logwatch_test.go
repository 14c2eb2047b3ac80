package logwatch

import (
	"log/slog"
	"slices"
	"testing"
)

// Each listening line is found in text and in JSON, the pprof listener's
// told from the service's own by its listener attribute, whatever the
// order the lines come in.
func TestListening(t *testing.T) {
	for _, json := range []bool{false, true} {
		w := New()
		var log *slog.Logger
		if json {
			log = slog.New(slog.NewJSONHandler(w, nil))
		} else {
			log = slog.New(slog.NewTextHandler(w, nil))
		}
		log = log.With("service", "edge")
		log.With("listener", "pprof").Info("listening http 127.0.0.1:6060", "kind", "http", "addr", "127.0.0.1:6060")
		log.Info("listening http 127.0.0.1:8080", "kind", "http", "addr", "127.0.0.1:8080")
		log.Info("listening nats 127.0.0.1:4222", "kind", "nats", "addr", "127.0.0.1:4222")
		log.Info("nats connected", "listener", "pprof")
		var got []Listener
		for _, l := range w.Listening() {
			got = append(got, Listener{Kind: l.Kind, Addr: l.Addr})
		}
		want := []Listener{{"pprof", "127.0.0.1:6060", ""}, {"http", "127.0.0.1:8080", ""}, {"nats", "127.0.0.1:4222", ""}}
		if !slices.Equal(got, want) {
			t.Errorf("json %v: %v, want %v", json, got, want)
		}
		for kind, addr := range map[string]string{"http": "127.0.0.1:8080", "pprof": "127.0.0.1:6060", "nats": "127.0.0.1:4222"} {
			if a := w.Await(t, kind, 0); a != addr {
				t.Errorf("json %v: Await(%s) = %s, want %s", json, kind, a, addr)
			}
		}
	}
}
