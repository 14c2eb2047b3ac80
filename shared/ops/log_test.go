package ops

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/logwatch"
)

// Each format writes its own lines, each level hides what is below it,
// and case does not matter.
func TestNewLogger(t *testing.T) {
	for _, tt := range []struct {
		format, level string
		json          bool
		shown         []string // of debug, info, warn, error
	}{
		{"text", "info", false, []string{"info", "warn", "error"}},
		{"json", "debug", true, []string{"debug", "info", "warn", "error"}},
		{"JSON", "Warn", true, []string{"warn", "error"}},
		{"text", "error", false, []string{"error"}},
	} {
		var out strings.Builder
		log, err := NewLogger(&out, config.Log{Format: tt.format, Level: tt.level})
		if err != nil {
			t.Fatalf("%s %s: %v", tt.format, tt.level, err)
		}
		log = log.With("service", "test")
		log.Debug("said debug", "n", 1)
		log.Info("said info", "n", 1)
		log.Warn("said warn", "n", 1)
		log.Error("said error", "n", 1)
		lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
		if len(lines) != len(tt.shown) {
			t.Fatalf("%s %s: lines %q, want %v", tt.format, tt.level, lines, tt.shown)
		}
		for i, line := range lines {
			want := "said " + tt.shown[i]
			if tt.json {
				var obj map[string]any
				if err := json.Unmarshal([]byte(line), &obj); err != nil {
					t.Fatalf("%s %s: not JSON: %q", tt.format, tt.level, line)
				}
				if obj["msg"] != want || obj["service"] != "test" || obj["n"] != 1.0 || obj["level"] != strings.ToUpper(tt.shown[i]) {
					t.Errorf("%s %s: %q", tt.format, tt.level, line)
				}
				continue
			}
			if !strings.HasPrefix(line, "time=") || !strings.Contains(line, "level="+strings.ToUpper(tt.shown[i])+" msg=\""+want+"\" service=test n=1") {
				t.Errorf("%s %s: %q", tt.format, tt.level, line)
			}
		}
	}
}

// An unknown format or level is refused, naming the variable and what it
// takes; both are named when both are wrong.
func TestNewLoggerRefuses(t *testing.T) {
	for _, tt := range []struct {
		format, level string
		want          []string
	}{
		{"xml", "info", []string{`CHAT_LOG_FORMAT="xml"`, "text or json"}},
		{"text", "verbose", []string{`CHAT_LOG_LEVEL="verbose"`, "debug, info, warn or error"}},
		{"", "", []string{`CHAT_LOG_FORMAT=""`, `CHAT_LOG_LEVEL=""`}},
		{"json", "warning", []string{`CHAT_LOG_LEVEL="warning"`}},
	} {
		var out strings.Builder
		_, err := NewLogger(&out, config.Log{Format: tt.format, Level: tt.level})
		if err == nil {
			t.Errorf("format %q level %q accepted", tt.format, tt.level)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("format %q level %q: %v, want %q in it", tt.format, tt.level, err, w)
			}
		}
		if out.Len() > 0 {
			t.Errorf("format %q level %q: logged %q", tt.format, tt.level, out.String())
		}
	}
}

// The listening line is written at any level, with the word, the kind and
// the address in its message; in JSON too.
func TestListeningAtAnyLevel(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		logs := logwatch.New()
		log, err := NewLogger(logs, config.Log{Format: format, Level: "error"})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := Listen("127.0.0.1:0", log.With("service", "test"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if got := logs.Await(t, "http", time.Second); got != ln.Addr().String() {
			t.Errorf("%s: logged %s, listening on %s", format, got, ln.Addr())
		}
		if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), "service") {
			t.Errorf("%s: %q", format, logs.String())
		}
	}
}

// What net/http logs itself, a handler's panic say, goes to the logger in
// its format, not to the standard logger.
func TestServeLogsThroughSlog(t *testing.T) {
	logs := logwatch.New()
	log, err := NewLogger(logs, config.Log{Format: "json", Level: "info"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen("127.0.0.1:0", log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("handler fails") }),
			time.Second, log)
	}()
	if resp, err := http.Get("http://" + ln.Addr().String() + "/"); err == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var panicked bool
	for line := range strings.Lines(logs.String()) {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		if msg, _ := obj["msg"].(string); strings.Contains(msg, "panic serving") && strings.Contains(msg, "handler fails") && obj["level"] == "WARN" {
			panicked = true
		}
	}
	if !panicked {
		t.Fatalf("no warning of the panic in %s", logs.String())
	}
}
