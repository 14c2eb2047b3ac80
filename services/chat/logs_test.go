package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/logwatch"
	"github.com/natter-chat/natter/shared/servicetest"
)

// runLogged runs the single binary's run in-process, configured from the
// environment on random ports, its logs collected. It returns the HTTP
// base URL; stop cancels run and waits for it to return, so that every
// line is written (it also runs when the test ends).
func runLogged(t *testing.T) (base string, logs *logwatch.Watch, stop func()) {
	t.Helper()
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CHAT_NATS_ADDR", "127.0.0.1:0")
	t.Setenv("CHAT_DATA_DIR", t.TempDir())
	addr, logs, stop := servicetest.RunWatched(t, run)
	logs.Await(t, "nats", wait)
	return "http://" + addr, logs, stop
}

// jsonLines parses each line of logs as one JSON object, failing the test
// on any line that is not.
func jsonLines(t *testing.T, logs string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.Lines(logs) {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Errorf("a line that is not one JSON object (%v): %q", err, line)
			continue
		}
		out = append(out, obj)
	}
	return out
}

// signed is a token for user signed with the tests' secret.
func signed(t *testing.T, user string) string {
	t.Helper()
	tok, err := auth.Sign([]byte(testSecret), user, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// In JSON at debug, with the embedded server's own lines on, every line is
// one JSON object; message texts, dm texts and tokens are in none of them,
// whichever way they came (a post, a dm, malformed and over-long frames, a
// close reason, a bad token, a token in a header, in X-Forwarded-For, in a
// request net/http reads, in a path); and each connection has its open and
// its close line, with the close code it ended with.
func TestLogJSONHoldsNoTextOrToken(t *testing.T) {
	const marker = "MARKER-4b9e2d"
	t.Setenv("CHAT_LOG_FORMAT", "json")
	t.Setenv("CHAT_LOG_LEVEL", "debug")
	t.Setenv("CHAT_AUTH_SECRET", testSecret)
	t.Setenv("CHAT_NATS_LOGS", "true")
	t.Setenv("CHAT_TRUSTED_PROXIES", "127.0.0.1")
	base, logs, stop := runLogged(t)
	ws := strings.Replace(base, "http://", "ws://", 1) + "/ws?"
	tokens := map[string]string{}
	for _, u := range []string{"alice", "bob", "carol", "dave"} {
		tokens[u] = signed(t, u)
	}
	d := websocket.DefaultDialer

	// bob, behind a trusted proxy that forwards his token as his address,
	// his token also in Authorization and a marked user parameter.
	bob := dialURL(t, d, ws+"user="+marker+"&token="+tokens["bob"],
		http.Header{"X-Forwarded-For": {tokens["bob"]}, "Authorization": {"Bearer " + tokens["bob"]}}, "bob", nil)
	// carol's request has more parameters than the edge reads itself:
	// net/http and gorilla read it.
	carolURL := ws + "token=" + tokens["carol"]
	for i := range 17 {
		carolURL += "&p" + strconv.Itoa(i) + "=" + marker
	}
	carol := dialURL(t, d, carolURL, http.Header{"Authorization": {"Bearer " + tokens["carol"]}}, "carol", nil)

	alice := dialURL(t, d, ws+"token="+tokens["alice"], nil, "alice", nil)
	alice.join("lobby")
	carol.join("lobby")
	alice.post("lobby", "room text "+marker, "1")
	alice.acked(map[string]any{"type": "dm", "to": "bob", "text": "dm text " + marker, "id": "2"}, "2")
	if dm := bob.expect("dm"); !strings.Contains(dm.Text, marker) {
		t.Fatalf("bob got %s", dm.raw)
	}
	for _, bad := range []string{
		`{"type":"message","room":"lobby","text":"` + marker,                                             // not JSON
		`{"type":"` + marker + `","text":"` + marker + `"}`,                                              // unknown type
		`{"type":"message","room":"` + marker + `.x","text":"` + marker + `","id":"3"}`,                  // invalid room
		`{"type":"message","room":"lobby","text":"` + strings.Repeat("x", 4000) + marker + `","id":"4"}`, // too long
		`{"type":"dm","to":"` + marker + `!","text":"` + marker + `","id":"5"}`,                          // invalid user
	} {
		alice.sendRaw(bad)
		ev := alice.next()
		for ev.Type == "message" || ev.Type == "dm" { // her own, echoed
			ev = alice.next()
		}
		if ev.Type != "error" {
			t.Fatalf("answer to %.60s: %s", bad, ev.raw)
		}
	}
	// alice closes normally, with a marked reason.
	if err := alice.conn.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye "+marker), time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	if code := alice.closeCode(); code != websocket.CloseNormalClosure {
		t.Fatalf("alice: closed with %d, want her 1000 back", code)
	}
	// dave sends a frame over the limit, full of the marker.
	dave := dialURL(t, d, ws+"token="+tokens["dave"], nil, "dave", nil)
	dave.sendRaw(`{"type":"message","room":"lobby","text":"` + strings.Repeat(marker, 70<<10/len(marker)) + `"}`)
	if code := dave.closeCode(); code != websocket.CloseMessageTooBig {
		t.Fatalf("dave: closed with %d, want 1009", code)
	}

	// Refused: a marked bad token, a forged one for a marked user name.
	forged, err := auth.Sign([]byte("another secret, just as long as the first"), "mallory-"+marker, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"token=" + marker + ".bad.token", "token=" + forged} {
		if status, _ := dialStatus(t, base, q, nil); status != http.StatusUnauthorized {
			t.Fatalf("%s: status %d, want 401", q, status)
		}
	}
	// Tokens where no WebSocket takes them: in a path, in the page's query,
	// in the header of a /metrics request.
	for _, path := range []string{"/ws/" + tokens["alice"], "/?token=" + tokens["alice"], "/metrics"} {
		req, err := http.NewRequest("GET", base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+tokens["alice"])
		httpStatus(t, req)
	}

	stop()
	for _, c := range []*wsClient{bob, carol} {
		if code := c.closeCode(); code != websocket.CloseGoingAway {
			t.Errorf("%s: closed with %d at shutdown, want 1001", c.name, code)
		}
	}

	all := logs.String()
	secrets := map[string]string{"the marker": marker, "the secret": testSecret, "the forged token": forged}
	for u, tok := range tokens {
		secrets[u+"'s token"] = tok
	}
	for line := range strings.Lines(all) {
		for what, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("%s logged: %s", what, line)
			}
		}
	}
	lines := jsonLines(t, all)

	type life struct{ open, closed map[string]any }
	lives := map[string]*life{} // by session
	sessions := map[string]string{alice.session: "alice", bob.session: "bob", carol.session: "carol", dave.session: "dave"}
	var refused, natsLines, natsDebug int
	for _, l := range lines {
		if sv, _ := l["service"].(string); !strings.Contains(" chat edge broadcaster presence nats ", " "+sv+" ") {
			t.Errorf("a line without the service it comes from: %v", l)
		}
		switch {
		case l["msg"] == "websocket open" || l["msg"] == "websocket closed":
			s, _ := l["session"].(string)
			if lives[s] == nil {
				lives[s] = &life{}
			}
			if l["msg"] == "websocket open" {
				if lives[s].open != nil {
					t.Errorf("session %s opened twice", s)
				}
				lives[s].open = l
			} else {
				if lives[s].closed != nil {
					t.Errorf("session %s closed twice", s)
				}
				lives[s].closed = l
			}
		case l["msg"] == "websocket refused":
			refused++
			if l["reason"] != "token" || l["status"] != 401.0 || l["addr"] != "127.0.0.1" || l["level"] != "DEBUG" {
				t.Errorf("refusal line %v", l)
			}
		case l["service"] == "nats":
			natsLines++
			if l["level"] == "DEBUG" {
				natsDebug++
			}
		}
	}
	if refused != 2 {
		t.Errorf("%d refusal lines, want 2", refused)
	}
	if natsLines == 0 || natsDebug == 0 {
		t.Errorf("%d lines of the NATS server, %d at debug; want some of each", natsLines, natsDebug)
	}
	if len(lives) != len(sessions) {
		t.Errorf("open and close lines of %d sessions, want %d", len(lives), len(sessions))
	}
	want := map[string]struct {
		addr   string
		code   float64
		reason string
	}{
		"alice": {"127.0.0.1", 1000, "closed by the client"},
		"bob":   {"forwarded:(not an address)", 1001, "server shutting down"},
		"carol": {"127.0.0.1", 1001, "server shutting down"},
		"dave":  {"127.0.0.1", 1009, "message larger than 65536 bytes"},
	}
	for s, user := range sessions {
		lf := lives[s]
		if lf == nil || lf.open == nil || lf.closed == nil {
			t.Errorf("%s: no open and close lines for session %s", user, s)
			continue
		}
		w := want[user]
		for _, l := range []map[string]any{lf.open, lf.closed} {
			if l["level"] != "INFO" || l["service"] != "edge" || l["user"] != user || l["addr"] != w.addr {
				t.Errorf("%s: %v, want INFO, service edge, user %s, addr %s", user, l, user, w.addr)
			}
			if e, _ := l["edge"].(string); !strings.HasPrefix(e, "edge-") {
				t.Errorf("%s: edge %v", user, l["edge"])
			}
		}
		if lf.closed["code"] != w.code || lf.closed["reason"] != w.reason {
			t.Errorf("%s: closed with code %v reason %v, want %v %q", user, lf.closed["code"], lf.closed["reason"], w.code, w.reason)
		}
		if d, ok := lf.closed["duration"].(float64); !ok || d < 0 || time.Duration(d) > time.Minute {
			t.Errorf("%s: duration %v", user, lf.closed["duration"])
		}
	}
}

// The default text format writes key=value lines; warn hides the Info
// lines but the listening ones, info the Debug lines, and debug shows
// them.
func TestLogTextLevels(t *testing.T) {
	for _, level := range []string{"warn", "info", "debug"} {
		t.Run(level, func(t *testing.T) {
			t.Setenv("CHAT_LOG_FORMAT", "")
			os.Unsetenv("CHAT_LOG_FORMAT") // the default; t.Setenv restores it
			t.Setenv("CHAT_LOG_LEVEL", level)
			base, logs, stop := runLogged(t)
			c := dial(t, base, "alice")
			c.join("lobby")
			c.post("lobby", "hello", "1")
			if err := c.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(wait)); err != nil {
				t.Fatal(err)
			}
			if code := c.closeCode(); code != websocket.CloseNormalClosure {
				t.Fatalf("closed with %d, want 1000 back", code)
			}
			if status, _ := dialStatus(t, base, "user=not%20a%20name", nil); status != http.StatusBadRequest {
				t.Fatalf("a bad name: status %d", status)
			}
			stop()
			levels := map[string]int{}
			var opened, closed, refused, listening int
			for line := range strings.Lines(logs.String()) {
				if !strings.HasPrefix(line, "time=") || strings.HasPrefix(line, "{") {
					t.Errorf("not a text line: %q", line)
				}
				_, rest, _ := strings.Cut(line, " level=")
				lv, _, _ := strings.Cut(rest, " ")
				levels[lv]++
				switch {
				case strings.Contains(line, ` msg="listening `):
					listening++
				case strings.Contains(line, ` msg="websocket open" `):
					opened++
					if !strings.Contains(line, " service=edge edge=edge-") || !strings.Contains(line, " user=alice session="+c.session+" addr=127.0.0.1") {
						t.Errorf("open line %q", line)
					}
				case strings.Contains(line, ` msg="websocket closed" `):
					closed++
					if !strings.Contains(line, " user=alice session="+c.session+" addr=127.0.0.1 code=1000 reason=\"closed by the client\" duration=") {
						t.Errorf("close line %q", line)
					}
				case strings.Contains(line, ` msg="websocket refused" `):
					refused++
					if !strings.Contains(line, "reason=user status=400 addr=127.0.0.1") {
						t.Errorf("refusal line %q", line)
					}
				}
			}
			if listening != 2 {
				t.Errorf("%d listening lines, want 2 (http, nats):\n%s", listening, logs.String())
			}
			switch level {
			case "warn":
				if levels["INFO"] != listening || levels["DEBUG"] > 0 {
					t.Errorf("at warn: %v lines by level, want no INFO but the listening lines and no DEBUG:\n%s", levels, logs.String())
				}
			case "info":
				if opened != 1 || closed != 1 || levels["DEBUG"] > 0 {
					t.Errorf("at info: %d open and %d close lines, %v by level:\n%s", opened, closed, levels, logs.String())
				}
			case "debug":
				if opened != 1 || closed != 1 || refused != 1 {
					t.Errorf("at debug: %d open, %d close and %d refusal lines:\n%s", opened, closed, refused, logs.String())
				}
			}
		})
	}
}

// An unknown CHAT_LOG_FORMAT or CHAT_LOG_LEVEL stops the single binary at
// start, before it logs or starts anything; the real binary then exits 1,
// its one line the error naming the variable and the values it takes.
func TestLogSettingsRefused(t *testing.T) {
	t.Setenv("CHAT_HTTP_ADDR", "127.0.0.1:0")
	t.Setenv("CHAT_NATS_ADDR", "127.0.0.1:0")
	dir := t.TempDir()
	t.Setenv("CHAT_DATA_DIR", filepath.Join(dir, "data"))
	cases := []struct{ format, level, want string }{
		{"yaml", "info", `CHAT_LOG_FORMAT="yaml": the log format is text or json`},
		{"text", "trace", `CHAT_LOG_LEVEL="trace": the log level is debug, info, warn or error`},
	}
	for _, tt := range cases {
		t.Setenv("CHAT_LOG_FORMAT", tt.format)
		t.Setenv("CHAT_LOG_LEVEL", tt.level)
		var logged strings.Builder
		err := run(context.Background(), nil, io.Discard, &logged)
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s %s: run returned %v, want %q", tt.format, tt.level, err, tt.want)
		}
		if logged.Len() > 0 {
			t.Errorf("%s %s: logged %q", tt.format, tt.level, logged.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); !os.IsNotExist(err) {
		t.Errorf("the data folder was made (%v): NATS started", err)
	}
	if testing.Short() {
		return
	}
	bin := buildChat(t)
	for _, tt := range cases {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), "CHAT_LOG_FORMAT="+tt.format, "CHAT_LOG_LEVEL="+tt.level)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Errorf("%s %s: %v, want exit status 1", tt.format, tt.level, err)
		}
		if got := stderr.String(); got != "chat: "+tt.want+"\n" || stdout.Len() > 0 {
			t.Errorf("%s %s: printed %q and %q, want only the error", tt.format, tt.level, stdout.String(), got)
		}
	}
}
