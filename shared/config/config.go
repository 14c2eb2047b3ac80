// Package config defines the groups of settings that natter's binaries
// combine into their own configuration struct, read once with envconfig
// under the prefix CHAT (docs/operations.md). Each field documents its
// default; constructors take these values and never read the environment.
package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/kelseyhightower/envconfig"
)

// Prefix is the environment prefix of every setting.
const Prefix = "CHAT"

// NATS is how a service reaches NATS.
type NATS struct {
	URL          string        `envconfig:"NATS_URL" default:"" desc:"NATS URL(s), comma separated; empty in single-binary mode starts the embedded server"`
	DrainTimeout time.Duration `envconfig:"NATS_DRAIN_TIMEOUT" default:"3s" desc:"how long draining NATS may take on shutdown; inside the 10 s shutdown promise"`
	User         string        `envconfig:"NATS_USER" default:"" desc:"NATS user name (with NATS_PASSWORD); in single-binary mode the embedded server requires it"`
	Password     string        `envconfig:"NATS_PASSWORD" default:"" desc:"NATS password of NATS_USER"`
	Creds        string        `envconfig:"NATS_CREDS" default:"" desc:"a NATS credentials file (JWT and nkey seed), instead of a user and password"`
}

// Credentials reports whether n names a NATS user or a credentials file.
func (n NATS) Credentials() bool { return n.User != "" || n.Creds != "" }

// Embedded configures the single binary's own NATS server.
type Embedded struct {
	NATSAddr string `envconfig:"NATS_ADDR" default:"127.0.0.1:4222" desc:"client listen address of the embedded NATS server; 127.0.0.1:0 picks a free port"`
	DataDir  string `envconfig:"DATA_DIR" default:"chat-data" desc:"where the embedded server keeps JetStream data"`
}

// Web is what the edge's HTTP side accepts.
type Web struct {
	AllowedOrigins []string `envconfig:"ALLOWED_ORIGINS" default:"" desc:"extra allowed Origin values, comma separated; same-origin is always allowed"`
	AuthSecret     string   `envconfig:"AUTH_SECRET" default:"" desc:"HS256 secret of WebSocket tokens; when set, /ws needs ?token=JWT and the user is its sub"`
	MaxConnsPerIP  int      `envconfig:"MAX_CONNS_PER_IP" default:"0" desc:"open WebSockets per client address (0: no limit); over it, 429 before the upgrade"`
	TrustedProxies []string `envconfig:"TRUSTED_PROXIES" default:"" desc:"addresses or CIDRs of proxies whose X-Forwarded-For names the client, comma separated; from anyone else the header is ignored"`
}

// Limits are the per-connection limits of the protocol (docs/protocol.md).
type Limits struct {
	MaxFrameBytes int64         `envconfig:"MAX_FRAME_BYTES" default:"65536" desc:"largest incoming WebSocket frame; larger closes with 1009"`
	MaxTextChars  int           `envconfig:"MAX_TEXT_CHARS" default:"4000" desc:"longest message text in Unicode code points"`
	MaxRooms      int           `envconfig:"MAX_ROOMS" default:"100" desc:"rooms one connection may join"`
	SendQueue     int           `envconfig:"SEND_QUEUE" default:"512" desc:"live events queued for one client before it is cut off as slow"`
	PostTimeout   time.Duration `envconfig:"POST_TIMEOUT" default:"5s" desc:"how long an edge waits for the broadcaster to store a post before answering unavailable"`
	PingInterval  time.Duration `envconfig:"PING_INTERVAL" default:"25s" desc:"WebSocket ping interval"`
	PongTimeout   time.Duration `envconfig:"PONG_TIMEOUT" default:"60s" desc:"a client that has not answered for this long is dropped; must exceed the ping interval"`
	WriteTimeout  time.Duration `envconfig:"WRITE_TIMEOUT" default:"5s" desc:"how long one write to a client may block before the client is dropped"`
	WriteDelay    time.Duration `envconfig:"WRITE_DELAY" default:"2ms" desc:"how long a client's first queued event waits for those that follow to share its frame (0: write at once)"`
	MessageRate   float64       `envconfig:"RATE_MESSAGES" default:"10" desc:"messages and dms a second per connection; past it (and the burst) rate_limited (0: no limit)"`
	MessageBurst  int           `envconfig:"RATE_BURST" default:"20" desc:"messages and dms a connection may send at once above the rate"`
	TypingEvery   time.Duration `envconfig:"TYPING_EVERY" default:"1s" desc:"least time between two typing signals of one connection for one room; the ones between are dropped"`
}

// Presence configures the presence service.
type Presence struct {
	MaxMembers int `envconfig:"PRESENCE_MAX_MEMBERS" default:"500" desc:"rooms with more present users get no per-user join and leave events (who still answers)"`
}

// Retention is how much history the stream keeps.
type Retention struct {
	MaxMsgs  int64         `envconfig:"HISTORY_MAX_MSGS" default:"10000" desc:"messages kept per room"`
	MaxAge   time.Duration `envconfig:"HISTORY_MAX_AGE" default:"720h" desc:"age after which messages are dropped"`
	MaxBytes int64         `envconfig:"HISTORY_MAX_BYTES" default:"10737418240" desc:"bytes kept in all (10 GiB)"`
}

// Files limits the files shared in rooms and dms (docs/protocol.md,
// Files), kept in the object store bucket CHAT_FILES.
type Files struct {
	FileMaxBytes   int64         `envconfig:"FILE_MAX_BYTES" default:"10485760" desc:"largest file one upload may carry (10 MiB); past it, 413"`
	BucketMaxBytes int64         `envconfig:"FILES_MAX_BYTES" default:"5368709120" desc:"bytes the file bucket CHAT_FILES keeps in all (5 GiB); an upload past it is refused with 507"`
	UnsharedTTL    time.Duration `envconfig:"FILES_UNSHARED_TTL" default:"1h" desc:"an upload never shared in a message or dm is deleted this long after it ends"`
}

// Replication is how many copies of the streams and of the presence
// bucket JetStream keeps.
type Replication struct {
	Replicas int `envconfig:"STREAM_REPLICAS" default:"1" desc:"replicas of the room and dm streams and of the presence bucket, created or updated to it at start (3 on a three-node NATS cluster); more than the cluster has servers is refused at start"`
}

// Profiling is the optional net/http/pprof listener every binary has.
type Profiling struct {
	PProfAddr string `envconfig:"PPROF_ADDR" default:"" desc:"address of a net/http/pprof listener for profiling (empty: none); keep it on loopback"`
}

// Log is how a process logs (docs/operations.md); ops.NewLogger
// refuses any other value.
type Log struct {
	Format string `envconfig:"LOG_FORMAT" default:"text" desc:"log format: text (key=value) or json (one object a line)"`
	Level  string `envconfig:"LOG_LEVEL" default:"info" desc:"least level logged: debug, info, warn or error (the listening lines are logged at any level)"`
}

// Load fills spec, a pointer to a binary's configuration struct, from the
// environment.
func Load(spec any) error {
	if err := envconfig.Process(Prefix, spec); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	return nil
}

// Defaults returns T, one of this package's groups or a struct that
// embeds them, with every field at its default tag: what Load gives when
// no variable is set. It never reads the environment, where envconfig
// also takes the bare name (MAX_ROOMS for CHAT_MAX_ROOMS), so a test built
// on it does not depend on how its process was started. A default tag it
// cannot parse is a bug in the tag, and panics.
func Defaults[T any]() T {
	var v T
	if err := setDefaults(reflect.ValueOf(&v).Elem()); err != nil {
		panic(fmt.Sprintf("config.Defaults[%T]: %v", v, err))
	}
	return v
}

// setDefaults sets each field of the struct s to its default tag, and
// the fields of the structs in it, as envconfig walks them.
func setDefaults(s reflect.Value) error {
	for i := range s.NumField() {
		f, sf := s.Field(i), s.Type().Field(i)
		if !sf.IsExported() {
			continue
		}
		if f.Kind() == reflect.Struct {
			if err := setDefaults(f); err != nil {
				return err
			}
			continue
		}
		def := sf.Tag.Get("default")
		if def == "" {
			continue // envconfig leaves the zero value
		}
		if err := parseInto(f, def); err != nil {
			return fmt.Errorf("%s: default %q: %w", sf.Name, def, err)
		}
	}
	return nil
}

// parseInto sets f from s as envconfig decodes a variable of f's kind.
func parseInto(f reflect.Value, s string) error {
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if f.Type() == reflect.TypeFor[time.Duration]() {
			d, err := time.ParseDuration(s)
			if err != nil {
				return err
			}
			f.SetInt(int64(d))
			return nil
		}
		n, err := strconv.ParseInt(s, 0, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 0, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetUint(n)
	case reflect.Float32, reflect.Float64:
		x, err := strconv.ParseFloat(s, f.Type().Bits())
		if err != nil {
			return err
		}
		f.SetFloat(x)
	case reflect.Slice:
		if strings.TrimSpace(s) == "" {
			f.Set(reflect.MakeSlice(f.Type(), 0, 0))
			return nil
		}
		parts := strings.Split(s, ",")
		sl := reflect.MakeSlice(f.Type(), len(parts), len(parts))
		for i, part := range parts {
			if err := parseInto(sl.Index(i), part); err != nil {
				return err
			}
		}
		f.Set(sl)
	default:
		return fmt.Errorf("a field of kind %s, which Defaults does not decode", f.Kind())
	}
	return nil
}
