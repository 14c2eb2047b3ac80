// Command broadcaster runs one natter broadcaster against an external NATS
// (CHAT_NATS_URL); run as many as needed, they form one queue group.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/natter-chat/natter/services/broadcaster/broadcaster"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/ops"
)

// Config is the broadcaster's configuration.
type Config struct {
	HTTPAddr     string `envconfig:"HTTP_ADDR" default:":8082" desc:"HTTP listen address of /healthz, /readyz and /metrics"`
	MaxTextChars int    `envconfig:"MAX_TEXT_CHARS" default:"4000" desc:"longest message text in Unicode code points"`
	config.NATS
	config.Log
	config.Profiling
	config.Retention
	config.Replication
	config.Files
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "broadcaster:", err)
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
	log, done, err := ops.StartService(ctx, "broadcaster", args, cfg.HTTPAddr, cfg.URL, cfg.Log, stdout, stderr)
	if done || err != nil {
		return err
	}
	nc, err := natsconn.Connect(cfg.URL, "broadcaster", cfg.DrainTimeout, log, natsconn.Auth(cfg.NATS)...)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc)
	reg := ops.NewRegistry()
	b, err := broadcaster.New(broadcaster.Config{Retention: cfg.Retention, MaxTextChars: cfg.MaxTextChars, Replicas: cfg.Replicas, Files: cfg.Files}, nc, log, reg)
	if err != nil {
		return err
	}
	return ops.RunService(ctx, cfg.HTTPAddr, cfg.PProfAddr, b.Ready, reg, log, b.Run)
}
