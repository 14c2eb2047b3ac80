package ops

import (
	"fmt"
	"regexp"
	"runtime/debug"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// version is the build's version when the linker sets it:
//
//	go build -ldflags "-X github.com/natter-chat/natter/shared/ops.version=1.4.0" ./services/chat
//
// Empty, Version takes it from the build information.
var version string

// semver is what the NATS services framework accepts as a version.
var semver = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// Version is the build's version as semantic versioning wants it: the
// one the linker set, else the main module's (a tagged `go install`, or
// the pseudo-version the go command derives from the commit), else
// 0.0.0-dev, with the commit when the build recorded one.
func Version() string {
	if semver.MatchString(version) {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "0.0.0-dev"
	}
	if v := strings.TrimPrefix(info.Main.Version, "v"); semver.MatchString(v) {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "0.0.0-dev+" + s.Value[:12]
		}
	}
	return "0.0.0-dev"
}

// Service is how a natter service shows itself to the NATS services
// framework: `nats micro ls`, `info` and `stats`.
type Service struct {
	// Name is one of subject.ServiceEdge, ServicePresence and
	// ServiceBroadcaster.
	Name        string
	Description string
	// Metadata is shown by info, for example the edge's id.
	Metadata map[string]string
	// Stats, when set, returns the service's own figures, which the
	// stats answer carries under each endpoint's data. It runs on a NATS
	// callback goroutine, so it may only read what is safe to read from
	// any goroutine.
	Stats func() any
}

// AddService registers s on nc with the build's version. Its endpoints
// are added by the caller; Stop drains them and takes the service off
// NATS. The caller stops it before nc is drained.
func AddService(nc *nats.Conn, s Service) (micro.Service, error) {
	cfg := micro.Config{Name: s.Name, Version: Version(), Description: s.Description, Metadata: s.Metadata}
	if s.Stats != nil {
		cfg.StatsHandler = func(*micro.Endpoint) any { return s.Stats() }
	}
	svc, err := micro.AddService(nc, cfg)
	if err != nil {
		return nil, fmt.Errorf("register %s with the NATS services framework: %w", s.Name, err)
	}
	return svc, nil
}
