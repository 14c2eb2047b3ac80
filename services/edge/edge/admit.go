package edge

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/names"
)

// gate admits WebSocket requests (admit), and counts the open connections
// of each client address until their sessions give them back.
type gate struct {
	web     config.Web     // origins, the auth secret, the per-address limit
	proxies []netip.Prefix // trusted proxies (CHAT_TRUSTED_PROXIES)
	log     *slog.Logger
	refused *prometheus.CounterVec // by reason

	mu      sync.Mutex
	perAddr map[string]int // guarded by mu: open WebSockets per client address, with MaxConnsPerIP
}

func newGate(web config.Web, log *slog.Logger, refused *prometheus.CounterVec) (*gate, error) {
	proxies, err := parseProxies(web.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("CHAT_TRUSTED_PROXIES: %w", err)
	}
	return &gate{web: web, proxies: proxies, log: log, refused: refused, perAddr: make(map[string]int)}, nil
}

// admit checks a WebSocket request (or a file upload, which is admitted
// alike) in the contract's order: Origin (403), the per-address limit
// (429), then the token (401) or the user name (400); token is the one
// the request carried (?token= for a WebSocket, Authorization: Bearer
// for an upload). On success the address is counted (take) until the
// session, or the upload, is let go of (client.Closed, release).
func (g *gate) admit(r ws.Request, token string) (user, addr string, no *ws.Refusal) {
	if !g.originAllowed(r) {
		return "", "", g.refuse("origin", "", http.StatusForbidden, "origin not allowed")
	}
	addr = g.clientAddr(r)
	if !g.take(addr) {
		return "", "", g.refuse("address", addr, http.StatusTooManyRequests, "too many connections from this address")
	}
	if secret := g.web.AuthSecret; secret != "" {
		u, err := auth.Check([]byte(secret), token)
		if err != nil {
			// Neither the token nor the error (which may quote a
			// piece of it) is logged: the reason is enough.
			g.release(addr)
			return "", "", g.refuse("token", addr, http.StatusUnauthorized, "a valid token is needed: /ws?token=JWT, or Authorization: Bearer JWT for /files (HS256, with sub and exp)")
		}
		return u, addr, nil
	}
	user = r.Query("user")
	if !names.ValidUser(user) {
		g.release(addr)
		return "", "", g.refuse("user", addr, http.StatusBadRequest, "user must match ^[A-Za-z0-9_-]{1,32}$")
	}
	return user, addr, nil
}

// refuse counts a refused upgrade by reason and logs it at Debug: the
// reason and the client's address (empty before it is looked at), never
// what the request carried.
func (g *gate) refuse(reason, addr string, status int, text string) *ws.Refusal {
	g.refused.WithLabelValues(reason).Inc()
	if g.log.Enabled(context.Background(), slog.LevelDebug) {
		g.log.LogAttrs(context.Background(), slog.LevelDebug, "websocket refused",
			slog.String("reason", reason), slog.Int("status", status), slog.String("addr", logAddr(addr)))
	}
	return &ws.Refusal{Status: status, Text: text}
}

// originAllowed applies the Origin rule of docs/protocol.md: no Origin (not a browser),
// the request's own host, or an entry of the allowed list.
func (g *gate) originAllowed(r ws.Request) bool {
	origin := r.Origin
	if origin == "" {
		return true
	}
	if slices.Contains(g.web.AllowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.RawQuery != "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// logAddr is a client address for the logs: an address behind a trusted
// proxy that is not one (clientAddr) is the client's own text, and is
// left out.
func logAddr(addr string) string {
	if strings.HasPrefix(addr, forwardedPrefix) {
		return forwardedPrefix + "(not an address)"
	}
	return addr
}

// clientAddr is the address a connection counts against: the peer's IP,
// or, when the peer is a trusted proxy, the nearest address in
// X-Forwarded-For that is not one (the header's entries to its right
// were added by trusted proxies; those to its left could be forged).
func (g *gate) clientAddr(r ws.Request) string {
	host, _, err := net.SplitHostPort(r.Remote)
	if err != nil {
		host = r.Remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if !g.trusted(ip) {
		return bucket(ip)
	}
	var hops []string
	for _, h := range r.Forwarded {
		hops = append(hops, strings.Split(h, ",")...)
	}
	for i := len(hops) - 1; i >= 0; i-- {
		hop, err := parseHop(hops[i])
		if err != nil {
			// Not an address: counted as it is written, not as the
			// proxy (which would put everyone behind it together).
			return forwardedPrefix + strings.TrimSpace(hops[i])
		}
		ip = hop
		if !g.trusted(ip) {
			break
		}
	}
	return bucket(ip)
}

// forwardedPrefix marks an address taken as it is written in
// X-Forwarded-For (clientAddr).
const forwardedPrefix = "forwarded:"

// parseHop reads an X-Forwarded-For entry: an address, perhaps with a
// port ("192.0.2.1:4711", "[2001:db8::1]:4711").
func parseHop(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
	return a.Unmap(), err
}

// bucket is what an address counts against: an IPv4 address itself, an
// IPv6 address's /64 (one subscriber's usual allocation, which a client
// can otherwise spread itself across).
func bucket(ip netip.Addr) string {
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (g *gate) trusted(ip netip.Addr) bool {
	for _, p := range g.proxies {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// parseProxies reads CHAT_TRUSTED_PROXIES: addresses or CIDRs.
func parseProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an address nor a CIDR", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// take counts a new connection from addr, and refuses it when addr has
// MaxConnsPerIP open already.
func (g *gate) take(addr string) bool {
	max := g.web.MaxConnsPerIP
	if max <= 0 {
		return true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.perAddr[addr] >= max {
		return false
	}
	g.perAddr[addr]++
	return true
}

// release gives back a connection from addr that take counted.
func (g *gate) release(addr string) {
	if g.web.MaxConnsPerIP <= 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.perAddr[addr] <= 1 {
		delete(g.perAddr, addr)
	} else {
		g.perAddr[addr]--
	}
}
