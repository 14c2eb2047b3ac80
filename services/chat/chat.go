package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/natter-chat/natter/services/broadcaster/broadcaster"
	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/embedded"
	"github.com/natter-chat/natter/shared/files"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/store"
	"github.com/natter-chat/natter/web"
)

// presenceStartWait bounds how long the edge waits for presence to go
// live before it serves.
const presenceStartWait = 5 * time.Second

// Config is the single binary's configuration.
type Config struct {
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8080" desc:"HTTP listen address of the page, /ws and the operational endpoints"`
	EdgeID   string `envconfig:"EDGE_ID" default:"" desc:"the edge's name on NATS; empty picks a random one"`
	NATSLogs bool   `envconfig:"NATS_LOGS" default:"false" desc:"log the embedded NATS server's own messages (with service=nats, in CHAT_LOG_FORMAT, from CHAT_LOG_LEVEL)"`
	config.NATS
	config.Log
	config.Profiling
	config.Embedded
	config.Limits
	config.Web
	config.Retention
	config.Presence
	config.Replication
	config.Files
}

func loadConfig(cfg *Config) error { return config.Load(cfg) }

// Main is the running single binary: its NATS server (when embedded), one
// connection per service, and the services.
type Main struct {
	cfg   Config
	logs  *slog.Logger   // each service's lines carry its name: service(name)
	log   *slog.Logger   // the process's own lines: service=chat
	ns    *server.Server // nil when CHAT_NATS_URL names an external server
	conns []*nats.Conn
	// edgeNC is the edge's connection (in conns): its last reports are
	// flushed before presence stops.
	edgeNC *nats.Conn
	ln     net.Listener
	pprof  net.Listener // nil unless CHAT_PPROF_ADDR is set

	edge        *edge.Edge
	broadcaster *broadcaster.Broadcaster
	presence    *presence.Presence
}

// Open starts NATS (unless external), connects the services and opens the
// HTTP listener; it logs to logOut as CHAT_LOG_FORMAT and CHAT_LOG_LEVEL
// say, and refuses other values before anything starts. Run serves; on
// error Open leaves nothing running.
func Open(ctx context.Context, cfg Config, logOut io.Writer) (_ *Main, err error) {
	logs, err := ops.NewLogger(logOut, cfg.Log)
	if err != nil {
		return nil, err
	}
	m := &Main{cfg: cfg, logs: logs, log: logs.With("service", "chat")}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	if err := store.CheckReplicas(cfg.Replicas); err != nil {
		return nil, err
	}
	url := cfg.URL
	if url == "" {
		if cfg.Replicas > 1 {
			return nil, fmt.Errorf("CHAT_STREAM_REPLICAS=%d but the embedded NATS server is one server, which keeps one copy only: set CHAT_STREAM_REPLICAS=1, or CHAT_NATS_URL to a NATS cluster of at least %d servers", cfg.Replicas, cfg.Replicas)
		}
		if cfg.Creds != "" {
			return nil, errors.New("CHAT_NATS_CREDS is for an external NATS (CHAT_NATS_URL); the embedded server takes CHAT_NATS_USER and CHAT_NATS_PASSWORD")
		}
		opts := embedded.Options{Addr: cfg.NATSAddr, DataDir: cfg.DataDir, User: cfg.User, Password: cfg.Password}
		if cfg.NATSLogs {
			opts.Log = m.service("nats")
		}
		m.ns, err = embedded.Start(opts)
		if err != nil {
			return nil, err
		}
		ops.LogListening(m.log, "nats", embedded.Addr(m.ns), slog.String("data_dir", cfg.DataDir))
		url = m.ns.ClientURL()
	}
	connect := func(name string) (*nats.Conn, error) {
		nc, err := natsconn.Connect(url, name, cfg.DrainTimeout, m.service(name), natsconn.Auth(cfg.NATS)...)
		if err == nil {
			m.conns = append(m.conns, nc)
		}
		return nc, err
	}
	m.edgeNC, err = connect("edge")
	if err != nil {
		return nil, err
	}
	bNC, err := connect("broadcaster")
	if err != nil {
		return nil, err
	}
	pNC, err := connect("presence")
	if err != nil {
		return nil, err
	}

	// The streams must exist before the edge takes its first join, and
	// the file bucket before its first upload.
	js, err := jetstream.New(bNC)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = store.EnsureStream(sctx, js, cfg.Retention, cfg.Replicas)
	if err == nil {
		_, err = files.EnsureBucket(sctx, js, files.BucketConfig(cfg.Files, cfg.Retention, cfg.Replicas))
	}
	cancel()
	if err != nil {
		if refused := store.ReplicasRefused(err, cfg.Replicas, bNC); refused != nil {
			return nil, refused
		}
		return nil, err
	}

	reg := ops.NewRegistry()
	m.broadcaster, err = broadcaster.New(broadcaster.Config{Retention: cfg.Retention, MaxTextChars: cfg.MaxTextChars, Replicas: cfg.Replicas, Files: cfg.Files},
		bNC, m.service("broadcaster"), reg)
	if err != nil {
		return nil, err
	}
	m.edge, err = edge.New(edge.Config{ID: cfg.EdgeID, Limits: cfg.Limits, Web: cfg.Web, Files: cfg.Files},
		m.edgeNC, web.FS(), m.service("edge"), reg)
	if err != nil {
		return nil, err
	}
	m.presence, err = presence.New(presence.Config{MaxMembers: cfg.MaxMembers, Fresh: m.ns != nil, Replicas: cfg.Replicas}, pNC, m.service("presence"), reg)
	if err != nil {
		return nil, err
	}
	m.ln, err = ops.Listen(cfg.HTTPAddr, m.log)
	if err != nil {
		return nil, err
	}
	if m.pprof, err = ops.ListenPProf(cfg.PProfAddr, m.log); err != nil {
		return nil, err
	}
	return m, nil
}

// service is the logger of one part of the process: the edge, presence,
// the broadcaster, or the embedded NATS server.
func (m *Main) service(name string) *slog.Logger { return m.logs.With("service", name) }

// Addr is the HTTP listener's address.
func (m *Main) Addr() string { return m.ln.Addr().String() }

// NATSAddr is the embedded server's client address, empty when external.
func (m *Main) NATSAddr() string {
	if m.ns == nil {
		return ""
	}
	return embedded.Addr(m.ns)
}

// stopWithin bounds the whole of a stop, from the signal to the return
// of Run: the contract promises an exit within 10 s, and the process
// needs a moment after Run to exit.
const stopWithin = 9 * time.Second

// Run serves until ctx ends (or a part fails), then stops from the
// outside in, one step after the other, under one deadline (stopWithin):
//
//  1. the edge: it stops accepting, closes its WebSockets with 1001 and
//     reports their sessions gone, while everything behind it still
//     runs, so that the posts it has published are stored (it stops
//     waiting for their acks: a page sends an unacknowledged post again
//     with the same id, never stored twice) and the leaves are
//     announced; the pprof listener with it;
//  2. the broadcaster (it stores and answers what it took) and presence
//     (its last write), at once;
//  3. the NATS connections (drained) and the embedded server.
//
// Each step's waits take no more than the deadline leaves (ops.Budget),
// and each step's end is logged ("stopped", with the part's name).
func (m *Main) Run(ctx context.Context) error {
	f := &failure{ch: make(chan struct{})}
	broadcaster := m.start("broadcaster", m.broadcaster.Run, f)
	presence := m.start("presence", m.presence.Run, f)
	front := []*part{}
	if m.pprof != nil {
		front = append(front, m.start("pprof", func(ctx context.Context) error {
			return ops.ServePProf(ctx, m.pprof, m.log)
		}, f))
	}
	// Posts need a broadcaster: the edge serves once one takes them (the
	// listener is open already, so early clients wait in its backlog).
	// On the embedded server presence goes live within moments (nothing
	// to wait for on a fresh NATS server), so the first joins list their
	// users; but a presence that cannot start must not keep the chat down.
	select {
	case <-m.broadcaster.Serving():
		if m.ns != nil {
			select {
			case <-m.presence.Live():
			case <-time.After(presenceStartWait):
				m.log.Warn("presence not live yet; serving without it", "waited", presenceStartWait)
			case <-ctx.Done():
			case <-f.ch:
			}
		}
		if ctx.Err() == nil && !f.happened() {
			front = append(front, m.start("edge", func(ctx context.Context) error { return m.edge.Run(ctx, m.ln) }, f))
		}
	case <-ctx.Done():
	case <-f.ch:
	}
	select {
	case <-ctx.Done():
	case <-f.ch:
	}
	deadline := time.Now().Add(stopWithin)
	m.log.Info("shutting down", "within", stopWithin)
	m.stop(deadline, front...)
	// The edge's last reports, its sessions leaving, reach the server
	// before presence stops listening (it applies what reached it).
	if m.edgeNC.IsConnected() {
		_ = m.edgeNC.FlushTimeout(max(time.Until(deadline), time.Millisecond))
	}
	m.stop(deadline, broadcaster, presence)
	m.closeWithin(max(time.Until(deadline), 0))
	m.log.Info("stopped", "part", "nats")
	var errs []error
	for _, p := range append(front, broadcaster, presence) {
		errs = append(errs, p.result())
	}
	return errors.Join(errs...)
}

// part is one part of the process, running on a goroutine of its own
// until its context ends (stop) or it fails.
type part struct {
	name string
	stop context.CancelCauseFunc
	done chan struct{} // closed once run has returned; err is set then
	err  error
}

// failure is closed, once, when a part returns before it is stopped.
type failure struct {
	once sync.Once
	ch   chan struct{}
}

func (f *failure) happen() { f.once.Do(func() { close(f.ch) }) }

func (f *failure) happened() bool {
	select {
	case <-f.ch:
		return true
	default:
		return false
	}
}

// start runs run as the part name; f happens if it returns before it is
// stopped.
func (m *Main) start(name string, run func(context.Context) error, f *failure) *part {
	ctx, stop := context.WithCancelCause(context.Background())
	p := &part{name: name, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = run(ctx)
		if ctx.Err() == nil {
			if p.err == nil {
				p.err = fmt.Errorf("%s stopped by itself", name)
			}
			m.log.Error("a part failed; stopping", "part", name, "err", p.err)
			f.happen()
		}
	}()
	return p
}

// stop stops the parts at once, to be done by deadline, and waits for
// them: a part's waits shorten to fit (ops.Budget), so it returns by
// then. One that has not is left behind, with an error line, so that the
// process still ends in time: its exit ends it.
func (m *Main) stop(deadline time.Time, parts ...*part) {
	began := time.Now()
	for _, p := range parts {
		p.stop(ops.StopDeadline{At: deadline})
	}
	late := time.NewTimer(time.Until(deadline))
	defer late.Stop()
	for _, p := range parts {
		select {
		case <-p.done:
			m.log.Info("stopped", "part", p.name, "took", time.Since(began).Round(time.Millisecond))
		case <-late.C:
			late.Reset(0) // the parts after it are late too, unless done
			m.log.Error("not stopped in time; left behind", "part", p.name, "waited", time.Since(began).Round(time.Millisecond))
		}
	}
}

// result is the part's error once it has returned, or that it has not.
func (p *part) result() error {
	select {
	case <-p.done:
		return p.err
	default:
		return fmt.Errorf("%s did not stop within %v", p.name, stopWithin)
	}
}

// close drains every connection at once and stops the embedded server,
// for a Main that never ran.
func (m *Main) close() {
	m.closeWithin(m.cfg.DrainTimeout + time.Second)
}

// closeWithin drains every connection at once, for at most limit (what
// a connection has not flushed by then is dropped), and stops the
// embedded server.
func (m *Main) closeWithin(limit time.Duration) {
	var wg sync.WaitGroup
	for _, nc := range m.conns {
		wg.Go(func() { natsconn.DrainWithin(nc, limit) })
	}
	wg.Wait()
	m.conns = nil
	if m.ns != nil {
		embedded.Stop(m.ns)
		m.ns = nil
	}
	if m.ln != nil {
		_ = m.ln.Close()
	}
	if m.pprof != nil {
		_ = m.pprof.Close()
	}
}
