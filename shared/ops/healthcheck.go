package ops

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/natter-chat/natter/shared/config"
)

// healthcheckTimeout bounds one check, connect and answer together:
// docs/operations.md promises an exit within 3 s, and the process needs
// some of that to start and exit.
const healthcheckTimeout = 2500 * time.Millisecond

// Healthcheck asks the /readyz of the service that listens on addr (its
// CHAT_HTTP_ADDR) and returns nil when it answers 200, after writing one
// line saying so to out. Any other answer, none within 2.5 s, or an addr
// that cannot be asked is an error, whose text is the line to show.
// A wildcard host (empty, 0.0.0.0, ::) is asked on 127.0.0.1: the check
// runs beside the service, in its container.
func Healthcheck(ctx context.Context, addr string, out io.Writer) error {
	u, err := readyzURL(addr)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", addr, err)
	}
	// A proxy from the environment must not stand between the check and
	// its own process.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport: tr,
		Timeout:   healthcheckTimeout,
		// A redirect is not a 200: it is reported, not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 200)) // the reason, if the body gives one
	if resp.StatusCode != http.StatusOK {
		reason := ""
		if b := bytes.TrimSpace(body); len(b) > 0 {
			reason = fmt.Sprintf(" (%q)", b)
		}
		return fmt.Errorf("not ready: GET %s: %s%s", u, resp.Status, reason)
	}
	_, err = fmt.Fprintf(out, "ready: GET %s: %s\n", u, resp.Status)
	return err
}

// readyzURL is the URL of /readyz on addr, a listen address: a wildcard
// host becomes 127.0.0.1. Port 0 is refused, since the port it stands
// for is chosen only when the service starts.
func readyzURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("healthcheck: CHAT_HTTP_ADDR %q: %w", addr, err)
	}
	n, err := net.LookupPort("tcp", port)
	if err != nil {
		return "", fmt.Errorf("healthcheck: CHAT_HTTP_ADDR %q: %w", addr, err)
	}
	if n == 0 {
		return "", fmt.Errorf("healthcheck: CHAT_HTTP_ADDR %q: port 0 is picked when the service starts; give the port it listens on", addr)
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "127.0.0.1"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(n)), Path: "/readyz"}
	return u.String(), nil
}

// StartService is what each separate service's run does before it
// connects: it answers the one subcommand, healthcheck (done, with err
// its result), refuses other arguments, builds the service's logger
// (CHAT_LOG_FORMAT, CHAT_LOG_LEVEL) and requires CHAT_NATS_URL.
func StartService(ctx context.Context, service string, args []string, httpAddr, natsURL string, lc config.Log,
	stdout, stderr io.Writer) (log *slog.Logger, done bool, err error) {
	switch {
	case len(args) == 0:
	case args[0] != "healthcheck":
		return nil, false, fmt.Errorf("unexpected arguments %q: %s takes its configuration from CHAT_* variables (see docs/operations.md); the one subcommand is healthcheck", args, service)
	case len(args) > 1:
		return nil, false, fmt.Errorf("healthcheck: unexpected arguments %q", args[1:])
	default:
		return nil, true, Healthcheck(ctx, httpAddr, stdout)
	}
	if log, err = NewLogger(stderr, lc); err != nil {
		return nil, false, err
	}
	if natsURL == "" {
		return nil, false, fmt.Errorf("CHAT_NATS_URL is required")
	}
	return log.With("service", service), false, nil
}
