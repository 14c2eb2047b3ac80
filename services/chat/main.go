// Command chat is natter in one process: an embedded NATS server with
// JetStream, then the edge, presence and broadcaster services over the same
// NATS API they use as separate processes, and one HTTP listener (the
// edge's, with the page).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
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
	if len(args) > 0 {
		return fmt.Errorf("unexpected arguments %q: chat takes its configuration from CHAT_* variables (see README)", args)
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
