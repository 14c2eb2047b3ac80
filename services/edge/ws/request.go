package ws

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
)

// Request is what admitting a WebSocket request looks at. It comes from
// the wire's own parse of a plain request (parsePlain) or from net/http's
// (requestOf), so both are admitted alike.
type Request struct {
	Host      string   // the Host header
	Origin    string   // the Origin header, empty when there is none
	Forwarded []string // the X-Forwarded-For headers, in order
	Remote    string   // the peer's host:port

	rawQuery string     // the query of a plain request, as sent
	query    url.Values // net/http's parse of the query, when it read the request
}

// Query returns the first value of the query parameter key, as net/http's
// URL.Query().Get finds it; "" when there is none.
func (r Request) Query(key string) string {
	if r.query != nil {
		return r.query.Get(key)
	}
	return queryValue(r.rawQuery, key)
}

// RequestOf is the Request of a plain HTTP request, for the requests an
// edge admits as it admits WebSockets (file uploads).
func RequestOf(r *http.Request) Request { return requestOf(r) }

// requestOf is the Request of a request read by net/http.
func requestOf(r *http.Request) Request {
	return Request{
		Host:      r.Host,
		Origin:    r.Header.Get("Origin"),
		Forwarded: r.Header.Values("X-Forwarded-For"),
		Remote:    r.RemoteAddr,
		query:     r.URL.Query(),
	}
}

// maxParams is the most parameters a plain request's query may have: a
// longer query goes to net/http, whose url.ParseQuery has limits of its
// own (GODEBUG urlmaxqueryparams) that queryValue does not copy.
const maxParams = 16

// queryValue is the first value of key in the raw query q, as
// url.ParseQuery and url.Values.Get find it in a query of at most
// maxParams parameters: pairs that do not unescape, or that hold a
// semicolon, are skipped.
func queryValue(q, key string) string {
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "" || strings.Contains(pair, ";") {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if k, err := url.QueryUnescape(k); err != nil || k != key {
			continue
		}
		if v, err := url.QueryUnescape(v); err == nil {
			return v
		}
	}
	return ""
}

// parsePlain parses a request head (up to and including its blank line)
// when it is a plain WebSocket request for /ws: the request line exactly
// "GET /ws[?query] HTTP/1.1", each header a "Name: value" line of visible
// characters, one Host, at most one Origin, key and version, a key of 16
// bytes, version 13, Connection naming upgrade and Upgrade websocket in
// lists of tokens, at most maxParams query parameters, no body and no
// Expect (net/http answers 417 to all but 100-continue). It
// reports the request and its key. Anything else is left to net/http (ok
// false), which answers it as it answers every request: this is a strict
// subset of what net/http and gorilla's Upgrader accept, read without
// net/http's allocations (bench/, F).
func parsePlain(head []byte) (r Request, key string, ok bool) {
	// The head ends at its first blank line, and nothing follows it.
	if i := bytes.Index(head, headEnd); i < 0 || i != len(head)-len(headEnd) {
		return r, "", false
	}
	rest := head[:len(head)-len(headEnd)]
	line, rest, _ := bytes.Cut(rest, crlf)
	target, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return r, "", false
	}
	if target, ok = bytes.CutSuffix(target, []byte(" HTTP/1.1")); !ok || !visible(target) ||
		bytes.IndexByte(target, '#') >= 0 {
		return r, "", false
	}
	path, query, _ := bytes.Cut(target, []byte("?"))
	if string(path) != "/ws" {
		return r, "", false
	}
	var hosts, origins, keys, versions int
	var upgrade, connection bool
	var version string
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, crlf)
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found || !isToken(name) {
			return r, "", false // a bare CR or LF, a folded line, no name
		}
		value = bytes.Trim(value, " \t")
		if !headerValue(value) {
			return r, "", false
		}
		switch {
		case equalFold(name, "Host"):
			hosts++
			r.Host = string(value)
		case equalFold(name, "Origin"):
			origins++
			r.Origin = string(value)
		case equalFold(name, "X-Forwarded-For"):
			r.Forwarded = append(r.Forwarded, string(value))
		case equalFold(name, "Connection"):
			has, wellFormed := hasListToken(value, "upgrade")
			if !wellFormed {
				return r, "", false // gorilla refuses a list it cannot read
			}
			connection = connection || has
		case equalFold(name, "Upgrade"):
			has, wellFormed := hasListToken(value, "websocket")
			if !wellFormed {
				return r, "", false
			}
			upgrade = upgrade || has
		case equalFold(name, "Sec-WebSocket-Key"):
			keys++
			key = string(value)
		case equalFold(name, "Sec-WebSocket-Version"):
			versions++
			version = string(value)
		case equalFold(name, "Content-Length"), equalFold(name, "Transfer-Encoding"), equalFold(name, "Expect"):
			return r, "", false
		}
	}
	if hosts != 1 || !validHost(r.Host) || origins > 1 || keys != 1 || versions != 1 ||
		version != "13" || !upgrade || !connection {
		return r, "", false
	}
	if len(key) != 24 {
		return r, "", false
	}
	var k [18]byte
	if n, err := base64.StdEncoding.Decode(k[:], []byte(key)); err != nil || n != 16 {
		return r, "", false
	}
	if bytes.Count(query, []byte("&")) >= maxParams {
		return r, "", false
	}
	r.rawQuery = string(query)
	return r, key, true
}

var (
	crlf    = []byte("\r\n")
	headEnd = []byte("\r\n\r\n")
)

// visible reports whether b is only visible ASCII: no space, no control.
func visible(b []byte) bool {
	for _, c := range b {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// isToken reports whether b is a header name (RFC 9110's token).
func isToken(b []byte) bool {
	return len(b) > 0 && alnumOr(b, "!#$%&'*+-.^_`|~")
}

// headerValue reports whether b may be a header's value here: tabs and
// visible ASCII, spaces between. Other bytes go to net/http.
func headerValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c >= 0x7f {
			return false
		}
	}
	return true
}

// validHost reports whether h is a host[:port] made of the characters a
// host may have (RFC 3986's reg-name, IP literals and a port).
func validHost(h string) bool {
	return h != "" && alnumOr(h, "-._~!$&'()*+,;=:[]%")
}

// alnumOr reports whether each byte of s is an ASCII letter, a digit or
// one of extra.
func alnumOr[T string | []byte](s T, extra string) bool {
	for i := range len(s) {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(extra, c) >= 0) {
			return false
		}
	}
	return true
}

// equalFold reports whether the header name b is name, in any case.
func equalFold(b []byte, name string) bool {
	return len(b) == len(name) && strings.EqualFold(string(b), name)
}

// hasListToken reports whether the comma-separated list of tokens v holds
// token, in any case, and whether v is such a list up to where token was
// found, as gorilla/websocket reads it (an empty or malformed element
// before token: not well formed).
func hasListToken(v []byte, token string) (has, wellFormed bool) {
	for t := range bytes.SplitSeq(v, []byte(",")) {
		t = bytes.Trim(t, " \t")
		if !isToken(t) {
			return false, false
		}
		if equalFold(t, token) {
			return true, true
		}
	}
	return false, true
}
