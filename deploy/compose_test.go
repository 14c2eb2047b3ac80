package deploy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natter-chat/natter/shared/servicetest"
)

// The compose mesh under test: the repository's docker-compose.yml as a
// user runs it, under a project name of its own, with its own published
// ports and passwords given the way an operator gives them (variables set
// in the shell win over .env).

// root is the repository's root, where docker-compose.yml is.
var root = func() string {
	dir, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return dir
}()

// natterServices are the natter containers of the mesh, in the order of a
// rolling restart: what stores first, what clients see last.
var natterServices = []string{"broadcaster-1", "broadcaster-2", "presence-1", "presence-2", "edge-1", "edge-2"}

// natsServices are the three NATS servers.
var natsServices = []string{"nats-1", "nats-2", "nats-3"}

// skipOrFail skips the test with why, except under CI=true, where .ci/run
// has set the machine up and the same reason is a failure.
func skipOrFail(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why)
	}
	t.Skip(why)
}

// needDocker skips (or fails, under CI) unless a Docker daemon answers and
// a compose command is there, and returns that command.
func needDocker(t testing.TB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		skipOrFail(t, fmt.Sprintf("no Docker daemon answers (docker info: %v: %s); the container tests need one", err, bytes.TrimSpace(out)))
	}
	compose, err := composeTool()
	if err != nil {
		skipOrFail(t, err.Error())
	}
	return compose
}

// baseImages are the public images the Dockerfile and the compose file
// name: golang (the build stage), nats and caddy.
func baseImages(t testing.TB) []string {
	t.Helper()
	dockerfile := readFile(t, filepath.Join(root, "deploy/docker/Dockerfile"))
	compose := readFile(t, filepath.Join(root, "docker-compose.yml"))
	var images []string
	for _, m := range regexp.MustCompile(`(?m)^FROM (golang:\S+)`).FindAllStringSubmatch(dockerfile, -1) {
		images = append(images, m[1])
	}
	for _, m := range regexp.MustCompile(`(?m)^\s*image: ((?:nats|caddy):\S+)\s*$`).FindAllStringSubmatch(compose, -1) {
		images = append(images, m[1])
	}
	if len(images) != 3 {
		t.Fatalf("base images found: %v, want golang, nats and caddy", images)
	}
	return images
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mesh is one compose project of docker-compose.yml.
type mesh struct {
	t        *testing.T
	compose  []string // the compose command
	project  string
	env      []string // set for compose, over the test's environment
	httpPort int      // the published entry point (Caddy)
	natsPort int      // the published NATS client port, on 127.0.0.1
	password map[string]string
	downOnce sync.Once
}

// startMesh builds the image and brings the mesh up, torn down when the
// test ends whatever happens; up returns once every natter container is
// healthy and the proxy answers.
func startMesh(t *testing.T) *mesh {
	t.Helper()
	compose := needDocker(t)
	for _, image := range baseImages(t) {
		if err := exec.Command("docker", "image", "inspect", image).Run(); err == nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		out, err := exec.CommandContext(ctx, "docker", "pull", image).CombinedOutput()
		cancel()
		if err != nil {
			skipOrFail(t, fmt.Sprintf("image %s is not here and cannot be pulled (%v: %s); where no registry answers, build the stand-ins first: deploy/standins/build.sh",
				image, err, lastLines(string(out), 3)))
		}
	}
	m := &mesh{
		t:        t,
		compose:  compose,
		project:  "natter-mesh-" + randomHex(4),
		httpPort: freePort(t, ""),
		natsPort: freePort(t, "127.0.0.1"),
		password: map[string]string{},
	}
	// One image tag per checkout: runs of the same tree share the build
	// cache, two checkouts never overwrite each other's image.
	sum := sha256.Sum256([]byte(root))
	m.env = []string{
		"NATTER_IMAGE=natter-mesh-test:" + hex.EncodeToString(sum[:4]),
		"NATTER_HTTP_PORT=" + strconv.Itoa(m.httpPort),
		"NATTER_NATS_PORT=" + strconv.Itoa(m.natsPort),
	}
	for _, user := range []string{"edge", "broadcaster", "presence", "observer", "bot"} {
		m.password[user] = randomHex(12)
		m.env = append(m.env, "NATTER_"+strings.ToUpper(user)+"_PASSWORD="+m.password[user])
	}
	t.Cleanup(m.down)
	// go test's -timeout ends the process without cleanups: tear the mesh
	// down a little before, so it is not left running.
	if deadline, ok := t.Deadline(); ok {
		watchdog := time.AfterFunc(time.Until(deadline)-90*time.Second, func() {
			fmt.Fprintf(os.Stderr, "%s: go test's timeout is near: taking the mesh %s down\n", t.Name(), m.project)
			m.down()
		})
		t.Cleanup(func() { watchdog.Stop() })
	}
	m.run(t, 15*time.Minute, "build")
	m.up(t)
	// The test reads the NATS servers' health on the compose network,
	// which a Linux host reaches; Docker Desktop's does not.
	var err error
	if !servicetest.Poll(30*time.Second, func() bool { _, err = m.natsHealth(t, "nats-1"); return err == nil }) {
		skipOrFail(t, fmt.Sprintf("the host cannot reach the compose network (nats-1's monitoring port: %v); the mesh test needs Docker Engine on Linux, not Docker Desktop", err))
	}
	return m
}

// up starts every container and waits until the mesh serves.
func (m *mesh) up(t testing.TB) {
	t.Helper()
	m.run(t, 5*time.Minute, "up", "-d")
	m.waitHealthy(t, 2*time.Minute, append(append([]string{}, natterServices...), "caddy")...)
	servicetest.WaitFor(t, time.Minute, "the proxy serves the page", func() bool {
		resp, err := http.Get(m.httpURL() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// down removes the project's containers, network and volumes, once; when
// the test failed, it saves every container's log first.
func (m *mesh) down() { m.downOnce.Do(m.tearDown) }

func (m *mesh) tearDown() {
	if m.t.Failed() {
		m.saveLogs(m.t, "the end")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := m.command(ctx, "down", "-v", "--remove-orphans", "-t", "5").CombinedOutput(); err != nil {
		m.t.Logf("compose down: %v: %s", err, lastLines(string(out), 10))
	}
	// Whatever down left (it failed, or the project was half up).
	label := "label=com.docker.compose.project=" + m.project
	for _, kind := range [][]string{{"container", "rm", "-f", "-v"}, {"network", "rm"}, {"volume", "rm", "-f"}} {
		ids, _ := exec.CommandContext(ctx, "docker", kind[0], "ls", "-a", "-q", "--filter", label).Output()
		if kind[0] != "container" {
			ids, _ = exec.CommandContext(ctx, "docker", kind[0], "ls", "-q", "--filter", label).Output()
		}
		if f := strings.Fields(string(ids)); len(f) > 0 {
			_ = exec.CommandContext(ctx, "docker", append(kind, f...)...).Run()
		}
	}
}

// saveLogs appends every container's log to a file named for the
// project in the temporary folder, which outlives the test, and says
// where. Containers removed since the last save take their logs with
// them: a failing step saves before going on.
func (m *mesh) saveLogs(t testing.TB, why string) {
	path := filepath.Join(os.TempDir(), m.project+".log")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	out, _ := m.command(ctx, "logs", "--no-color", "--timestamps").CombinedOutput()
	cancel()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Logf("saving the mesh's logs: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "===== %s, %s =====\n%s", why, time.Now().Format(time.RFC3339), out)
	t.Logf("the mesh's logs at %s are in %s", why, path)
}

// stopAll is `docker compose down` without -v: the volumes stay.
func (m *mesh) stopAll(t testing.TB) { m.run(t, 3*time.Minute, "down", "-t", "10") }

func (m *mesh) command(ctx context.Context, args ...string) *exec.Cmd {
	full := append(append([]string{}, m.compose[1:]...), "-f", filepath.Join(root, "docker-compose.yml"), "-p", m.project)
	cmd := exec.CommandContext(ctx, m.compose[0], append(full, args...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), m.env...)
	return cmd
}

// run runs a compose command and fails the test if it fails.
func (m *mesh) run(t testing.TB, timeout time.Duration, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if out, err := m.command(ctx, args...).CombinedOutput(); err != nil {
		t.Fatalf("compose %s: %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 40))
	}
}

// docker runs a docker command and returns its output, failing the test
// if it fails.
func (m *mesh) docker(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, lastLines(string(out), 20))
	}
	return strings.TrimSpace(string(out))
}

// container is the id of a service's container.
func (m *mesh) container(t testing.TB, service string) string {
	t.Helper()
	id := m.docker(t, "ps", "-a", "-q", "--filter", "label=com.docker.compose.project="+m.project,
		"--filter", "label=com.docker.compose.service="+service)
	if id == "" || strings.Contains(id, "\n") {
		t.Fatalf("service %s has containers %q, want one", service, id)
	}
	return id
}

// kill sends SIGKILL to a service's container: no clean shutdown, and
// the restart policy does not bring it back (start does).
func (m *mesh) kill(t testing.TB, service string) { m.docker(t, "kill", m.container(t, service)) }

func (m *mesh) start(t testing.TB, service string) { m.docker(t, "start", m.container(t, service)) }

// stop stops a container as docker does (SIGTERM, then SIGKILL after
// 10 s), and returns once it has exited.
func (m *mesh) stop(t testing.TB, service string) {
	m.docker(t, "stop", "-t", "10", m.container(t, service))
}

// exitCode is how a stopped container's process ended.
func (m *mesh) exitCode(t testing.TB, service string) string {
	return m.docker(t, "inspect", "-f", "{{.State.ExitCode}}", m.container(t, service))
}

// network is the compose network the services share.
func (m *mesh) network(t testing.TB) string {
	return m.docker(t, "network", "ls", "-q", "--filter", "label=com.docker.compose.project="+m.project)
}

// cutOff takes a container off the network: its sockets stay open, its
// packets go nowhere, as when a host's link fails.
func (m *mesh) cutOff(t testing.TB, service string) {
	m.docker(t, "network", "disconnect", m.network(t), m.container(t, service))
}

// reconnect puts a container back on the network under its service name.
func (m *mesh) reconnect(t testing.TB, service string) {
	m.docker(t, "network", "connect", "--alias", service, m.network(t), m.container(t, service))
}

// health is a container's health check status ("healthy", "starting",
// "unhealthy"), or its state when it has no check or does not run.
func (m *mesh) health(t testing.TB, service string) string {
	return m.docker(t, "inspect", "-f", "{{if not .State.Running}}{{.State.Status}}{{else if .State.Health}}{{.State.Health.Status}}{{else}}running{{end}}", m.container(t, service))
}

func (m *mesh) waitHealthy(t testing.TB, limit time.Duration, services ...string) {
	t.Helper()
	for _, s := range services {
		want := "healthy"
		if s == "caddy" || strings.HasPrefix(s, "nats-") {
			want = "running" // the official images have no client to check with
		}
		servicetest.WaitFor(t, limit, s+" "+want, func() bool { return m.health(t, s) == want })
	}
}

// natsCurrent reports whether a NATS server says it is healthy, JetStream
// and its streams current.
func (m *mesh) natsCurrent(t testing.TB, service string) bool {
	code, err := m.natsHealth(t, service)
	return err == nil && code == http.StatusOK
}

// natsHealth asks a NATS server's monitoring /healthz, on the compose
// network, which the host reaches on Linux; an error when it cannot.
func (m *mesh) natsHealth(t testing.TB, service string) (int, error) {
	ip, err := exec.Command("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", m.container(t, service)).Output()
	if err != nil || len(bytes.TrimSpace(ip)) == 0 {
		return 0, fmt.Errorf("%s has no address: %v", service, err)
	}
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + net.JoinHostPort(string(bytes.TrimSpace(ip)), "8222") + "/healthz")
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// logs is a service's log, with docker's timestamps.
func (m *mesh) logs(t testing.TB, service string) string {
	t.Helper()
	return m.docker(t, "logs", "-t", m.container(t, service))
}

func (m *mesh) httpURL() string { return "http://127.0.0.1:" + strconv.Itoa(m.httpPort) }
func (m *mesh) wsURL() string   { return "ws://127.0.0.1:" + strconv.Itoa(m.httpPort) + "/ws" }
func (m *mesh) natsURL() string { return "nats://127.0.0.1:" + strconv.Itoa(m.natsPort) }

func freePort(t testing.TB, host string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
