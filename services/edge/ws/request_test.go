package ws

import (
	"bufio"
	"bytes"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// plainHead is a plain WebSocket request, with extra header lines.
func plainHead(target string, extra ...string) string {
	return "GET " + target + " HTTP/1.1\r\nHost: chat.example:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + strings.Join(extra, "") + "\r\n"
}

func TestParsePlain(t *testing.T) {
	type want struct {
		host, origin, user, token string
		forwarded                 []string
	}
	accepted := []struct {
		name, head string
		want       want
	}{
		{"minimal", plainHead("/ws?user=amy"), want{host: "chat.example:8080", user: "amy"}},
		{"no query", plainHead("/ws"), want{host: "chat.example:8080"}},
		{"origin and proxies", plainHead("/ws?token=a.b.c&user=x%20y", "Origin: https://chat.example\r\n",
			"X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n", "x-forwarded-for: 10.0.0.3\r\n"),
			want{host: "chat.example:8080", origin: "https://chat.example", token: "a.b.c", user: "x y",
				forwarded: []string{"10.0.0.1, 10.0.0.2", "10.0.0.3"}}},
		{"any case, lists, spaces", "GET /ws?user=bo HTTP/1.1\r\nhost:\t[::1]:80 \r\nupgrade: WebSocket\r\n" +
			"CONNECTION: keep-alive, Upgrade\r\nsec-websocket-key:dGhlIHNhbXBsZSBub25jZQ==\r\n" +
			"sec-websocket-version: 13\r\nSec-WebSocket-Protocol: chat\r\nUser-Agent: test/1 (x)\r\n\r\n",
			want{host: "[::1]:80", user: "bo"}},
		{"upgrade found before a bad element", strings.Replace(plainHead("/ws"), "Connection: Upgrade", "Connection: Upgrade, a b", 1),
			want{host: "chat.example:8080"}},
		{"sixteen parameters", plainHead("/ws?" + strings.Repeat("a=1&", 15) + "user=amy"),
			want{host: "chat.example:8080", user: "amy"}},
	}
	for _, tc := range accepted {
		r, key, ok := parsePlain([]byte(tc.head))
		if !ok {
			t.Errorf("%s: not taken as plain", tc.name)
			continue
		}
		if key != "dGhlIHNhbXBsZSBub25jZQ==" || r.Host != tc.want.host || r.Origin != tc.want.origin ||
			r.Query("user") != tc.want.user || r.Query("token") != tc.want.token || !slices.Equal(r.Forwarded, tc.want.forwarded) {
			t.Errorf("%s: %+v with key %q, want %+v", tc.name, r, key, tc.want)
		}
	}

	refused := []struct{ name, head string }{
		{"POST", strings.Replace(plainHead("/ws"), "GET", "POST", 1)},
		{"HTTP/1.0", strings.Replace(plainHead("/ws"), "HTTP/1.1", "HTTP/1.0", 1)},
		{"another path", plainHead("/wsx")},
		{"a path below", plainHead("/ws/x")},
		{"absolute form", plainHead("http://chat.example/ws")},
		{"fragment", plainHead("/ws?user=a#b")},
		{"two spaces", strings.Replace(plainHead("/ws"), "GET ", "GET  ", 1)},
		{"no host", strings.Replace(plainHead("/ws"), "Host: chat.example:8080\r\n", "", 1)},
		{"two hosts", plainHead("/ws", "Host: other\r\n")},
		{"bad host", strings.Replace(plainHead("/ws"), "chat.example:8080", "chat example", 1)},
		{"two origins", plainHead("/ws", "Origin: http://a\r\n", "Origin: http://b\r\n")},
		{"no upgrade", strings.Replace(plainHead("/ws"), "Upgrade: websocket\r\n", "", 1)},
		{"upgrade to something else", strings.Replace(plainHead("/ws"), "Upgrade: websocket", "Upgrade: h2c", 1)},
		{"connection without upgrade", strings.Replace(plainHead("/ws"), "Connection: Upgrade", "Connection: close", 1)},
		{"version 8", strings.Replace(plainHead("/ws"), "Version: 13", "Version: 8", 1)},
		{"two versions", plainHead("/ws", "Sec-WebSocket-Version: 13\r\n")},
		{"short key", strings.Replace(plainHead("/ws"), "dGhlIHNhbXBsZSBub25jZQ==", "dGhl", 1)},
		{"long key", strings.Replace(plainHead("/ws"), "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ==", 1)},
		{"key not base64", strings.Replace(plainHead("/ws"), "dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ!!", 1)},
		{"two keys", plainHead("/ws", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")},
		{"a body", plainHead("/ws", "Content-Length: 0\r\n")},
		{"chunked", plainHead("/ws", "Transfer-Encoding: chunked\r\n")},
		{"folded line", plainHead("/ws", "X-A: a\r\n", " b\r\n")},
		{"line without colon", plainHead("/ws", "X-A\r\n")},
		{"space before colon", plainHead("/ws", "X-A : a\r\n")},
		{"bare line feed", plainHead("/ws", "X-A: a\nX-B: b\r\n")},
		{"bare carriage return", plainHead("/ws", "X-A: a\rb\r\n")},
		{"control in a value", plainHead("/ws", "X-A: a\x00b\r\n")},
		{"8-bit value", plainHead("/ws", "X-A: caf\xc3\xa9\r\n")},
		{"not ended", strings.TrimSuffix(plainHead("/ws"), "\r\n")},
		{"a blank line more", plainHead("/ws") + "\r\n"},
		{"empty", ""},
		{"short", "000"},
		{"seventeen parameters", plainHead("/ws?" + strings.Repeat("a=1&", 16) + "user=amy")},
		{"a connection list gorilla cannot read", strings.Replace(plainHead("/ws"), "Connection: Upgrade", "Connection: foo bar, Upgrade", 1)},
		{"an empty element first", strings.Replace(plainHead("/ws"), "Connection: Upgrade", "Connection: , Upgrade", 1)},
		{"a parameter in the list", strings.Replace(plainHead("/ws"), "Connection: Upgrade", "Connection: x=y, Upgrade", 1)},
		{"an upgrade list gorilla cannot read", strings.Replace(plainHead("/ws"), "Upgrade: websocket", "Upgrade: h2c/x y, websocket", 1)},
		{"a frame after", plainHead("/ws") + "\x81\x80abcd"},
	}
	for _, tc := range refused {
		if r, _, ok := parsePlain([]byte(tc.head)); ok {
			t.Errorf("%s: taken as plain: %+v", tc.name, r)
		}
	}
}

func TestQueryValue(t *testing.T) {
	for _, q := range []string{"", "user=amy", "a=1&user=amy&user=bob", "user", "user=", "x&&user=a%20b",
		"user=%zz&user=ok", "%zz=1&user=ok", "user=a;b&user=c", "u%73er=enc", "user=a+b", "=x&user=y"} {
		want := ""
		if v, _ := url.ParseQuery(q); v != nil {
			want = v.Get("user")
		}
		if got := queryValue(q, "user"); got != want {
			t.Errorf("%q: %q, want %q as url.ParseQuery finds it", q, got, want)
		}
	}
}

// FuzzParsePlain checks that what the wire takes for a plain WebSocket
// request net/http reads alike: the same host, origin, proxies, user,
// token and key, with nothing left over.
//
//	go test -fuzz FuzzParsePlain ./services/edge/ws
func FuzzParsePlain(f *testing.F) {
	f.Add([]byte(plainHead("/ws?user=amy")))
	f.Add([]byte(plainHead("/ws?token=a.b.c&user=x", "Origin: http://h\r\n", "X-Forwarded-For: 1.2.3.4\r\n")))
	f.Add([]byte(plainHead("/ws", "X-A: a\nX-B: b\r\n")))
	f.Add([]byte("GET /ws HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\nconnection: upgrade\r\n" +
		"sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nsec-websocket-version: 13\r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		r, key, ok := parsePlain(head)
		if !ok {
			return
		}
		br := bufio.NewReader(bytes.NewReader(head))
		req, err := http.ReadRequest(br)
		if err != nil {
			t.Fatalf("taken as plain, net/http refuses it: %v", err)
		}
		if br.Buffered() != 0 || req.Method != "GET" || req.URL.Path != "/ws" || req.ProtoMinor != 1 ||
			req.Host != r.Host || req.Header.Get("Origin") != r.Origin ||
			req.URL.Query().Get("user") != r.Query("user") || req.URL.Query().Get("token") != r.Query("token") ||
			req.Header.Get("Sec-Websocket-Key") != key || !slices.Equal(req.Header.Values("X-Forwarded-For"), r.Forwarded) {
			t.Fatalf("read otherwise by net/http: %+v, key %q; net/http: %s %s host %q header %v",
				r, key, req.Method, req.URL, req.Host, req.Header)
		}
	})
}
