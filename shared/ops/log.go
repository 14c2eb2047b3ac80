package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/natter-chat/natter/shared/config"
)

// levels are the values of CHAT_LOG_LEVEL.
var levels = map[string]slog.Level{
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// NewLogger returns a process's logger: log/slog to w, as text (key=value
// pairs) or JSON (one object a line), from the least level c names. An
// unknown format or level (in any case) is refused with an error that
// names the variable and the values it takes; nothing is logged then.
func NewLogger(w io.Writer, c config.Log) (*slog.Logger, error) {
	var errs []error
	text := false
	switch strings.ToLower(c.Format) {
	case "text":
		text = true
	case "json":
	default:
		errs = append(errs, fmt.Errorf("%s_LOG_FORMAT=%q: the log format is text or json", config.Prefix, c.Format))
	}
	level, ok := levels[strings.ToLower(c.Level)]
	if !ok {
		errs = append(errs, fmt.Errorf("%s_LOG_LEVEL=%q: the log level is debug, info, warn or error", config.Prefix, c.Level))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	opts := &slog.HandlerOptions{Level: level}
	if text {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// LogListening logs the line the contract promises for each listener:
// the word listening, the kind (http, nats) and the bound host:port, in
// the message, and kind and addr as attributes too. It is an Info line
// written at any level: a process told to log only warnings still says
// where it listens (with port 0, nothing else tells).
func LogListening(log *slog.Logger, kind, addr string, attrs ...slog.Attr) {
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "listening "+kind+" "+addr, 0)
	r.AddAttrs(slog.String("kind", kind), slog.String("addr", addr))
	r.AddAttrs(attrs...)
	_ = log.Handler().Handle(context.Background(), r)
}
