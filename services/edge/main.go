// Command edge runs one natter edge (the page and the WebSocket endpoint)
// against an external NATS (CHAT_NATS_URL).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/natter-chat/natter/services/edge/edge"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/natsconn"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/web"
)

// Config is the edge's configuration.
type Config struct {
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8080" desc:"HTTP listen address of the page, /ws and the operational endpoints"`
	EdgeID   string `envconfig:"EDGE_ID" default:"" desc:"the edge's name on NATS; empty picks a random one"`
	config.NATS
	config.Log
	config.Profiling
	config.Limits
	config.Web
	config.Files
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "edge:", err)
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
	log, done, err := ops.StartService(ctx, "edge", args, cfg.HTTPAddr, cfg.URL, cfg.Log, stdout, stderr)
	if done || err != nil {
		return err
	}
	nc, err := natsconn.Connect(cfg.URL, "edge", cfg.DrainTimeout, log, natsconn.Auth(cfg.NATS)...)
	if err != nil {
		return err
	}
	defer natsconn.Drain(nc)
	e, err := edge.New(edge.Config{ID: cfg.EdgeID, Limits: cfg.Limits, Web: cfg.Web, Files: cfg.Files}, nc, web.FS(), log, ops.NewRegistry())
	if err != nil {
		return err
	}
	ln, err := ops.Listen(cfg.HTTPAddr, log)
	if err != nil {
		return err
	}
	// After the HTTP listener: the first listening line stays the edge's.
	pprof, err := ops.ListenPProf(cfg.PProfAddr, log)
	if err != nil {
		_ = ln.Close()
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return e.Run(gctx, ln) })
	g.Go(func() error { return ops.ServePProf(gctx, pprof, log) })
	return g.Wait()
}
