// Package servicetest runs a service binary's run function in-process for
// a test: configuration from the environment (t.Setenv), logs captured,
// the HTTP address taken from the "listening" line each process logs. It
// also holds what every natter test waits with: WaitFor and Poll.
package servicetest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/logwatch"
)

// RunFunc is a binary's run: the whole program, with its arguments (after
// the program name) and its output.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Run starts run without arguments in a goroutine and waits for its
// "listening http" line. stop cancels it, waits for it and fails the test
// if it returned an error; it also runs when the test ends.
func Run(t *testing.T, run RunFunc) (addr string, stop func()) {
	t.Helper()
	addr, _, stop = RunWatched(t, run)
	return addr, stop
}

// RunWatched is Run that also returns what run logs.
func RunWatched(t *testing.T, run RunFunc) (addr string, logs *logwatch.Watch, stop func()) {
	t.Helper()
	logs = logwatch.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, io.Discard, logs) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v\n%s", err, logs.String())
		}
	}
	t.Cleanup(stop)
	return logs.Await(t, "http", 10*time.Second), logs, stop
}

// GetOK checks that each path answers 200 on addr.
func GetOK(t *testing.T, addr string, paths ...string) {
	t.Helper()
	for _, path := range paths {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}
}

// Healthcheck runs run's healthcheck subcommand with CHAT_HTTP_ADDR set
// to addr, or unset when addr is empty, and returns what it printed and
// its error.
func Healthcheck(t *testing.T, run RunFunc, addr string) (string, error) {
	t.Helper()
	t.Setenv("CHAT_HTTP_ADDR", addr)
	if addr == "" {
		// envconfig takes a variable set to "" as a value, not as unset.
		os.Unsetenv("CHAT_HTTP_ADDR") // t.Setenv restores it
	}
	var out strings.Builder
	err := run(context.Background(), []string{"healthcheck"}, &out, io.Discard)
	return out.String(), err
}

// CheckHealthcheck tests run's healthcheck subcommand against the service
// run itself starts on 127.0.0.1:0, configured from the environment
// against a NATS server that stopNATS shuts down: it passes while the
// service is ready, fails with 503 once NATS is gone, and fails again
// once the service has stopped and nothing listens there. stopNATS should
// first wait for what the service makes in JetStream at start: a server
// shut down while it makes a stream leaks the stream's goroutines.
func CheckHealthcheck(t *testing.T, run RunFunc, stopNATS func()) {
	t.Helper()
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	addr, stop := Run(t, run)
	ready := "ready: GET http://" + addr + "/readyz: 200 OK"
	awaitHealthcheck(t, run, addr, func(out string, err error) bool { return err == nil && strings.Contains(out, ready) })
	stopNATS()
	awaitHealthcheck(t, run, addr, func(_ string, err error) bool {
		return err != nil && strings.Contains(err.Error(), "not ready: GET http://"+addr+"/readyz: 503")
	})
	stop()
	if out, err := Healthcheck(t, run, addr); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("healthcheck with nothing listening on %s: printed %q, error %v; want not ready", addr, out, err)
	}
}

// awaitHealthcheck runs the healthcheck against addr until its outcome is
// what want looks for, for up to 10 s: readiness follows NATS with a lag.
func awaitHealthcheck(t *testing.T, run RunFunc, addr string, want func(out string, err error) bool) {
	t.Helper()
	var out string
	var err error
	if !Poll(10*time.Second, func() bool { out, err = Healthcheck(t, run, addr); return want(out, err) }) {
		t.Fatalf("healthcheck on %s after 10 s: printed %q, error %v", addr, out, err)
	}
}

// CheckArguments tests what a separate service's run does with its
// arguments: without CHAT_HTTP_ADDR the healthcheck asks the service's own
// default address (defaultAddr, a port on 127.0.0.1), and any other
// argument is refused before anything starts.
func CheckArguments(t *testing.T, run RunFunc, defaultAddr string) {
	t.Helper()
	t.Setenv("CHAT_NATS_URL", "") // so that an argument taken by mistake ends run at once
	out, err := Healthcheck(t, run, "")
	if want := "http://" + defaultAddr + "/readyz"; !strings.Contains(out, want) && (err == nil || !strings.Contains(err.Error(), want)) {
		t.Errorf("healthcheck without CHAT_HTTP_ADDR: printed %q, error %v; want %s asked", out, err, want)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"serve"}, "the one subcommand is healthcheck"},
		{[]string{"-h"}, "the one subcommand is healthcheck"},
		{[]string{"healthcheck", "now"}, `healthcheck: unexpected arguments ["now"]`},
	} {
		if err := run(context.Background(), tt.args, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("run %q: %v, want an error with %q", tt.args, err, tt.want)
		}
	}
}

// CheckRefusesReplicas tests that run stops at start, with an error
// naming the setting, when CHAT_STREAM_REPLICAS is below 1, above what
// JetStream keeps, or more than the single NATS server at url can hold;
// main then exits 1.
func CheckRefusesReplicas(t *testing.T, run RunFunc, url string) {
	t.Helper()
	t.Setenv("CHAT_NATS_URL", url)
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	for _, tt := range []struct{ value, want string }{
		{"0", "CHAT_STREAM_REPLICAS=0"},
		{"3", "CHAT_STREAM_REPLICAS=3 but the NATS server is not in a cluster"},
		{"6", "CHAT_STREAM_REPLICAS=6: JetStream keeps at most 5 copies"},
	} {
		t.Setenv("CHAT_STREAM_REPLICAS", tt.value)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := run(ctx, nil, io.Discard, io.Discard)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CHAT_STREAM_REPLICAS=%s: run returned %v, want %q", tt.value, err, tt.want)
		}
	}
}

// CheckLogSettings tests a separate service's CHAT_LOG_FORMAT and
// CHAT_LOG_LEVEL against the NATS server at url: a value it does not know
// stops run at start, with an error naming the variable and the values it
// takes, before anything is logged (main then exits 1); and with json,
// every line is one JSON object carrying the service's name (service),
// the listening line among them.
func CheckLogSettings(t *testing.T, run RunFunc, url, service string) {
	t.Helper()
	t.Setenv("CHAT_NATS_URL", url)
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	for _, tt := range []struct{ format, level, want string }{
		{"xml", "info", `CHAT_LOG_FORMAT="xml": the log format is text or json`},
		{"text", "verbose", `CHAT_LOG_LEVEL="verbose": the log level is debug, info, warn or error`},
		{"json", "", `CHAT_LOG_LEVEL="": the log level is debug, info, warn or error`},
	} {
		t.Setenv("CHAT_LOG_FORMAT", tt.format)
		t.Setenv("CHAT_LOG_LEVEL", tt.level)
		var logged strings.Builder
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := run(ctx, nil, io.Discard, &logged)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CHAT_LOG_FORMAT=%q CHAT_LOG_LEVEL=%q: run returned %v, want %q", tt.format, tt.level, err, tt.want)
		}
		if logged.Len() > 0 {
			t.Errorf("CHAT_LOG_FORMAT=%q CHAT_LOG_LEVEL=%q: logged %q before refusing", tt.format, tt.level, logged.String())
		}
	}
	t.Setenv("CHAT_LOG_FORMAT", "json")
	t.Setenv("CHAT_LOG_LEVEL", "debug")
	_, logs, stop := RunWatched(t, run)
	stop()
	listening := false
	for line := range strings.Lines(logs.String()) {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("a line that is not one JSON object: %q", line)
			continue
		}
		if obj["service"] != service {
			t.Errorf("a line without service=%s: %q", service, line)
		}
		if obj["kind"] == "http" && strings.HasPrefix(obj["msg"].(string), "listening http 127.0.0.1:") {
			listening = true
		}
	}
	if !listening {
		t.Errorf("no listening line in JSON:\n%s", logs.String())
	}
}
