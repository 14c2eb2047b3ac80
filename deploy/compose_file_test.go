package deploy

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// composeFile is what the tests read of docker-compose.yml.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Build       any               `yaml:"build"`
		Command     []string          `yaml:"command"`
		Restart     string            `yaml:"restart"`
		Ports       []string          `yaml:"ports"`
		Volumes     []string          `yaml:"volumes"`
		Environment map[string]string `yaml:"environment"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	if err := yaml.Unmarshal([]byte(readFile(t, filepath.Join(root, "docker-compose.yml"))), &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return c
}

// dotEnv reads the committed .env.
func dotEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(readFile(t, filepath.Join(root, ".env"))))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf(".env: %q is not NAME=value", line)
		}
		env[k] = v
	}
	return env
}

// The compose file is what the contract and the README describe, and it
// stays in step with the workspace: the nats image at the nats-server
// version the services are built with, the build stage at go.work's Go,
// every natter service checked and restarted, replicas 3, and nothing
// published but the entry point and the observer's NATS port. No Docker
// daemon is needed; the compose tool, where installed, must accept the
// file.
func TestComposeFile(t *testing.T) {
	c := readCompose(t)

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

	env := dotEnv(t)
	urls := "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
	want := map[string]struct{ binary, natsUser string }{
		"edge-1": {"edge", "edge"}, "edge-2": {"edge", "edge"},
		"broadcaster-1": {"broadcaster", "broadcaster"}, "broadcaster-2": {"broadcaster", "broadcaster"},
		"presence-1": {"presence", "presence"}, "presence-2": {"presence", "presence"},
	}
	var published []string
	for name, s := range c.Services {
		for _, p := range s.Ports {
			published = append(published, name+" "+p)
		}
		if strings.HasPrefix(name, "nats-") {
			if !slices.Contains(s.Volumes, name+":/data") {
				t.Errorf("%s keeps its store in %v, want the named volume %s", name, s.Volumes, name)
			}
			if _, ok := c.Volumes[name]; !ok {
				t.Errorf("no named volume %s", name)
			}
			continue
		}
		w, ok := want[name]
		if !ok {
			if name != "caddy" {
				t.Errorf("service %s is not one the README describes", name)
			}
			continue
		}
		delete(want, name)
		if !slices.Equal(s.Command, []string{w.binary}) {
			t.Errorf("%s runs %v, want %s", name, s.Command, w.binary)
		}
		if !slices.Equal(s.Healthcheck.Test, []string{"CMD", w.binary, "healthcheck"}) {
			t.Errorf("%s health check %v, want its binary's healthcheck", name, s.Healthcheck.Test)
		}
		if s.Restart != "unless-stopped" {
			t.Errorf("%s restart %q, want unless-stopped", name, s.Restart)
		}
		if s.Build == nil || s.Image != "${NATTER_IMAGE:-natter:local}" {
			t.Errorf("%s: image %q, build %v: every natter service builds the one image", name, s.Image, s.Build)
		}
		e := s.Environment
		if e["CHAT_NATS_URL"] != urls {
			t.Errorf("%s CHAT_NATS_URL %q, want all three servers", name, e["CHAT_NATS_URL"])
		}
		if e["CHAT_NATS_USER"] != w.natsUser {
			t.Errorf("%s is NATS user %q, want %s", name, e["CHAT_NATS_USER"], w.natsUser)
		}
		passVar := "NATTER_" + strings.ToUpper(w.natsUser) + "_PASSWORD"
		if e["CHAT_NATS_PASSWORD"] != "${"+passVar+"}" || env[passVar] == "" {
			t.Errorf("%s password %q: want ${%s}, set in .env", name, e["CHAT_NATS_PASSWORD"], passVar)
		}
		if w.binary != "edge" && e["CHAT_STREAM_REPLICAS"] != "3" {
			t.Errorf("%s CHAT_STREAM_REPLICAS %q, want 3", name, e["CHAT_STREAM_REPLICAS"])
		}
		if w.binary == "edge" && e["CHAT_TRUSTED_PROXIES"] == "" {
			t.Errorf("%s does not trust the proxy's X-Forwarded-For", name)
		}
	}
	for name := range want {
		t.Errorf("no service %s", name)
	}
	slices.Sort(published)
	if !slices.Equal(published, []string{"caddy ${NATTER_HTTP_PORT:-8080}:8080", "nats-1 127.0.0.1:${NATTER_NATS_PORT:-4222}:4222"}) {
		t.Errorf("published ports %q, want only :8080 (the proxy) and 127.0.0.1:4222 (NATS)", published)
	}
	// Every NATS user of the configuration has its password in .env.
	for _, m := range regexp.MustCompile(`\$(NATTER_\w+_PASSWORD)`).FindAllStringSubmatch(readFile(t, filepath.Join(root, "deploy/nats/nats.conf")), -1) {
		if env[m[1]] == "" {
			t.Errorf("nats.conf needs %s, which .env does not set", m[1])
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
