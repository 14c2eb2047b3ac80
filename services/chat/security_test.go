package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/natstest"
	"github.com/natter-chat/natter/shared/servicetest"
)

const testSecret = "a secret for the tests, 32 bytes+"

// dialStatus opens /ws with query and headers and returns the HTTP status
// of the answer (101 for an upgrade) and, when upgraded, the connection.
func dialStatus(t *testing.T, base, query string, h http.Header) (int, *websocket.Conn) {
	t.Helper()
	url := strings.Replace(base, "http://", "ws://", 1) + "/ws?" + query
	conn, resp, err := websocket.DefaultDialer.Dial(url, h)
	if resp == nil {
		t.Fatalf("dial %s: %v", query, err)
	}
	if conn != nil {
		t.Cleanup(func() { _ = conn.Close() })
	}
	return resp.StatusCode, conn
}

func hs(t *testing.T, method jwt.SigningMethod, key any, c jwt.RegisteredClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// With CHAT_AUTH_SECRET, /ws takes an HS256 token with sub and exp, and
// refuses everything else with 401 before the upgrade; the user is the
// token's sub, whatever the user parameter says. Origin comes first.
func TestTokens(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Web.AuthSecret = testSecret })
	now := time.Now()
	good, err := auth.Sign([]byte(testSecret), "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := auth.Sign([]byte("another secret, as long as the first one"), "alice", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := auth.Sign([]byte(testSecret), "alice", time.Minute, now.Add(-time.Hour))
	future := jwt.NewNumericDate(now.Add(time.Hour))
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	refused := []struct{ name, query string }{
		{"no token", "user=alice"},
		{"empty token", "token="},
		{"garbage", "token=abc.def.ghi"},
		{"forged", "token=" + forged},
		{"expired", "token=" + expired},
		{"without exp", "token=" + hs(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.RegisteredClaims{Subject: "alice"})},
		{"alg none", "token=" + hs(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: future})},
		{"HS512", "token=" + hs(t, jwt.SigningMethodHS512, []byte(testSecret), jwt.RegisteredClaims{Subject: "alice", ExpiresAt: future})},
		{"ES256", "token=" + hs(t, jwt.SigningMethodES256, ec, jwt.RegisteredClaims{Subject: "alice", ExpiresAt: future})},
		{"sub not a name", "token=" + hs(t, jwt.SigningMethodHS256, []byte(testSecret), jwt.RegisteredClaims{Subject: "a.b", ExpiresAt: future})},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			if status, _ := dialStatus(t, e.url, tc.query, nil); status != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", status)
			}
		})
	}
	if status, _ := dialStatus(t, e.url, "token="+good, http.Header{"Origin": {"https://evil.example"}}); status != http.StatusForbidden {
		t.Errorf("a good token from a foreign origin: status %d, want 403", status)
	}
	status, conn := dialStatus(t, e.url, "user=mallory&token="+good, nil)
	if status != http.StatusSwitchingProtocols {
		t.Fatalf("a good token: status %d", status)
	}
	_, data, err := conn.ReadMessage()
	if err != nil {
		t.Fatal(err)
	}
	var w event
	if err := json.Unmarshal(data, &w); err != nil || w.Type != "welcome" || w.User != "alice" {
		t.Fatalf("welcome %s (%v); want user alice, the token's sub", data, err)
	}
	// A user parameter that breaks the name rules is ignored as well.
	if status, _ := dialStatus(t, e.url, "user=b%20d&token="+good, nil); status != http.StatusSwitchingProtocols {
		t.Errorf("a good token with a bad user parameter: status %d, want 101 (the parameter is ignored)", status)
	}
	if n := counter(t, e.reg, "natter_edge_upgrades_refused_total"); n != float64(len(refused)+1) {
		t.Errorf("%v upgrades counted as refused, want %d", n, len(refused)+1)
	}
}

// CHAT_MAX_CONNS_PER_IP: past it, 429 before the upgrade (and before the
// token or name is looked at); a closed connection frees its place.
func TestConnectionsPerAddress(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) { c.Web.MaxConnsPerIP = 2 })
	a, b := dial(t, e.url, "alice"), dial(t, e.url, "bob")
	if status, _ := dialStatus(t, e.url, "user=carol", nil); status != http.StatusTooManyRequests {
		t.Fatalf("a third connection: status %d, want 429", status)
	}
	if status, _ := dialStatus(t, e.url, "user=b%20d", nil); status != http.StatusTooManyRequests {
		t.Fatalf("a third connection with a bad name: status %d, want 429 (checked first)", status)
	}
	a.close()
	servicetest.WaitFor(t, wait, "alice's place freed", func() bool {
		status, conn := dialStatus(t, e.url, "user=carol", nil)
		if conn != nil {
			_ = conn.Close()
		}
		return status == http.StatusSwitchingProtocols
	})
	b.join("lobby") // the others were never disturbed

	// Refusals after the count (a bad token) and failed upgrades (a plain
	// GET) give their place back.
	ea := startEdge(t, ns, func(c *edge.Config) {
		c.Web.MaxConnsPerIP, c.Web.AuthSecret = 2, testSecret
	})
	for range 5 {
		if status, _ := dialStatus(t, ea.url, "token=bad", nil); status != http.StatusUnauthorized {
			t.Fatalf("a bad token: status %d, want 401", status)
		}
	}
	tok, err := auth.Sign([]byte(testSecret), "carol", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		resp, err := http.Get(ea.url + "/ws?token=" + tok) // no upgrade headers: the upgrade fails
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("a plain GET: status %d, want 400 from the upgrader", resp.StatusCode)
		}
	}
	for i := range 2 {
		if status, _ := dialStatus(t, ea.url, "token="+tok, nil); status != http.StatusSwitchingProtocols {
			t.Fatalf("connection %d after the refusals: status %d", i+1, status)
		}
	}
	if status, _ := dialStatus(t, ea.url, "token="+tok, nil); status != http.StatusTooManyRequests {
		t.Fatalf("a third: status %d, want 429", status)
	}
	// The contract's order at the limit: Origin (403) before the address
	// (429) before the token (401).
	if status, _ := dialStatus(t, ea.url, "token=bad", nil); status != http.StatusTooManyRequests {
		t.Fatalf("a bad token over the limit: status %d, want 429 (checked before the token)", status)
	}
	foreign := http.Header{"Origin": {"https://elsewhere.example"}}
	if status, _ := dialStatus(t, ea.url, "token="+tok, foreign); status != http.StatusForbidden {
		t.Fatalf("a foreign origin over the limit: status %d, want 403 (checked first)", status)
	}
}

// Messages and dms beyond the rate (10 a second, bursts of 20) are
// refused with rate_limited, are not stored, and the connection stays.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	ns := natstest.Start(t)
	startBroadcaster(t, ns)
	e := startEdge(t, ns, func(c *edge.Config) {
		c.Limits.MessageRate, c.Limits.MessageBurst = 10, 20
	})
	c := dial(t, e.url, "alice")
	c.join("lobby")
	nc := natstest.Connect(t, ns)
	before := streamMsgs(t, nc)
	// Refused posts do not count against the rate, and are refused for
	// what is wrong with them, not for the rate: 30 of each, more than
	// the burst.
	long := strings.Repeat("x", 4001)
	refused := []struct{ code, frame string }{
		{"bad_request", `{"type":"message","room":"lobby","text":"  ","id":"r%d"}`},
		{"too_long", `{"type":"message","room":"lobby","text":"` + long + `","id":"r%d"}`},
		{"too_long", `{"type":"dm","to":"bob","text":"` + long + `","id":"r%d"}`},
		{"not_joined", `{"type":"message","room":"elsewhere","text":"hi","id":"r%d"}`},
	}
	for _, r := range refused {
		for i := range 30 {
			c.sendRaw(fmt.Sprintf(r.frame, i))
		}
		for range 30 {
			if ev := c.expect("error"); ev.Code != r.code {
				t.Fatalf("want %s: %s", r.code, ev.raw)
			}
		}
	}
	const sent = 60
	var frame strings.Builder
	for i := range sent {
		if i%2 == 0 {
			fmt.Fprintf(&frame, `{"type":"message","room":"lobby","text":"flood %d","id":"m%d"}`+"\n", i, i)
		} else {
			fmt.Fprintf(&frame, `{"type":"dm","to":"bob","text":"flood %d","id":"m%d"}`+"\n", i, i)
		}
	}
	c.sendRaw(frame.String()) // all at once, far faster than 10 a second
	acked, limited := 0, 0
	for acked+limited < sent {
		switch ev := c.next(); ev.Type {
		case "ack":
			acked++
		case "error":
			if ev.Code != "rate_limited" || !strings.HasPrefix(ev.id(), "m") {
				t.Fatalf("error %s", ev.raw)
			}
			limited++
		}
	}
	// The burst of 20 and what the rate refilled while they were stored.
	if acked < 20 || acked > 40 {
		t.Fatalf("%d acked, %d rate limited of %d", acked, limited, sent)
	}
	stored := streamMsgs(t, nc) - before
	dms := dmStreamMsgs(t, nc)
	if int(stored+dms) != acked {
		t.Fatalf("%d room messages and %d dms stored, %d acked", stored, dms, acked)
	}
	// Still connected: a post is taken again once the rate allows.
	servicetest.WaitFor(t, wait, "a post taken again", func() bool {
		c.send(map[string]any{"type": "message", "room": "lobby", "text": "later", "id": "later"})
		for {
			switch ev := c.next(); ev.Type {
			case "ack":
				return true
			case "error":
				return false
			}
		}
	})
}

// chat token prints a token that the edges take, for the user asked,
// signed with CHAT_AUTH_SECRET; without the secret, or for a bad name, it
// refuses.
func TestTokenCommand(t *testing.T) {
	var out, errs strings.Builder
	t.Setenv("CHAT_AUTH_SECRET", testSecret)
	if err := run(context.Background(), []string{"token", "-user", "alice", "-ttl", "1h"}, &out, &errs); err != nil {
		t.Fatal(err)
	}
	if user, err := auth.Check([]byte(testSecret), strings.TrimSpace(out.String())); err != nil || user != "alice" {
		t.Fatalf("printed %q: %q, %v", out.String(), user, err)
	}
	for _, args := range [][]string{{"token", "-user", "a.b"}, {"token"}, {"token", "-user", "alice", "extra"}} {
		if err := run(context.Background(), args, &out, &errs); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	t.Setenv("CHAT_AUTH_SECRET", "")
	if err := run(context.Background(), []string{"token", "-user", "alice"}, &out, &errs); err == nil || !strings.Contains(err.Error(), "CHAT_AUTH_SECRET") {
		t.Fatalf("without a secret: %v", err)
	}
}
