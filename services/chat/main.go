// Command chat is natter in one process: an embedded NATS server with
// JetStream, then the edge, presence and broadcaster services over the same
// NATS API they use as separate processes, and one HTTP listener (the
// edge's, with the page).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/natter-chat/natter/shared/auth"
	"github.com/natter-chat/natter/shared/config"
	"github.com/natter-chat/natter/shared/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "chat:", err)
		os.Exit(1)
	}
}

// run is the whole program, so that a test can run it in-process.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 0:
	case args[0] == "token":
		return tokenCommand(args[1:], os.Getenv(config.Prefix+"_AUTH_SECRET"), time.Now(), stdout, stderr)
	case args[0] == "healthcheck":
		return healthcheckCommand(ctx, args[1:], stdout)
	default:
		return fmt.Errorf("unexpected arguments %q: chat takes its configuration from CHAT_* variables (see docs/operations.md); its subcommands are token and healthcheck", args)
	}
	var cfg Config
	if err := loadConfig(&cfg); err != nil {
		return err
	}
	m, err := Open(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	return m.Run(ctx)
}

// tokenCommand prints a token for a user, signed with CHAT_AUTH_SECRET:
//
//	CHAT_AUTH_SECRET=… go run ./services/chat token -user alice -ttl 24h
func tokenCommand(args []string, secret string, now time.Time, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "the user the token is for (its sub)")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token: unexpected arguments %q", fs.Args())
	}
	if secret == "" {
		return fmt.Errorf("token: CHAT_AUTH_SECRET is not set: the token must be signed with the edges' secret")
	}
	tok, err := auth.Sign([]byte(secret), *user, *ttl, now)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	_, err = fmt.Fprintln(stdout, tok)
	return err
}

// healthcheckCommand asks the single binary's own /readyz on
// CHAT_HTTP_ADDR, for a container's health check:
//
//	chat healthcheck
func healthcheckCommand(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("healthcheck: unexpected arguments %q", args)
	}
	var cfg Config
	if err := loadConfig(&cfg); err != nil {
		return err
	}
	return ops.Healthcheck(ctx, cfg.HTTPAddr, stdout)
}
