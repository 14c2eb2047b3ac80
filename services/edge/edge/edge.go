package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/proto"
	"github.com/natter-chat/natter/shared/subject"
)

// whoTimeout bounds a who request to presence. A presence that is down
// answers at once (no responders); this is for one that is overloaded.
const whoTimeout = 2 * time.Second

// whoShareFor is how long the users of a room, asked for a joined answer,
// serve the joins that follow (a presence event for the room ends it
// sooner): when thousands rejoin a big room at once, presence answers a
// few requests instead of thousands of lists of thousands.
const whoShareFor = 250 * time.Millisecond

// Config is what an edge needs.
type Config struct {
	// ID names the edge on NATS; empty picks a random one.
	ID     string
	Limits config.Limits
	Web    config.Web
	// DispatchBuffer is the capacity of the channel every room
	// subscription delivers into (0: 65,536). When it is full, NATS drops
	// the room's messages for this edge and the hub fills the gap from
	// the stream; tests make it small to force that.
	DispatchBuffer int
	// HandshakeTimeout bounds the time a connection may take to send its
	// request (0: 10 s); tests make it short.
	HandshakeTimeout time.Duration
}

// Edge serves the page and the WebSocket endpoint; see the package
// documentation.
type Edge struct {
	cfg      Config
	id       string
	nc       *nats.Conn
	js       jetstream.JetStream // reads of the stream; nil without nc (unit tests)
	log      *slog.Logger
	reg      *prometheus.Registry
	web      fs.FS
	hub      *hub
	reporter *reporter
	metrics  *metrics

	// ctx ends when the edge starts closing its clients, so that posts
	// and store reads in flight give up at once.
	ctx    context.Context
	cancel context.CancelFunc

	// whoFlight and whoShared share who answers between joins (joinedUsers).
	whoFlight singleflight.Group
	whoMu     sync.Mutex
	whoShared map[string]sharedWho // guarded by whoMu

	// wire is the WebSocket connections' server: it asks admit about
	// each request, and each client admitted is its connection's handler.
	wire *ws.Server

	mu      sync.Mutex
	perAddr map[string]int // guarded by mu: open WebSockets per client address, with MaxConnsPerIP
	proxies []netip.Prefix // trusted proxies (CHAT_TRUSTED_PROXIES)
	open    atomic.Int64   // open sessions, for heartbeats
}

// New returns an edge on nc serving the page from web; its metrics go to
// reg, which /metrics serves.
func New(cfg Config, nc *nats.Conn, web fs.FS, log *slog.Logger, reg *prometheus.Registry) (*Edge, error) {
	lim := cfg.Limits
	if lim.SendQueue <= 0 || lim.MaxRooms <= 0 || lim.MaxFrameBytes <= 0 || lim.MaxTextChars <= 0 {
		return nil, errors.New("edge: limits must be positive")
	}
	if lim.PingInterval <= 0 || lim.PongTimeout <= lim.PingInterval {
		return nil, errors.New("edge: the pong timeout must be longer than the ping interval")
	}
	if lim.WriteTimeout <= 0 || lim.PostTimeout <= 0 {
		return nil, errors.New("edge: timeouts must be positive")
	}
	if cfg.Web.MaxConnsPerIP < 0 || lim.MessageRate < 0 || lim.TypingEvery < 0 {
		return nil, errors.New("edge: CHAT_MAX_CONNS_PER_IP, CHAT_RATE_MESSAGES and CHAT_TYPING_EVERY must not be negative")
	}
	if lim.WriteDelay < 0 || lim.WriteDelay >= lim.WriteTimeout {
		return nil, errors.New("edge: CHAT_WRITE_DELAY must be at least 0 and below CHAT_WRITE_TIMEOUT")
	}
	if lim.MessageRate > 0 && lim.MessageBurst < 1 {
		return nil, errors.New("edge: CHAT_RATE_BURST must be at least 1 while CHAT_RATE_MESSAGES is set")
	}
	if s := cfg.Web.AuthSecret; s != "" {
		if err := auth.CheckSecret([]byte(s)); err != nil {
			return nil, fmt.Errorf("edge: CHAT_AUTH_SECRET: %w", err)
		}
	}
	proxies, err := parseProxies(cfg.Web.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("edge: CHAT_TRUSTED_PROXIES: %w", err)
	}
	id := cfg.ID
	if id == "" {
		id = "edge-" + randomID()
	}
	if !names.ValidUser(id) {
		return nil, fmt.Errorf("edge: id %q must be a valid NATS token of [A-Za-z0-9_-]", id)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	e := &Edge{
		cfg:       cfg,
		id:        id,
		nc:        nc,
		log:       log.With("edge", id),
		reg:       reg,
		web:       web,
		metrics:   m,
		perAddr:   make(map[string]int),
		proxies:   proxies,
		whoShared: make(map[string]sharedWho),
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.wire, err = ws.NewServer(ws.Config{
		FrameLimit:       int(lim.MaxFrameBytes),
		SendQueue:        lim.SendQueue,
		WriteTimeout:     lim.WriteTimeout,
		WriteDelay:       lim.WriteDelay,
		PingInterval:     lim.PingInterval,
		PongTimeout:      lim.PongTimeout,
		HandshakeTimeout: cfg.HandshakeTimeout,
		Admit:            e.admitSession,
		// Posts and store reads in flight give up once the clients are
		// being closed.
		BeforeClose: e.cancel,
		Metrics:     m.wire(),
		Log:         e.log,
	})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	if nc != nil {
		if e.js, err = jetstream.New(nc); err != nil {
			return nil, fmt.Errorf("edge: jetstream: %w", err)
		}
	}
	buf := cfg.DispatchBuffer
	if buf <= 0 {
		buf = dispatchBuffer
	}
	e.hub = newHub(nc, e.js, e.log, m, buf)
	e.hub.presenceChanged = e.forgetWho
	e.reporter = newReporter(nc, e.log, id, func() int { return int(e.open.Load()) }, m.reports)
	return e, nil
}

// ID is the edge's name on NATS.
func (e *Edge) ID() string { return e.id }

// Handler serves /, /ws, /healthz, /readyz and /metrics.
func (e *Edge) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(e.web))
	mux.Handle("GET /ws", e.wire)
	ops.Handle(mux, e.Ready, e.reg)
	return mux
}

// Ready reports whether the edge is connected to NATS.
func (e *Edge) Ready() bool { return e.nc.IsConnected() }

// Run serves HTTP on ln until ctx ends, then stops accepting, closes every
// client with 1001, reports their sessions as gone and drops its
// subscriptions. It returns after every goroutine it started has ended.
func (e *Edge) Run(ctx context.Context, ln net.Listener) error {
	dctx, stopDispatch := context.WithCancel(context.Background())
	dispatchDone := make(chan struct{})
	go func() {
		defer close(dispatchDone)
		e.hub.run(dctx)
	}()
	// The sync endpoint subscribes before the first heartbeat goes out:
	// presence may ask for a sync as soon as it hears one.
	svc := e.register()
	rctx, stopReporter := context.WithCancel(context.Background())
	go e.reporter.run(rctx)
	// The wire stops accepting, closes the clients and waits for them
	// before it returns, so their leaves go out before the reporter's
	// last report.
	err := e.wire.Run(ctx, ln, e.Handler())
	if svc != nil {
		_ = svc.Stop()
	}
	stopReporter()
	<-e.reporter.done
	e.hub.close()
	stopDispatch()
	<-dispatchDone
	return err
}

// register puts the edge on the NATS services framework, with presence's
// sync requests as its endpoint. Without it the edge still serves; it
// fails only on a closed connection, and presence then expires the edge,
// which is the truth.
func (e *Edge) register() micro.Service {
	if e.nc == nil {
		return nil // unit tests
	}
	svc, err := ops.AddService(e.nc, ops.Service{
		Name:        subject.ServiceEdge,
		Description: "natter edge: the chat's WebSockets, connected to NATS",
		Metadata:    map[string]string{"edge": e.id},
		Stats:       func() any { return e.Stats() },
	})
	if err == nil {
		if err = e.reporter.serveSync(svc); err != nil {
			_ = svc.Stop()
		}
	}
	if err != nil {
		e.log.Error("edge: not on the NATS services framework, and presence cannot sync it", "subject", subject.EdgeSync(e.id), "err", err)
		return nil
	}
	return svc
}

// Stats are an edge's own figures in its stats answer.
type Stats struct {
	Edge        string `json:"edge"`
	Connections int64  `json:"connections"` // open WebSockets
	Rooms       int    `json:"rooms"`       // rooms subscribed: those with local members
	Users       int    `json:"users"`       // users whose dms are subscribed: those with local sessions
	// SendQueue is how many live events wait to be written, over all
	// clients; SendQueueMax the most one client has waiting (a client
	// reaching the send-queue limit is cut off).
	SendQueue    int `json:"send_queue"`
	SendQueueMax int `json:"send_queue_max"`
}

// Stats returns the edge's figures now. It takes each connection's lock
// in turn, so it is for a stats request, not for a hot path.
func (e *Edge) Stats() Stats {
	st := Stats{Edge: e.id, Connections: e.open.Load()}
	e.hub.mu.Lock()
	st.Rooms, st.Users = len(e.hub.rooms), len(e.hub.users)
	e.hub.mu.Unlock()
	st.SendQueue, st.SendQueueMax = e.wire.Queued()
	return st
}

// admitSession is the wire's Admit: a client, the handler of the
// connection it is upgraded to, or the refusal of the request.
func (e *Edge) admitSession(r ws.Request) (ws.Handler, *ws.Refusal) {
	user, addr, no := e.admit(r)
	if no != nil {
		return nil, no
	}
	return newClient(e, user, addr), nil
}

// admit checks a WebSocket request in the contract's order: Origin (403),
// the per-address limit (429), then the token (401) or the user name
// (400). On success the address is counted (takeAddr) until the
// session is let go of (client.Closed).
func (e *Edge) admit(r ws.Request) (user, addr string, no *ws.Refusal) {
	if !e.originAllowed(r) {
		return "", "", e.refuse("origin", "", http.StatusForbidden, "origin not allowed")
	}
	addr = e.clientAddr(r)
	if !e.takeAddr(addr) {
		return "", "", e.refuse("address", addr, http.StatusTooManyRequests, "too many connections from this address")
	}
	if secret := e.cfg.Web.AuthSecret; secret != "" {
		u, err := auth.Check([]byte(secret), r.Query("token"))
		if err != nil {
			// Neither the token nor the error (which may quote a
			// piece of it) is logged: the reason is enough.
			e.releaseAddr(addr)
			return "", "", e.refuse("token", addr, http.StatusUnauthorized, "a valid token is needed: /ws?token=JWT (HS256, with sub and exp)")
		}
		return u, addr, nil
	}
	user = r.Query("user")
	if !names.ValidUser(user) {
		e.releaseAddr(addr)
		return "", "", e.refuse("user", addr, http.StatusBadRequest, "user must match ^[A-Za-z0-9_-]{1,32}$")
	}
	return user, addr, nil
}

// refuse counts a refused upgrade by reason and logs it at Debug: the
// reason and the client's address (empty before it is looked at), never
// what the request carried.
func (e *Edge) refuse(reason, addr string, status int, text string) *ws.Refusal {
	e.metrics.refused.WithLabelValues(reason).Inc()
	if e.log.Enabled(context.Background(), slog.LevelDebug) {
		e.log.LogAttrs(context.Background(), slog.LevelDebug, "websocket refused",
			slog.String("reason", reason), slog.Int("status", status), slog.String("addr", logAddr(addr)))
	}
	return &ws.Refusal{Status: status, Text: text}
}

// The lines of a connection's life, one when it opens and one when it is
// let go of, at Info: on a connect burst there are thousands a second, so
// their attributes are built without formatting. Neither holds anything
// the client wrote but its user name (the token's sub, with a secret).

// logOpened logs that c is open.
func (e *Edge) logOpened(c *client) {
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "websocket open",
		slog.String("user", c.user), slog.String("session", c.session), slog.String("addr", logAddr(c.addr)))
}

// logClosed logs that c is over: the close code it ended with (RFC 6455:
// the one sent, or the client's own echoed; 1005 for a close frame
// without one, 1006 when none was sent), why, and how long it was open.
func (e *Edge) logClosed(c *client, code int, reason string) {
	e.log.LogAttrs(context.Background(), slog.LevelInfo, "websocket closed",
		slog.String("user", c.user), slog.String("session", c.session), slog.String("addr", logAddr(c.addr)),
		slog.Int("code", code), slog.String("reason", reason),
		slog.Duration("duration", time.Since(c.opened).Round(time.Millisecond)))
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
func (e *Edge) clientAddr(r ws.Request) string {
	host, _, err := net.SplitHostPort(r.Remote)
	if err != nil {
		host = r.Remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if !e.trusted(ip) {
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
		if !e.trusted(ip) {
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

func (e *Edge) trusted(ip netip.Addr) bool {
	for _, p := range e.proxies {
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

// takeAddr counts a new connection from addr, and refuses it when addr
// has MaxConnsPerIP open already.
func (e *Edge) takeAddr(addr string) bool {
	max := e.cfg.Web.MaxConnsPerIP
	if max <= 0 {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perAddr[addr] >= max {
		return false
	}
	e.perAddr[addr]++
	return true
}

func (e *Edge) releaseAddr(addr string) {
	if e.cfg.Web.MaxConnsPerIP <= 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.perAddr[addr] <= 1 {
		delete(e.perAddr, addr)
	} else {
		e.perAddr[addr]--
	}
}

// who asks presence for the users present in room. It fails at once when
// NATS or presence is away.
func (e *Edge) who(room string) ([]string, error) {
	if !e.nc.IsConnected() {
		return nil, nats.ErrConnectionClosed
	}
	ctx, cancel := context.WithTimeout(e.ctx, whoTimeout)
	defer cancel()
	msg, err := e.nc.RequestWithContext(ctx, subject.PresenceWho(room), nil)
	if err != nil {
		// Presence is away: the answers shared between joins are not
		// handed out any more either.
		e.whoMu.Lock()
		clear(e.whoShared)
		e.whoMu.Unlock()
		return nil, fmt.Errorf("who %s: %w", room, err)
	}
	var reply proto.WhoReply
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return nil, fmt.Errorf("who %s: bad reply: %w", room, err)
	}
	if reply.Users == nil {
		reply.Users = []string{}
	}
	return reply.Users, nil
}

// sharedWho is a who answer shared between joins.
type sharedWho struct {
	users []string
	at    time.Time
}

// joinedUsers is the users list of a joined answer for user: a who answer
// shared with the other joins of the room for whoShareFor, with user
// added (its own report may be newer than the answer).
func (e *Edge) joinedUsers(room, user string) ([]string, error) {
	e.whoMu.Lock()
	s, ok := e.whoShared[room]
	e.whoMu.Unlock()
	if !ok || time.Since(s.at) >= whoShareFor {
		v, err, _ := e.whoFlight.Do(room, func() (any, error) {
			users, err := e.who(room)
			if err != nil {
				return nil, err
			}
			e.whoMu.Lock()
			if len(e.whoShared) > 4096 {
				for r, old := range e.whoShared {
					if time.Since(old.at) >= whoShareFor {
						delete(e.whoShared, r)
					}
				}
			}
			e.whoShared[room] = sharedWho{users: users, at: time.Now()}
			e.whoMu.Unlock()
			return users, nil
		})
		if err != nil {
			return nil, err
		}
		s.users = v.([]string)
	}
	i, found := slices.BinarySearch(s.users, user)
	if found {
		return s.users, nil
	}
	return slices.Insert(slices.Clone(s.users), i, user), nil
}

// forgetWho drops room's shared who answer: its presence has changed.
func (e *Edge) forgetWho(room string) {
	e.whoMu.Lock()
	delete(e.whoShared, room)
	e.whoMu.Unlock()
}

// originAllowed applies the Origin rule of docs/protocol.md: no Origin (not a browser),
// the request's own host, or an entry of the allowed list.
func (e *Edge) originAllowed(r ws.Request) bool {
	origin := r.Origin
	if origin == "" {
		return true
	}
	if slices.Contains(e.cfg.Web.AllowedOrigins, origin) {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.RawQuery != "" {
		return false
	}
	return strings.EqualFold(u.Host, r.Host)
}

// Subscriptions is the number of room subscriptions the edge holds.
func (e *Edge) Subscriptions() int { return e.hub.subscriptions() }

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
