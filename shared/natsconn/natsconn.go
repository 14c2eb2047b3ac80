// Package natsconn opens the NATS connections of natter's services: they
// reconnect forever, log every state change and drain within a bound that
// fits the 10-second shutdown promise.
package natsconn

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/subject"
)

// A server that stops answering (killed without closing its sockets, or
// cut off from the network) is found after at most pingInterval times
// (maxPingsOut+1), instead of the minutes of nats.go's defaults, so the
// connection moves to another server of the cluster within the seconds
// that the mesh promises to be serving again. A ping every two seconds
// per connection costs nothing worth counting.
const (
	pingInterval = 2 * time.Second
	maxPingsOut  = 2
)

// Connect opens a connection named name to url (comma-separated URLs are
// allowed). It returns at once even when no server answers yet: the
// connection keeps trying in the background, so a service can start before
// NATS. Its replies come on subject.Inbox(name), so that the server's
// permissions can keep each service to its own. Extra options come last
// and win.
func Connect(url, name string, drainTimeout time.Duration, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	log = log.With("nats", name)
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(subject.Inbox(name)),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.DrainTimeout(drainTimeout),
		nats.PingInterval(pingInterval),
		nats.MaxPingsOutstanding(maxPingsOut),
		// SubscribeSync is used only by the batch reads of JetStream
		// (jetstreamext: a replay, a history page, the dm conversations,
		// at most 1,025 messages each), and each one makes a channel of
		// this many slots: nats.go's default of 65,536 allocated 512 KiB
		// per read, which cost a rejoining crowd a fifth of the edge's
		// CPU in the garbage collector (bench/, E).
		nats.SyncQueueLen(2048),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info("nats connected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				log.Info("nats connection closed")
				return
			}
			log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("nats reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats async error", "subject", sub.Subject, "err", err)
				return
			}
			log.Warn("nats async error", "err", err)
		}),
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, connectError(url, err)
	}
	return nc, nil
}

// connectError is the error of a failed Connect to urls: the URLs, and
// err, with the credentials any of them carries (user:password@, or a
// token@) replaced, since a URL that does not parse is quoted whole.
func connectError(urls string, err error) error {
	shown, msg := urls, err.Error()
	for u := range strings.SplitSeq(urls, ",") {
		_, rest, ok := strings.Cut(u, "://")
		if !ok {
			rest = u
		}
		// The last @ of the URL, not of its authority: a password may
		// hold a / (base64 does), and a NATS URL has no path.
		i := strings.LastIndex(rest, "@")
		if i <= 0 {
			continue
		}
		info := rest[:i+1]
		shown = strings.ReplaceAll(shown, info, "REDACTED@")
		msg = strings.ReplaceAll(msg, info, "REDACTED@")
	}
	if shown == urls {
		return fmt.Errorf("nats connect %s: %w", urls, err)
	}
	return fmt.Errorf("nats connect %s: %s", shown, msg)
}

// Auth returns the options that present cfg's credentials: a credentials
// file, or a user and password; none when neither is set.
func Auth(cfg config.NATS) []nats.Option {
	switch {
	case cfg.Creds != "":
		return []nats.Option{nats.UserCredentials(cfg.Creds)}
	case cfg.User != "":
		return []nats.Option{nats.UserInfo(cfg.User, cfg.Password)}
	}
	return nil
}

// Drain drains nc and waits until it is closed, at most its drain timeout
// plus a second. It is safe on a connection that is already closed.
func Drain(nc *nats.Conn) { DrainWithin(nc, nc.Opts.DrainTimeout+time.Second) }

// DrainWithin drains nc and waits until it is closed, at most limit; then
// it closes nc, dropping what was not flushed.
func DrainWithin(nc *nats.Conn, limit time.Duration) {
	if nc.IsClosed() {
		return
	}
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := nc.Drain(); err != nil {
		nc.Close()
		return
	}
	select {
	case <-closed:
	case <-time.After(limit):
		nc.Close()
	}
}
