package edge

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/services/edge/ws"
)

// logEdge is an edge without NATS whose log lines, in JSON, go to w.
func logEdge(t testing.TB, w io.Writer) *Edge {
	t.Helper()
	e, err := New(Config{ID: "edge-1", Limits: limits(64)}, nil, fstest.MapFS{}, slog.New(slog.NewJSONHandler(w, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// The lines of a connection's life name its user, session and address,
// and the close line the code it ended with and why (as the wire reports
// them, ws.Handler.Closed); an address read from X-Forwarded-For that is
// not one is left out.
func TestConnectionLines(t *testing.T) {
	for _, tt := range []struct {
		code         int
		reason, addr string
		wantAddr     string
	}{
		{1000, "closed by the client", "192.0.2.1", "192.0.2.1"},
		{1006, "connection lost", "2001:db8::/64", "2001:db8::/64"},
		{ws.ClosePolicyViolation, "slow client: send queue full", "forwarded:eyJ.a.b", "forwarded:(not an address)"},
	} {
		var out strings.Builder
		e := logEdge(t, &out)
		c := newClient(e, "alice", tt.addr)
		c.session = "s1"
		e.logOpened(c)
		e.logClosed(c, tt.code, tt.reason)
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != 2 {
			t.Fatalf("lines %q", lines)
		}
		var open, closed map[string]any
		if json.Unmarshal([]byte(lines[0]), &open) != nil || json.Unmarshal([]byte(lines[1]), &closed) != nil {
			t.Fatalf("lines %q", lines)
		}
		for _, l := range []map[string]any{open, closed} {
			if l["edge"] != "edge-1" || l["user"] != "alice" || l["session"] != "s1" || l["addr"] != tt.wantAddr || l["level"] != "INFO" {
				t.Errorf("%v", l)
			}
		}
		if open["msg"] != "websocket open" || closed["msg"] != "websocket closed" || closed["code"] != float64(tt.code) ||
			closed["reason"] != tt.reason || closed["duration"] == nil {
			t.Errorf("code %d reason %q: %v then %v", tt.code, tt.reason, open, closed)
		}
	}
}

// BenchmarkConnectionLines is the cost of a connection's two lines, in
// JSON to a writer that takes them at once: on a connect burst there are
// thousands a second.
func BenchmarkConnectionLines(b *testing.B) {
	e := logEdge(b, io.Discard)
	c := newClient(e, "alice", "192.0.2.1")
	c.session = "0123456789abcdef"
	b.ReportAllocs()
	for b.Loop() {
		e.logOpened(c)
		e.logClosed(c, ws.CloseGoingAway, "server shutting down")
	}
}
