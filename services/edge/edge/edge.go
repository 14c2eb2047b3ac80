package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/names"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/subject"
)

// Config is what an edge needs.
type Config struct {
	// ID names the edge on NATS; empty picks a random one.
	ID     string
	Limits config.Limits
	Web    config.Web
	// Files limits uploads (zero: the defaults).
	Files config.Files
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

	whos whoShare // who answers shared between joins (who.go)

	// wire is the WebSocket connections' server: it asks the gate about
	// each request (admitSession), and each client admitted is its
	// connection's handler.
	wire  *ws.Server
	gate  *gate        // who may connect (admit.go)
	open  atomic.Int64 // open sessions, for heartbeats
	files fileBucket   // the file bucket, once looked up (files.go)
}

// New returns an edge on nc serving the page from web; its metrics go to
// reg, which /metrics serves.
func New(cfg Config, nc *nats.Conn, web fs.FS, log *slog.Logger, reg *prometheus.Registry) (*Edge, error) {
	if cfg.Files == (config.Files{}) {
		cfg.Files = config.Defaults[config.Files]()
	}
	if err := check(cfg); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
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
		cfg:     cfg,
		id:      id,
		nc:      nc,
		log:     log.With("edge", id),
		reg:     reg,
		web:     web,
		metrics: m,
		whos:    whoShare{shared: make(map[string]sharedWho)},
	}
	if e.gate, err = newGate(cfg.Web, e.log, m.refused); err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	if e.wire, err = e.newWire(); err != nil {
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

// newWire is the edge's WebSocket server, with the limits of its
// connections: each request it gets is admitted by admitSession.
func (e *Edge) newWire() (*ws.Server, error) {
	lim := e.cfg.Limits
	return ws.NewServer(ws.Config{
		FrameLimit:       int(lim.MaxFrameBytes),
		SendQueue:        lim.SendQueue,
		WriteTimeout:     lim.WriteTimeout,
		WriteDelay:       lim.WriteDelay,
		PingInterval:     lim.PingInterval,
		PongTimeout:      lim.PongTimeout,
		HandshakeTimeout: e.cfg.HandshakeTimeout,
		Admit:            e.admitSession,
		// Posts and store reads in flight give up once the clients are
		// being closed.
		BeforeClose: e.cancel,
		Metrics:     e.metrics.wire(),
		Log:         e.log,
	})
}

// check refuses limits the edge cannot work with, naming the setting.
func check(cfg Config) error {
	lim := cfg.Limits
	if lim.SendQueue <= 0 || lim.MaxRooms <= 0 || lim.MaxFrameBytes <= 0 || lim.MaxTextChars <= 0 {
		return errors.New("limits must be positive")
	}
	if lim.PingInterval <= 0 || lim.PongTimeout <= lim.PingInterval {
		return errors.New("the pong timeout must be longer than the ping interval")
	}
	if cfg.Files.FileMaxBytes <= 0 {
		return errors.New("CHAT_FILE_MAX_BYTES must be positive")
	}
	if lim.WriteTimeout <= 0 || lim.PostTimeout <= 0 {
		return errors.New("timeouts must be positive")
	}
	if cfg.Web.MaxConnsPerIP < 0 || lim.MessageRate < 0 || lim.TypingEvery < 0 {
		return errors.New("CHAT_MAX_CONNS_PER_IP, CHAT_RATE_MESSAGES and CHAT_TYPING_EVERY must not be negative")
	}
	if lim.WriteDelay < 0 || lim.WriteDelay >= lim.WriteTimeout {
		return errors.New("CHAT_WRITE_DELAY must be at least 0 and below CHAT_WRITE_TIMEOUT")
	}
	if lim.MessageRate > 0 && lim.MessageBurst < 1 {
		return errors.New("CHAT_RATE_BURST must be at least 1 while CHAT_RATE_MESSAGES is set")
	}
	if s := cfg.Web.AuthSecret; s != "" {
		if err := auth.CheckSecret([]byte(s)); err != nil {
			return fmt.Errorf("CHAT_AUTH_SECRET: %w", err)
		}
	}
	return nil
}

// ID is the edge's name on NATS.
func (e *Edge) ID() string { return e.id }

// Handler serves /, /ws, /files, /healthz, /readyz and /metrics.
func (e *Edge) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(e.web))
	mux.Handle("GET /ws", e.wire)
	mux.HandleFunc("GET /files", e.limits)
	mux.HandleFunc("POST /files", e.upload)
	mux.HandleFunc("GET /files/{id}", e.download)
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
	user, addr, no := e.gate.admit(r, r.Query("token"))
	if no != nil {
		return nil, no
	}
	return newClient(e, user, addr), nil
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

// Subscriptions is the number of room subscriptions the edge holds.
func (e *Edge) Subscriptions() int { return e.hub.subscriptions() }

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
