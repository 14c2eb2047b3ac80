// Package embedded runs the NATS server of the single binary: JetStream on,
// data in a folder, a client listener on loopback so that `nats sub
// 'chat.>'` can watch a laptop run.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options are what the single binary sets.
type Options struct {
	// Addr is host:port of the client listener; port 0 picks a free port
	// (nats-server reads 0 as 4222 and wants -1 for random).
	Addr string
	// DataDir is the JetStream store directory.
	DataDir string
	// Log, when not nil, takes the server's own logging (CHAT_NATS_LOGS):
	// its notices as Info, its debug lines when Log is enabled for Debug,
	// never its traces (they hold the messages).
	Log *slog.Logger
	// User and Password, when set, are required of every client. Without
	// them the server listens on loopback only.
	User, Password string
}

// Start starts a server and waits until it accepts clients.
func Start(o Options) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: %w", o.Addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats listen address %q: bad port", o.Addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if (o.User == "") != (o.Password == "") {
		return nil, fmt.Errorf("set both CHAT_NATS_USER and CHAT_NATS_PASSWORD, or neither: a user without a password (or the reverse) protects nothing")
	}
	if o.User == "" && !loopback(host) {
		return nil, fmt.Errorf("nats listen address %q is not loopback: set CHAT_NATS_USER and CHAT_NATS_PASSWORD, which the server then requires, or listen on 127.0.0.1", o.Addr)
	}
	opts := &server.Options{
		ServerName: "natter",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.DataDir,
		// The stream reserves its 10 GiB byte limit up front; without an
		// explicit ceiling the server sizes one from free disk and may
		// refuse the stream on a small disk.
		JetStreamMaxStore: 1 << 40,
		NoSigs:            true,
		NoLog:             o.Log == nil,
		MaxPayload:        1 << 20,
		// Each connecting user adds two wildcard subscriptions (its dms),
		// and with a subject cache every wildcard insert scans the cache:
		// a tenth of the edge's CPU while users connect (bench/, F).
		// Matching a publish without the cache walks a trie of a few
		// levels.
		NoSublistCache: true,
		Username:       o.User,
		Password:       o.Password,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server: %w", err)
	}
	if o.Log != nil {
		ns.SetLoggerV2(natsLog{o.Log}, o.Log.Enabled(context.Background(), slog.LevelDebug), false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("nats server on %s: not ready after 10s", o.Addr)
	}
	return ns, nil
}

// natsLog hands the server's log calls to slog, in the process's format
// and from its level. The server's Fatalf does not end the process here:
// the server returns its error, which Start reports.
type natsLog struct{ log *slog.Logger }

func (l natsLog) Noticef(format string, v ...any) { l.logf(slog.LevelInfo, format, v) }
func (l natsLog) Warnf(format string, v ...any)   { l.logf(slog.LevelWarn, format, v) }
func (l natsLog) Errorf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l natsLog) Fatalf(format string, v ...any)  { l.logf(slog.LevelError, format, v) }
func (l natsLog) Debugf(format string, v ...any)  { l.logf(slog.LevelDebug, format, v) }
func (l natsLog) Tracef(format string, v ...any)  {} // never turned on

func (l natsLog) logf(level slog.Level, format string, v []any) {
	ctx := context.Background()
	if l.log.Enabled(ctx, level) {
		l.log.Log(ctx, level, fmt.Sprintf(format, v...))
	}
}

// loopback reports whether host (a listen host) reaches this machine only.
// An empty host or 0.0.0.0 listens everywhere.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Addr returns the address the client listener is bound to.
func Addr(ns *server.Server) string {
	if a := ns.Addr(); a != nil {
		return a.String()
	}
	return ""
}

// Stop shuts ns down and waits for it.
func Stop(ns *server.Server) {
	ns.Shutdown()
	ns.WaitForShutdown()
}
