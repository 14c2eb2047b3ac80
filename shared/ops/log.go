package ops

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

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
