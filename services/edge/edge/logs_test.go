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

// The close line names the code a connection ended with and why: the
// edge's reason, the client's close without its words, 1005 for a close
// frame without a code, 1006 when no close frame went out; an address
// read from X-Forwarded-For that is not one is left out.
func TestConnectionLines(t *testing.T) {
	for _, tt := range []struct {
		code       int
		text, addr string
		wantCode   float64
		wantReason string
		wantAddr   string
	}{
		{1000, "", "192.0.2.1", 1000, "closed by the client", "192.0.2.1"},
		{closeEmpty, "", "192.0.2.1", 1005, "closed by the client", "192.0.2.1"},
		{-1, "connection lost", "2001:db8::/64", 1006, "connection lost", "2001:db8::/64"},
		{-1, "", "192.0.2.1", 1006, "connection lost", "192.0.2.1"},
		{ws.ClosePolicyViolation, "slow client: send queue full", "forwarded:eyJ.a.b", 1008, "slow client: send queue full", "forwarded:(not an address)"},
	} {
		var out strings.Builder
		e := logEdge(t, &out)
		c := newClient(e, nil, "alice", "s1")
		c.addr = tt.addr
		e.logOpened(c)
		c.close(tt.code, tt.text)
		e.logClosed(c)
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
		if open["msg"] != "websocket open" || closed["msg"] != "websocket closed" || closed["code"] != tt.wantCode ||
			closed["reason"] != tt.wantReason || closed["duration"] == nil {
			t.Errorf("code %d text %q: %v then %v", tt.code, tt.text, open, closed)
		}
	}
}

// BenchmarkConnectionLines is the cost of a connection's two lines, in
// JSON to a writer that takes them at once: on a connect burst there are
// thousands a second.
func BenchmarkConnectionLines(b *testing.B) {
	e := logEdge(b, io.Discard)
	c := newClient(e, nil, "alice", "0123456789abcdef")
	c.addr = "192.0.2.1"
	c.close(ws.CloseGoingAway, "server shutting down")
	b.ReportAllocs()
	for b.Loop() {
		e.logOpened(c)
		e.logClosed(c)
	}
}
