// Package presence will turn session joins and leaves into per-user room
// presence (issue 3). Until then it is a service that connects and stops
// like the others, and edges run as if presence were unavailable: joined
// leaves users out and who answers unavailable.
package presence

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
)

// Presence is the presence service.
type Presence struct {
	nc  *nats.Conn
	log *slog.Logger
}

// New returns a presence service on nc.
func New(nc *nats.Conn, log *slog.Logger) *Presence {
	return &Presence{nc: nc, log: log}
}

// Ready reports whether presence is connected to NATS.
func (p *Presence) Ready() bool { return p.nc.IsConnected() }

// Run serves until ctx ends. It starts no goroutine yet.
func (p *Presence) Run(ctx context.Context) error {
	p.log.Info("presence running (who/join/leave tracking is not implemented yet)")
	<-ctx.Done()
	return nil
}
