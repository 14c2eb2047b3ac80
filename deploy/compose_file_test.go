package deploy

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
)

// loadCompose reads docker-compose.yml as docker compose v2 does (its
// loader, compose-go: schema, merges, .env, interpolation), with env set
// over the environment as a shell would.
func loadCompose(t *testing.T, env ...string) *types.Project {
	t.Helper()
	return loadComposeProfiles(t, nil, env...)
}

// The compose file is what the contract and the README describe, as
// docker compose v2 reads it, and stays in step with the workspace: the
// nats image at the nats-server version the services are built with, the
// build stage at go.work's Go, every natter service checked, restarted
// and started in order, replicas 3, and nothing published but the entry
// point and the observer's NATS port. No Docker daemon is needed; the
// compose tool installed here (docker-compose v1 on Debian) must accept
// the file too.
func TestComposeFile(t *testing.T) {
	p := loadCompose(t)

	natsVersion := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\S+)`).FindStringSubmatch(readFile(t, filepath.Join(root, "shared/go.mod")))
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(readFile(t, filepath.Join(root, "go.work")))
	if natsVersion == nil || goVersion == nil {
		t.Fatal("no nats-server version in shared/go.mod or no go line in go.work")
	}
	images := baseImages(t)
	for _, want := range []string{"golang:" + goVersion[1], "nats:" + natsVersion[1]} {
		if !slices.Contains(images, want) {
			t.Errorf("base images %v, want %s (the workspace's)", images, want)
		}
	}
	if !slices.ContainsFunc(images, regexp.MustCompile(`^caddy:\d+\.\d+\.\d+$`).MatchString) {
		t.Errorf("base images %v: caddy is not pinned to a version", images)
	}
	if p.Name != "natter" {
		t.Errorf("project name %q, want natter (from .env)", p.Name)
	}

	urls := "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
	for name, s := range p.Services {
		binary, _, _ := strings.Cut(name, "-")
		switch binary {
		case "nats":
			if !slices.ContainsFunc(s.Volumes, func(v types.ServiceVolumeConfig) bool {
				return v.Type == types.VolumeTypeVolume && v.Source == name && v.Target == "/data"
			}) {
				t.Errorf("%s keeps its store in %+v, want the named volume %s", name, s.Volumes, name)
			}
			if !slices.Contains(s.Command, "/etc/nats/cluster.conf") || !slices.Contains(s.Command, name) {
				t.Errorf("%s runs %v, want cluster.conf under its own name", name, s.Command)
			}
			routes := "nats-route://route:dev-route-change-me@nats-1:6222,nats-route://route:dev-route-change-me@nats-2:6222,nats-route://route:dev-route-change-me@nats-3:6222"
			if i := slices.Index(s.Command, "--routes"); i < 0 || i+1 == len(s.Command) || s.Command[i+1] != routes {
				t.Errorf("%s runs %v, want --routes %s", name, s.Command, routes)
			}
			continue
		case "caddy":
			for _, e := range []string{"edge-1", "edge-2"} {
				if s.DependsOn[e].Condition != types.ServiceConditionHealthy {
					t.Errorf("caddy starts before %s is healthy", e)
				}
			}
			continue
		case "edge", "broadcaster", "presence":
		default:
			t.Errorf("service %s is not one the README describes", name)
			continue
		}
		if !slices.Equal(s.Command, types.ShellCommand{binary}) {
			t.Errorf("%s runs %v, want %s", name, s.Command, binary)
		}
		if s.HealthCheck == nil || !slices.Equal(s.HealthCheck.Test, types.HealthCheckTest{"CMD", binary, "healthcheck"}) {
			t.Errorf("%s health check %+v, want its binary's healthcheck", name, s.HealthCheck)
		}
		if s.Restart != "unless-stopped" {
			t.Errorf("%s restart %q, want unless-stopped", name, s.Restart)
		}
		if s.Build == nil || s.Build.Dockerfile != "deploy/docker/Dockerfile" || s.Image != "natter:local" {
			t.Errorf("%s: image %q, build %+v: every natter service builds the one image", name, s.Image, s.Build)
		}
		env := func(k string) string {
			if v := s.Environment[k]; v != nil {
				return *v
			}
			return ""
		}
		if env("CHAT_NATS_URL") != urls {
			t.Errorf("%s CHAT_NATS_URL %q, want all three servers", name, env("CHAT_NATS_URL"))
		}
		if env("CHAT_NATS_USER") != binary || env("CHAT_NATS_PASSWORD") == "" {
			t.Errorf("%s is NATS user %q with password %q, want %s with one from .env", name, env("CHAT_NATS_USER"), env("CHAT_NATS_PASSWORD"), binary)
		}
		switch binary {
		case "edge":
			if env("CHAT_TRUSTED_PROXIES") == "" || env("CHAT_EDGE_ID") != name {
				t.Errorf("%s: trusted proxies %q, id %q", name, env("CHAT_TRUSTED_PROXIES"), env("CHAT_EDGE_ID"))
			}
			var healthy []string
			for dep, d := range s.DependsOn {
				if d.Condition == types.ServiceConditionHealthy {
					healthy = append(healthy, dep)
				}
			}
			slices.Sort(healthy)
			if want := []string{"broadcaster-1", "broadcaster-2", "presence-1", "presence-2"}; !slices.Equal(healthy, want) {
				t.Errorf("%s starts once %v are healthy, want %v", name, healthy, want)
			}
		default:
			if env("CHAT_STREAM_REPLICAS") != "3" {
				t.Errorf("%s CHAT_STREAM_REPLICAS %q, want 3", name, env("CHAT_STREAM_REPLICAS"))
			}
		}
	}
	for _, want := range append(append([]string{"caddy"}, natsServices...), natterServices...) {
		if _, ok := p.Services[want]; !ok {
			t.Errorf("no service %s", want)
		}
	}

	var published []string
	for name, s := range p.Services {
		for _, port := range s.Ports {
			published = append(published, fmt.Sprintf("%s %s:%s->%d", name, port.HostIP, port.Published, port.Target))
		}
	}
	slices.Sort(published)
	if want := []string{"caddy :8080->8080", "nats-1 127.0.0.1:4222->4222"}; !slices.Equal(published, want) {
		t.Errorf("published ports %q, want %q: only the proxy and the observer's NATS port", published, want)
	}
	// An operator's variables win over .env.
	p = loadCompose(t, "NATTER_EDGE_PASSWORD=from-the-shell", "NATTER_HTTP_PORT=9090")
	if pw := p.Services["edge-1"].Environment["CHAT_NATS_PASSWORD"]; pw == nil || *pw != "from-the-shell" {
		t.Errorf("a password set in the shell does not win over .env")
	}
	if got := p.Services["caddy"].Ports[0].Published; got != "9090" {
		t.Errorf("NATTER_HTTP_PORT=9090 publishes %s", got)
	}
	// Every NATS user of the configuration gets its password.
	for _, m := range regexp.MustCompile(`\$(NATTER_\w+_PASSWORD)`).FindAllStringSubmatch(readFile(t, filepath.Join(root, "deploy/nats/nats.conf")), -1) {
		v := p.Services["nats-1"].Environment[m[1]]
		if v == nil || *v == "" {
			t.Errorf("nats.conf needs %s, which the NATS servers do not get", m[1])
		}
	}

	// A NATS server of the cluster takes routes only with the route user's
	// password, and announces no addresses of the compose network.
	t.Setenv("NATTER_ROUTE_PASSWORD", "route-secret")
	for _, u := range []string{"EDGE", "BROADCASTER", "PRESENCE", "OBSERVER", "BOT"} {
		t.Setenv("NATTER_"+u+"_PASSWORD", "x")
	}
	opts, err := server.ProcessConfigFile(filepath.Join(root, "deploy/nats/cluster.conf"))
	if err != nil {
		t.Fatalf("cluster.conf: %v", err)
	}
	if opts.Cluster.Username != "route" || opts.Cluster.Password != "route-secret" || !opts.Cluster.NoAdvertise || opts.Cluster.Port != 6222 {
		t.Errorf("cluster.conf's cluster: user %q, password %q, no_advertise %v, port %d", opts.Cluster.Username, opts.Cluster.Password, opts.Cluster.NoAdvertise, opts.Cluster.Port)
	}

	// The image's module layer copies every module of the workspace, or
	// drops it from the image's workspace: the build needs one or the
	// other.
	dockerfile := readFile(t, filepath.Join(root, "deploy/docker/Dockerfile"))
	for _, m := range regexp.MustCompile(`(?m)^\s+\./(\S+)$`).FindAllStringSubmatch(readFile(t, filepath.Join(root, "go.work")), -1) {
		if !strings.Contains(dockerfile, "COPY "+m[1]+"/go.* "+m[1]+"/\n") && !strings.Contains(dockerfile, "-dropuse=./"+m[1]+" ") {
			t.Errorf("the Dockerfile neither copies %s/go.mod, a module of go.work, nor leaves it out", m[1])
		}
	}

	compose, err := composeTool()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, compose[0], append(compose[1:], "-f", filepath.Join(root, "docker-compose.yml"), "config", "-q")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("%s config -q: %v\n%s", strings.Join(compose, " "), err, out)
	}
}

// composeTool is docker-compose, or docker compose where that is what is
// installed.
func composeTool() ([]string, error) {
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return []string{p}, nil
	}
	if exec.Command("docker", "compose", "version").Run() == nil {
		return []string{"docker", "compose"}, nil
	}
	return nil, fmt.Errorf("neither docker-compose nor docker compose is installed (Debian: apt-get install docker-compose)")
}
