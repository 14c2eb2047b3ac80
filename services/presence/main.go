// Command presence runs natter's presence service against an external NATS
// (CHAT_NATS_URL).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter-chat/natter/services/presence/presence"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/ops"
)

// Config is the presence service's configuration.
type Config struct {
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8081" desc:"HTTP listen address of /healthz, /readyz and /metrics"`
	ID       string `envconfig:"PRESENCE_ID" default:"" desc:"the replica's name in logs and in the leader key; empty picks a random one"`
	config.NATS
	config.Log
	config.Profiling
	config.Presence
	config.Replication
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "presence:", err)
		os.Exit(1)
	}
}

// run is the whole program, so that a test can run it in-process. Its one
// subcommand, healthcheck, asks the service's own /readyz on CHAT_HTTP_ADDR.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg Config
	if err := config.Load(&cfg); err != nil {
		return err
	}
	log, done, err := ops.StartService(ctx, "presence", args, cfg.HTTPAddr, cfg.URL, cfg.Log, stdout, stderr)
	if done || err != nil {
		return err
	}
	nc, err := natsconn.Connect(cfg.URL, "presence", cfg.DrainTimeout, log, natsconn.Auth(cfg.NATS)...)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc)
	reg := ops.NewRegistry()
	p, err := presence.New(presence.Config{ID: cfg.ID, MaxMembers: cfg.MaxMembers, Replicas: cfg.Replicas}, nc, log, reg)
	if err != nil {
		return err
	}
	return ops.RunService(ctx, cfg.HTTPAddr, cfg.PProfAddr, p.Ready, reg, log, p.Run)
}
