package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/conf"
	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	k8syaml "sigs.k8s.io/yaml"

	"github.com/natter-chat/natter/shared/config"
)

// The Kubernetes manifests of k8s/ and the NATS chart's values
// (k8s/nats-values.yaml), checked without a cluster.

var (
	k8sDir         = filepath.Join(root, "deploy/k8s")
	natsValuesPath = filepath.Join(k8sDir, "nats-values.yaml")
)

// natsRelease is the Helm release of the NATS chart that the docs
// install (helm install nats …): its pods are nats-0, nats-1, … on the
// headless Service nats-headless.
const natsRelease = "nats"

// natterStop is how long a natter process may take to stop on SIGTERM
// (docs/operations.md, health and shutdown).
const natterStop = 10

// The kustomize base and the example overlay build as kubectl apply -k
// builds them; every object decodes strictly into its Kubernetes API type
// (a misspelled field fails), and every reference is followed: selectors,
// ports, probes, Secrets and ConfigMaps, the variables each binary reads,
// the NATS users and servers of the chart's values.
func TestK8sManifests(t *testing.T) {
	want := readContract(t)
	builds := map[string]*manifests{}
	for _, dir := range []string{"base", "overlays/example"} {
		m := buildKustomization(t, filepath.Join(k8sDir, dir))
		builds[dir] = m
		t.Run(dir, func(t *testing.T) { m.check(t, want) })
	}
	t.Run("overlay", func(t *testing.T) { checkOverlay(t, builds["base"], builds["overlays/example"]) })
}

// manifests are the objects one kustomization builds, by kind and name.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	ingresses   map[string]*networkingv1.Ingress
	hpas        map[string]*autoscalingv2.HorizontalPodAutoscaler
	pdbs        map[string]*policyv1.PodDisruptionBudget
	secrets     map[string]*corev1.Secret
	configMaps  map[string]*corev1.ConfigMap
	// The generated Secrets by the name the kustomization gives them,
	// before kustomize adds its hash.
	generated map[string]*corev1.Secret
}

// buildKustomization runs kustomize on dir, on disk as kubectl apply -k
// does, and decodes each object it builds into its API type. An object of
// a kind or version not listed here, or with a field its type lacks,
// fails the test.
func buildKustomization(t *testing.T, dir string) *manifests {
	t.Helper()
	rm, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	m := &manifests{
		deployments: map[string]*appsv1.Deployment{},
		services:    map[string]*corev1.Service{},
		ingresses:   map[string]*networkingv1.Ingress{},
		hpas:        map[string]*autoscalingv2.HorizontalPodAutoscaler{},
		pdbs:        map[string]*policyv1.PodDisruptionBudget{},
		secrets:     map[string]*corev1.Secret{},
		configMaps:  map[string]*corev1.ConfigMap{},
		generated:   map[string]*corev1.Secret{},
	}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, r.CurId(), err)
		}
		gvk := r.GetApiVersion() + " " + r.GetKind()
		where := fmt.Sprintf("%s: %s %s", dir, r.GetKind(), r.GetName())
		var obj metav1.Object
		switch gvk {
		case "apps/v1 Deployment":
			d := decodeInto(t, where, y, m.deployments)
			// Each runs one binary of the image; the checks below take
			// that container for the pod's.
			if n := len(d.Spec.Template.Spec.Containers); n != 1 {
				t.Fatalf("%s: %d containers, want one", where, n)
			}
			obj = d
		case "v1 Service":
			obj = decodeInto(t, where, y, m.services)
		case "networking.k8s.io/v1 Ingress":
			obj = decodeInto(t, where, y, m.ingresses)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			obj = decodeInto(t, where, y, m.hpas)
		case "policy/v1 PodDisruptionBudget":
			obj = decodeInto(t, where, y, m.pdbs)
		case "v1 Secret":
			s := decodeInto(t, where, y, m.secrets)
			m.generated[kustomizeHash.ReplaceAllString(s.Name, "")] = s
			obj = s
		case "v1 ConfigMap":
			obj = decodeInto(t, where, y, m.configMaps)
		default:
			t.Errorf("%s: %s, which this test does not know", where, gvk)
			continue
		}
		for _, msg := range validation.IsDNS1123Subdomain(obj.GetName()) {
			t.Errorf("%s: name: %s", where, msg)
		}
		for _, err := range metavalidation.ValidateLabels(obj.GetLabels(), field.NewPath("metadata", "labels")) {
			t.Errorf("%s: %v", where, err)
		}
	}
	return m
}

// kustomizeHash is the suffix kustomize gives a generated name: a dash
// and ten characters of its hash's alphabet, which has no vowels.
var kustomizeHash = regexp.MustCompile(`-[bcdfghjkmnpqrstvwxz2456789]{10}$`)

// decodeInto decodes y strictly into a new T, added to objs under its
// name, and returns it.
func decodeInto[T any, PT interface {
	*T
	metav1.Object
}](t *testing.T, where string, y []byte, objs map[string]PT) PT {
	t.Helper()
	obj := PT(new(T))
	if err := k8syaml.UnmarshalStrict(y, obj); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if _, dup := objs[obj.GetName()]; dup {
		t.Errorf("%s: twice", where)
	}
	objs[obj.GetName()] = obj
	return obj
}

// contract is what the manifests must agree with: the binaries, the
// image, the documented variables and the NATS chart's values.
type contract struct {
	env        map[string]map[string]bool // binary → the variables it reads
	ops        string                     // docs/operations.md
	dockerfile string
	uid, gid   string // the image's user
	values     *natsValues
}

func readContract(t *testing.T) *contract {
	t.Helper()
	c := &contract{
		env:        binaryEnv(t),
		ops:        readFile(t, filepath.Join(root, "docs/operations.md")),
		dockerfile: readFile(t, filepath.Join(root, "deploy/docker/Dockerfile")),
		values:     readNATSValues(t),
	}
	user := regexp.MustCompile(`(?m)^USER (\d+):(\d+)$`).FindStringSubmatch(c.dockerfile)
	if user == nil {
		t.Fatal("the Dockerfile names no USER uid:gid")
	}
	c.uid, c.gid = user[1], user[2]
	return c
}

// check checks every object of the build and the references between them.
func (m *manifests) check(t *testing.T, want *contract) {
	if len(m.deployments) != 3 {
		t.Errorf("Deployments %v, want edge, broadcaster and presence", slices.Sorted(maps.Keys(m.deployments)))
	}
	for name, d := range m.deployments {
		m.checkDeployment(t, want, "Deployment "+name, d)
	}
	m.checkServices(t)
	m.checkIngresses(t)
	m.checkAutoscaler(t)
	m.checkBudgets(t)
	m.checkSecrets(t, want.values)
}

// checkDeployment checks one of natter's Deployments: its selector, how
// its pods run, the environment its binary reads, its probes and stop.
func (m *manifests) checkDeployment(t *testing.T, want *contract, where string, d *appsv1.Deployment) {
	tmpl := d.Spec.Template
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(tmpl.Labels)) {
		t.Errorf("%s: selector %v does not match its pod labels %v (%v)", where, d.Spec.Selector, tmpl.Labels, err)
	}
	for _, c := range tmpl.Spec.TopologySpreadConstraints {
		if s, err := metav1.LabelSelectorAsSelector(c.LabelSelector); err != nil || !s.Matches(labels.Set(tmpl.Labels)) {
			t.Errorf("%s: topology spread selector %v does not match its pods", where, c.LabelSelector)
		}
	}
	spec := tmpl.Spec
	if spec.EnableServiceLinks == nil || *spec.EnableServiceLinks {
		t.Errorf("%s: enableServiceLinks is not false: envconfig would read Kubernetes' service variables as bare CHAT_ names", where)
	}
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || strconv.FormatInt(*psc.RunAsUser, 10) != want.uid ||
		psc.RunAsGroup == nil || strconv.FormatInt(*psc.RunAsGroup, 10) != want.gid {
		t.Errorf("%s: pod security context %+v, want non-root as the image's user %s:%s", where, psc, want.uid, want.gid)
	}
	c := spec.Containers[0]
	binary := binaryOf(d)
	if c.Name != binary || !slices.Equal(c.Command, []string{"/usr/local/bin/" + binary}) ||
		!strings.Contains(want.dockerfile, "./services/"+binary+" ") || !strings.Contains(want.dockerfile, "COPY --from=build /out/bin/ /usr/local/bin/") {
		t.Errorf("%s: container %s runs %v, which is not one of the image's binaries in /usr/local/bin", where, c.Name, c.Command)
	}
	reads, ok := want.env[binary]
	if !ok {
		t.Errorf("%s runs %s, which is not edge, broadcaster or presence", where, binary)
		return
	}
	if ref, _, _ := strings.Cut(c.Image, ":"); filepath.Base(ref) != "natter" {
		t.Errorf("%s: image %s, want the natter image", where, c.Image)
	}

	// The environment: only variables the binary reads, and
	// documented; every reference resolved in this build.
	vars := map[string]corev1.EnvVar{}
	if len(c.EnvFrom) > 0 {
		t.Errorf("%s: envFrom, whose names this test cannot check: name each variable", where)
	}
	for _, e := range c.Env {
		if _, dup := vars[e.Name]; dup {
			t.Errorf("%s: %s set twice", where, e.Name)
		}
		vars[e.Name] = e
		if !reads[e.Name] {
			t.Errorf("%s: %s is not a variable %s reads (services/%s/main.go)", where, e.Name, binary, binary)
		}
		if !strings.Contains(want.ops, "`"+e.Name+"`") {
			t.Errorf("%s: %s is not in docs/operations.md", where, e.Name)
		}
		m.checkEnvRef(t, where+": "+e.Name, e.ValueFrom)
	}
	for _, name := range []string{"CHAT_NATS_URL", "CHAT_NATS_USER", "CHAT_NATS_PASSWORD"} {
		if _, ok := vars[name]; !ok {
			t.Errorf("%s: no %s", where, name)
		}
	}
	if u := vars["CHAT_NATS_USER"].Value; u != binary {
		t.Errorf("%s: NATS user %q, want %s", where, u, binary)
	}
	want.values.checkUser(t, where, binary, vars["CHAT_NATS_PASSWORD"].ValueFrom)
	if url := m.envValue(vars["CHAT_NATS_URL"]); url != want.values.clientURLs() {
		t.Errorf("%s: CHAT_NATS_URL %q, want every server of the chart's release %q: %q", where, url, natsRelease, want.values.clientURLs())
	}
	if reads["CHAT_STREAM_REPLICAS"] {
		if r := vars["CHAT_STREAM_REPLICAS"].Value; r != strconv.Itoa(want.values.Config.Cluster.Replicas) {
			t.Errorf("%s: CHAT_STREAM_REPLICAS %q, want the NATS servers' count %d", where, r, want.values.Config.Cluster.Replicas)
		}
	}
	for _, id := range []string{"CHAT_EDGE_ID", "CHAT_PRESENCE_ID"} {
		if !reads[id] {
			continue
		}
		e, ok := vars[id]
		if !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
			t.Errorf("%s: %s %+v, want the pod's name", where, id, e)
		}
	}
	if binary == "edge" {
		// The pod's name, <deployment>-<up to 10>-<5>, is the edge's
		// id, at most 32 characters (names.ValidUser).
		if n := len(d.Name) + 1 + 10 + 1 + 5; n > 32 {
			t.Errorf("%s: its pods' names reach %d characters, and CHAT_EDGE_ID takes 32 at most", where, n)
		}
		if m.envValue(vars["CHAT_TRUSTED_PROXIES"]) == "" {
			t.Errorf("%s: no CHAT_TRUSTED_PROXIES: behind the ingress every client would count as its address", where)
		}
		if s := m.envValue(vars["CHAT_AUTH_SECRET"]); len(s) < 32 {
			t.Errorf("%s: CHAT_AUTH_SECRET of %d bytes: the edge refuses fewer than 32", where, len(s))
		}
	}

	// HTTP: the port the binary listens on, probed where it answers.
	addr := defaultHTTPAddr(t, binary)
	if e, ok := vars["CHAT_HTTP_ADDR"]; ok {
		addr = e.Value
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: CHAT_HTTP_ADDR %q: %v", where, addr, err)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return strconv.Itoa(int(p.ContainerPort)) == port }) {
		t.Errorf("%s: ports %+v, none is CHAT_HTTP_ADDR's %s", where, c.Ports, port)
	}
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s: no HTTP %s probe", where, p.kind)
			continue
		}
		got := p.probe.HTTPGet
		if got.Path != p.path {
			t.Errorf("%s: %s probe on %s, want %s", where, p.kind, got.Path, p.path)
		}
		if cp, ok := containerPort(c, got.Port); !ok || strconv.Itoa(int(cp)) != port {
			t.Errorf("%s: %s probe on port %s, which is not a port of the container or not CHAT_HTTP_ADDR's %s", where, p.kind, got.Port.String(), port)
		}
	}

	// Stopping: natter's 10 s after any preStop sleep, within the
	// grace period.
	stop := int64(natterStop)
	if c.Lifecycle != nil && c.Lifecycle.PreStop != nil {
		if c.Lifecycle.PreStop.Sleep == nil {
			t.Errorf("%s: preStop %+v: the image has no shell, only a sleep action works", where, c.Lifecycle.PreStop)
		} else {
			stop += c.Lifecycle.PreStop.Sleep.Seconds
		}
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= stop {
		t.Errorf("%s: termination grace %s s, want above %d s (the preStop sleep and natter's %d s stop)", where, ptrString(g), stop, natterStop)
	}

	csc := c.SecurityContext
	if csc == nil || csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem ||
		csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.Capabilities == nil || !slices.Equal(csc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: container security context %+v, want a read-only root, no privilege escalation, all capabilities dropped", where, csc)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okr := c.Resources.Requests[r]
		lim, okl := c.Resources.Limits[r]
		if !okr || !okl || req.Sign() <= 0 || req.Cmp(lim) > 0 {
			t.Errorf("%s: %s request %v, limit %v: want both, the request not above the limit", where, r, req.String(), lim.String())
		}
	}
}

// checkServices: each Service reaches one Deployment's pods, on ports
// their container has.
func (m *manifests) checkServices(t *testing.T) {
	for name, s := range m.services {
		where := "Service " + name
		d := m.selects(t, where, labels.SelectorFromSet(s.Spec.Selector))
		if len(s.Spec.Selector) == 0 || d == nil {
			continue
		}
		for _, p := range s.Spec.Ports {
			if _, ok := containerPort(d.Spec.Template.Spec.Containers[0], p.TargetPort); !ok {
				t.Errorf("%s: port %s targets %s, which Deployment %s's container does not have", where, p.Name, p.TargetPort.String(), d.Name)
			}
		}
	}
}

// checkIngresses: each Ingress is ingress-nginx's, keeps WebSockets open
// past natter's own timeouts, logs no tokens, serves TLS, and leads to
// the edges' Service on a port it has.
func (m *manifests) checkIngresses(t *testing.T) {
	limits := config.Defaults[config.Limits]()
	if len(m.ingresses) == 0 {
		t.Error("no Ingress")
	}
	for name, ing := range m.ingresses {
		where := "Ingress " + name
		if ing.Spec.IngressClassName == nil || *ing.Spec.IngressClassName != "nginx" {
			t.Errorf("%s: class %v, want nginx (the annotations are ingress-nginx's)", where, ing.Spec.IngressClassName)
		}
		// A WebSocket must outlive a silence of the ping interval and of
		// the pong timeout: the edge, not the proxy, drops dead clients.
		for _, a := range []string{"proxy-read-timeout", "proxy-send-timeout"} {
			v, err := strconv.Atoi(ing.Annotations["nginx.ingress.kubernetes.io/"+a])
			if err != nil || float64(v) <= 2*limits.PongTimeout.Seconds() || float64(v) <= limits.PingInterval.Seconds() {
				t.Errorf("%s: %s %q, want seconds well above CHAT_PONG_TIMEOUT (%v) and CHAT_PING_INTERVAL (%v)", where, a, ing.Annotations["nginx.ingress.kubernetes.io/"+a], limits.PongTimeout, limits.PingInterval)
			}
		}
		if ing.Annotations["nginx.ingress.kubernetes.io/enable-access-log"] != "false" {
			t.Errorf("%s: the access log is on, and would keep the tokens of /ws?token=…", where)
		}
		if len(ing.Spec.Rules) == 0 {
			t.Errorf("%s: no rules", where)
		}
		for _, r := range ing.Spec.Rules {
			if !slices.ContainsFunc(ing.Spec.TLS, func(tls networkingv1.IngressTLS) bool { return slices.Contains(tls.Hosts, r.Host) }) {
				t.Errorf("%s: host %q has no TLS: tokens would cross the network in clear", where, r.Host)
			}
			if r.HTTP == nil {
				t.Errorf("%s: host %q has no paths", where, r.Host)
				continue
			}
			for _, p := range r.HTTP.Paths {
				b := p.Backend.Service
				if b == nil {
					t.Errorf("%s: path %s has no Service backend", where, p.Path)
					continue
				}
				s, ok := m.services[b.Name]
				if !ok {
					t.Errorf("%s: path %s goes to Service %s, which the build lacks", where, p.Path, b.Name)
					continue
				}
				if !slices.ContainsFunc(s.Spec.Ports, func(sp corev1.ServicePort) bool {
					return (b.Port.Name != "" && sp.Name == b.Port.Name) || (b.Port.Name == "" && sp.Port == b.Port.Number)
				}) {
					t.Errorf("%s: path %s goes to port %+v, which Service %s lacks", where, p.Path, b.Port, s.Name)
				}
				if edge := m.edge(); edge == nil || !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(edge.Spec.Template.Labels)) {
					t.Errorf("%s: path %s goes to Service %s, which does not reach the edges", where, p.Path, s.Name)
				}
			}
		}
	}
}

// checkAutoscaler: one autoscaler, of the edges' Deployment, which leaves
// the count to it, on resources the edge requests.
func (m *manifests) checkAutoscaler(t *testing.T) {
	if len(m.hpas) != 1 {
		t.Errorf("%d HorizontalPodAutoscalers, want one, the edges'", len(m.hpas))
	}
	for name, h := range m.hpas {
		where := "HorizontalPodAutoscaler " + name
		ref := h.Spec.ScaleTargetRef
		d := m.edge()
		if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || d == nil || ref.Name != d.Name {
			t.Errorf("%s scales %+v, want the edges' Deployment", where, ref)
			continue
		}
		if d.Spec.Replicas != nil {
			t.Errorf("%s: Deployment %s sets replicas %d, which every apply would set over the autoscaler's", where, d.Name, *d.Spec.Replicas)
		}
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 2 || h.Spec.MaxReplicas < *h.Spec.MinReplicas {
			t.Errorf("%s: from %v to %d edges, want at least two", where, h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		for _, metric := range h.Spec.Metrics {
			if metric.Resource == nil {
				continue
			}
			if _, ok := d.Spec.Template.Spec.Containers[0].Resources.Requests[metric.Resource.Name]; !ok && metric.Resource.Target.Type == autoscalingv2.UtilizationMetricType {
				t.Errorf("%s: %s utilization, but the edge requests no %s", where, metric.Resource.Name, metric.Resource.Name)
			}
		}
	}
}

// checkBudgets: each PodDisruptionBudget covers one Deployment, and every
// Deployment has one.
func (m *manifests) checkBudgets(t *testing.T) {
	for name, p := range m.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil {
			t.Errorf("PodDisruptionBudget %s: %v", name, err)
			continue
		}
		m.selects(t, "PodDisruptionBudget "+name, sel)
	}
	for name := range m.deployments {
		if !slices.ContainsFunc(slices.Collect(maps.Values(m.pdbs)), func(p *policyv1.PodDisruptionBudget) bool {
			sel, _ := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			return sel != nil && sel.Matches(labels.Set(m.deployments[name].Spec.Template.Labels))
		}) {
			t.Errorf("Deployment %s has no PodDisruptionBudget", name)
		}
	}
}

// checkSecrets: placeholders only in the repository, and the NATS
// servers' passwords where the chart's values say.
func (m *manifests) checkSecrets(t *testing.T, values *natsValues) {
	for name, s := range m.secrets {
		for k, v := range s.Data {
			if !strings.Contains(string(v), "change-me") {
				t.Errorf("Secret %s: %s is not a placeholder (change-me): no real secret belongs in the repository", name, k)
			}
		}
	}
	for v, ref := range values.passwordRefs(t) {
		if ref == nil || m.secretValue(ref) == nil {
			t.Errorf("nats-values.yaml: %s from %s, which this build does not make", v, secretRef(ref))
		}
	}
}

// checkEnvRef fails unless ref (an env var's valueFrom) names a Secret or
// ConfigMap key this build makes, or the pod's name.
func (m *manifests) checkEnvRef(t *testing.T, where string, ref *corev1.EnvVarSource) {
	t.Helper()
	switch {
	case ref == nil:
	case ref.SecretKeyRef != nil:
		if m.secretValue(ref.SecretKeyRef) == nil {
			t.Errorf("%s: Secret %s key %s, which this build does not make", where, ref.SecretKeyRef.Name, ref.SecretKeyRef.Key)
		}
	case ref.ConfigMapKeyRef != nil:
		cm, ok := m.configMaps[ref.ConfigMapKeyRef.Name]
		if _, has := cm.Data[ref.ConfigMapKeyRef.Key]; !ok || !has {
			t.Errorf("%s: ConfigMap %s key %s, which this build does not make", where, ref.ConfigMapKeyRef.Name, ref.ConfigMapKeyRef.Key)
		}
	case ref.FieldRef != nil && ref.FieldRef.FieldPath == "metadata.name":
	default:
		t.Errorf("%s: from %+v, which this test does not follow", where, ref)
	}
}

func (m *manifests) secretValue(ref *corev1.SecretKeySelector) []byte {
	if s, ok := m.secrets[ref.Name]; ok {
		return s.Data[ref.Key]
	}
	return nil
}

// envValue is e's value, followed to its Secret or ConfigMap.
func (m *manifests) envValue(e corev1.EnvVar) string {
	switch {
	case e.ValueFrom == nil:
		return e.Value
	case e.ValueFrom.SecretKeyRef != nil:
		return string(m.secretValue(e.ValueFrom.SecretKeyRef))
	case e.ValueFrom.ConfigMapKeyRef != nil:
		if cm, ok := m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name]; ok {
			return cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
		}
	}
	return ""
}

// selects returns the one Deployment whose pods sel selects, and fails
// the test when it selects none or several.
func (m *manifests) selects(t *testing.T, where string, sel labels.Selector) *appsv1.Deployment {
	t.Helper()
	var found []*appsv1.Deployment
	for _, d := range m.deployments {
		if !sel.Empty() && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Errorf("%s: selector %s selects %d Deployments' pods, want one", where, sel, len(found))
		return nil
	}
	return found[0]
}

// containerPort resolves a port by name or number among c's ports.
func containerPort(c corev1.Container, p intstr.IntOrString) (int32, bool) {
	for _, cp := range c.Ports {
		if (p.Type == intstr.String && p.StrVal == cp.Name) || (p.Type == intstr.Int && p.IntVal == cp.ContainerPort) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// The example overlay changes what an installation must: its namespace,
// an image from a registry with a tag, the host, and every secret.
func checkOverlay(t *testing.T, base, overlay *manifests) {
	for name, d := range overlay.deployments {
		if d.Namespace != "natter" {
			t.Errorf("Deployment %s in namespace %q, want natter", name, d.Namespace)
		}
		img := d.Spec.Template.Spec.Containers[0].Image
		if repo, tag, ok := strings.Cut(img, ":"); !ok || !strings.Contains(repo, "/") || tag == "" || tag == "latest" {
			t.Errorf("Deployment %s runs %s, want an image from a registry with a tag", name, img)
		}
	}
	if base.deployments["broadcaster"] != nil && overlay.deployments["broadcaster"] != nil &&
		reflect.DeepEqual(base.deployments["broadcaster"].Spec.Replicas, overlay.deployments["broadcaster"].Spec.Replicas) {
		t.Error("the overlay does not set the broadcasters' replicas")
	}
	for name, ing := range overlay.ingresses {
		if b, ok := base.ingresses[name]; ok && ing.Spec.Rules[0].Host == b.Spec.Rules[0].Host {
			t.Errorf("Ingress %s: the overlay keeps the base's host %s", name, b.Spec.Rules[0].Host)
		}
	}
	if len(overlay.secrets) != len(base.secrets) {
		t.Errorf("secrets %v in the overlay, %v in the base", slices.Sorted(maps.Keys(overlay.secrets)), slices.Sorted(maps.Keys(base.secrets)))
	}
	for name, s := range base.generated {
		o, ok := overlay.generated[name]
		if !ok {
			t.Errorf("Secret %s is not in the overlay", s.Name)
			continue
		}
		if !slices.Equal(slices.Sorted(maps.Keys(s.Data)), slices.Sorted(maps.Keys(o.Data))) {
			t.Errorf("Secret %s: keys %v in the overlay, %v in the base", s.Name, slices.Sorted(maps.Keys(o.Data)), slices.Sorted(maps.Keys(s.Data)))
		}
		for k, v := range s.Data {
			if bytes.Equal(o.Data[k], v) {
				t.Errorf("Secret %s: the overlay keeps the base's %s", s.Name, k)
			}
		}
	}
}

// binaryEnv returns, for edge, broadcaster and presence, the variables
// its Config reads: its own fields' envconfig names and those of the
// shared/config groups it embeds, each with the prefix CHAT_.
func binaryEnv(t *testing.T) map[string]map[string]bool {
	t.Helper()
	groups := map[string][]string{} // shared/config type → its variables
	f := parseGo(t, filepath.Join(root, "shared/config/config.go"))
	ast.Inspect(f, func(n ast.Node) bool {
		if ts, ok := n.(*ast.TypeSpec); ok {
			if st, ok := ts.Type.(*ast.StructType); ok {
				for _, fld := range st.Fields.List {
					if name := envconfigName(fld); name != "" {
						groups[ts.Name.Name] = append(groups[ts.Name.Name], name)
					}
				}
			}
		}
		return true
	})
	env := map[string]map[string]bool{}
	for _, binary := range []string{"edge", "broadcaster", "presence"} {
		names := map[string]bool{}
		f := parseGo(t, filepath.Join(root, "services", binary, "main.go"))
		found := false
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || ts.Name.Name != "Config" {
				return true
			}
			found = true
			for _, fld := range ts.Type.(*ast.StructType).Fields.List {
				if name := envconfigName(fld); name != "" {
					names[config.Prefix+"_"+name] = true
					continue
				}
				sel, ok := fld.Type.(*ast.SelectorExpr)
				if len(fld.Names) > 0 || !ok || groups[sel.Sel.Name] == nil {
					t.Fatalf("services/%s/main.go: Config field %v is neither tagged nor a shared/config group", binary, fld.Names)
				}
				for _, name := range groups[sel.Sel.Name] {
					names[config.Prefix+"_"+name] = true
				}
			}
			return false
		})
		if !found || !names["CHAT_NATS_URL"] {
			t.Fatalf("services/%s/main.go: no Config reading CHAT_NATS_URL", binary)
		}
		env[binary] = names
	}
	return env
}

func parseGo(t *testing.T, path string) *ast.File {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// envconfigName is a struct field's envconfig tag, or "".
func envconfigName(fld *ast.Field) string {
	if fld.Tag == nil {
		return ""
	}
	tag, _ := strconv.Unquote(fld.Tag.Value)
	return reflect.StructTag(tag).Get("envconfig")
}

// natsValues is the part of the NATS chart's values that natter sets,
// named as the chart's 1.x values.yaml names them. It is decoded with
// every field known, so a key misspelled here (which Helm would ignore
// without a word) fails the test.
type natsValues struct {
	Config struct {
		Cluster struct {
			Enabled   bool `yaml:"enabled"`
			Replicas  int  `yaml:"replicas"`
			RouteURLs struct {
				User     string `yaml:"user"`
				Password string `yaml:"password"`
			} `yaml:"routeURLs"`
		} `yaml:"cluster"`
		JetStream struct {
			Enabled   bool `yaml:"enabled"`
			FileStore struct {
				Enabled bool   `yaml:"enabled"`
				Dir     string `yaml:"dir"`
				MaxSize string `yaml:"maxSize"`
				PVC     struct {
					Enabled bool   `yaml:"enabled"`
					Size    string `yaml:"size"`
				} `yaml:"pvc"`
			} `yaml:"fileStore"`
			MemoryStore struct {
				Enabled bool `yaml:"enabled"`
			} `yaml:"memoryStore"`
		} `yaml:"jetstream"`
		Merge map[string]any `yaml:"merge"`
	} `yaml:"config"`
	Container struct {
		Image struct {
			Repository string `yaml:"repository"`
			Tag        string `yaml:"tag"`
		} `yaml:"image"`
		// A variable's value, or a map with valueFrom, as the chart takes it.
		Env map[string]yaml.Node `yaml:"env"`
	} `yaml:"container"`
	PodDisruptionBudget struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"podDisruptionBudget"`
	NatsBox struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"natsBox"`
}

func readNATSValues(t *testing.T) *natsValues {
	t.Helper()
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, natsValuesPath)))
	dec.KnownFields(true)
	var v natsValues
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", natsValuesPath, err)
	}
	return &v
}

// clientURLs is the CHAT_NATS_URL that lists every server of the chart's
// release: its pods by name on its headless Service.
func (v *natsValues) clientURLs() string {
	var urls []string
	for i := range v.Config.Cluster.Replicas {
		urls = append(urls, fmt.Sprintf("nats://%s-%d.%s-headless:4222", natsRelease, i, natsRelease))
	}
	return strings.Join(urls, ",")
}

// passwordVar matches a value the chart writes unquoted, a variable.
var passwordVar = regexp.MustCompile(`^<<\s*\$(\w+)\s*>>$`)

// passwordRefs returns the Secret key each variable of container.env
// comes from.
func (v *natsValues) passwordRefs(t *testing.T) map[string]*corev1.SecretKeySelector {
	t.Helper()
	refs := map[string]*corev1.SecretKeySelector{}
	for name, node := range v.Container.Env {
		var e struct {
			ValueFrom *corev1.EnvVarSource `json:"valueFrom"`
		}
		b, err := yaml.Marshal(&node)
		if err == nil {
			err = k8syaml.UnmarshalStrict(b, &e)
		}
		if err != nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			t.Errorf("nats-values.yaml: container.env %s is not from a Secret (%v)", name, err)
			refs[name] = nil
			continue
		}
		refs[name] = e.ValueFrom.SecretKeyRef
	}
	return refs
}

// checkUser fails unless user is a user of the values' config whose
// password variable comes from the Secret key that password (the
// service's CHAT_NATS_PASSWORD) names.
func (v *natsValues) checkUser(t *testing.T, where, user string, password *corev1.EnvVarSource) {
	t.Helper()
	accounts, _ := v.Config.Merge["accounts"].(map[string]any)
	for _, acc := range accounts {
		users, _ := acc.(map[string]any)["users"].([]any)
		for _, u := range users {
			u, _ := u.(map[string]any)
			if u["user"] != user {
				continue
			}
			pw, _ := u["password"].(string)
			m := passwordVar.FindStringSubmatch(pw)
			if m == nil {
				t.Errorf("nats-values.yaml: user %s's password %q is not a variable", user, pw)
				return
			}
			ref := v.passwordRefs(t)[m[1]]
			if password == nil || password.SecretKeyRef == nil || ref == nil || *password.SecretKeyRef != *ref {
				var got *corev1.SecretKeySelector
				if password != nil {
					got = password.SecretKeyRef
				}
				t.Errorf("%s: CHAT_NATS_PASSWORD from %s, but the NATS servers read user %s's from %s", where, secretRef(got), user, secretRef(ref))
			}
			return
		}
	}
	t.Errorf("%s: NATS user %s is not in nats-values.yaml", where, user)
}

// renderNATSConfig writes the NATS configuration that the chart makes of
// the values, as far as natter sets it: config.merge, the JetStream store
// and the cluster's authorization. As the chart does, it writes JSON and
// unquotes the strings between << and >>.
func (v *natsValues) renderNATSConfig(t *testing.T) string {
	t.Helper()
	c := map[string]any{}
	for k, val := range v.Config.Merge {
		c[k] = val
	}
	c["jetstream"] = map[string]any{
		"store_dir":      v.Config.JetStream.FileStore.Dir,
		"max_file_store": "<< " + v.Config.JetStream.FileStore.MaxSize + " >>",
	}
	var routes []string
	for i := range v.Config.Cluster.Replicas {
		routes = append(routes, fmt.Sprintf("nats://%s:%s@%s-%d.%s-headless:6222", v.Config.Cluster.RouteURLs.User, v.Config.Cluster.RouteURLs.Password, natsRelease, i, natsRelease))
	}
	c["cluster"] = map[string]any{
		"name":          natsRelease,
		"port":          6222,
		"no_advertise":  true,
		"routes":        routes,
		"authorization": map[string]any{"user": v.Config.Cluster.RouteURLs.User, "password": v.Config.Cluster.RouteURLs.Password},
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(c); err != nil {
		t.Fatal(err)
	}
	return regexp.MustCompile(`"<<\s*(.*?)\s*>>"`).ReplaceAllString(buf.String(), "$1")
}

// The NATS chart's values run natter's NATS as the compose mesh's does:
// three servers with JetStream on a volume each, the same accounts,
// users, passwords' variables and permissions as deploy/nats/nats.conf,
// the same limits, routes that need the route user, and the nats-server
// the services are built with. The configuration the chart would write
// is parsed by nats-server itself.
func TestK8sNATSValues(t *testing.T) {
	v := readNATSValues(t)
	if !v.Config.Cluster.Enabled || v.Config.Cluster.Replicas != 3 {
		t.Errorf("cluster enabled %v with %d servers, want 3", v.Config.Cluster.Enabled, v.Config.Cluster.Replicas)
	}
	js := v.Config.JetStream
	if !js.Enabled || !js.FileStore.Enabled || !js.FileStore.PVC.Enabled || js.FileStore.PVC.Size == "" || js.MemoryStore.Enabled {
		t.Errorf("JetStream %+v, want it on, in files on a volume of each server's own, no memory store", js)
	}
	if !v.PodDisruptionBudget.Enabled || v.NatsBox.Enabled {
		t.Errorf("podDisruptionBudget %v, natsBox %v: want the budget, and no nats-box (no user of its own)", v.PodDisruptionBudget.Enabled, v.NatsBox.Enabled)
	}
	natsVersion := regexp.MustCompile(`github.com/nats-io/nats-server/v2 v(\S+)`).FindStringSubmatch(readFile(t, filepath.Join(root, "shared/go.mod")))
	if natsVersion == nil || v.Container.Image.Repository != "nats" || v.Container.Image.Tag != natsVersion[1]+"-alpine" {
		t.Errorf("NATS image %s:%s, want nats at shared/go.mod's nats-server (%v), alpine", v.Container.Image.Repository, v.Container.Image.Tag, natsVersion)
	}
	if v.Config.Cluster.RouteURLs.User != "route" || !strings.Contains(v.Config.Cluster.RouteURLs.Password, "change-me") {
		t.Errorf("route user %q with password %q, want route with a placeholder (the real one is given at install)", v.Config.Cluster.RouteURLs.User, v.Config.Cluster.RouteURLs.Password)
	}

	// Each variable its own value, so that a user given another user's
	// variable differs.
	for _, u := range []string{"EDGE", "BROADCASTER", "PRESENCE", "OBSERVER", "BOT", "ROUTE"} {
		t.Setenv("NATTER_"+u+"_PASSWORD", "pw-"+strings.ToLower(u))
	}
	compose, err := conf.ParseFile(filepath.Join(root, "deploy/nats/cluster.conf"))
	if err != nil {
		t.Fatalf("cluster.conf: %v", err)
	}
	rendered := v.renderNATSConfig(t)
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(rendered), 0o600); err != nil {
		t.Fatal(err)
	}
	chart, err := conf.ParseFile(path)
	if err != nil {
		t.Fatalf("the configuration the chart would write: %v\n%s", err, rendered)
	}
	for _, key := range []string{"accounts", "max_payload", "ping_interval", "ping_max"} {
		if d := confDiff(key, chart[key], compose[key]); d != "" {
			t.Errorf("nats-values.yaml differs from deploy/nats: %s", d)
		}
	}
	if got, want := chart["jetstream"].(map[string]any)["max_file_store"], compose["jetstream"].(map[string]any)["max_file_store"]; got != want {
		t.Errorf("max_file_store %v, compose's %v", got, want)
	}
	// Every variable the values name comes from container.env, and
	// nothing else does.
	refs := v.passwordRefs(t)
	for _, m := range regexp.MustCompile(`<<\s*\$(\w+)\s*>>`).FindAllStringSubmatch(readFile(t, natsValuesPath), -1) {
		if _, ok := refs[m[1]]; !ok {
			t.Errorf("config.merge reads $%s, which container.env does not set", m[1])
		}
		delete(refs, m[1])
	}
	for name := range refs {
		t.Errorf("container.env sets %s, which config.merge does not read", name)
	}

	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("nats-server refuses the configuration the chart would write: %v\n%s", err, rendered)
	}
	if opts.Cluster.Username != "route" || opts.Cluster.Password != v.Config.Cluster.RouteURLs.Password || len(opts.Routes) != 3 {
		t.Errorf("cluster: user %q, password %q, %d routes", opts.Cluster.Username, opts.Cluster.Password, len(opts.Routes))
	}
	if len(opts.Users) != 5 {
		t.Errorf("%d users, want edge, broadcaster, presence, bot and observer", len(opts.Users))
	}
}

// confDiff describes the first difference between two parsed NATS
// configurations a (the chart's) and b (compose's) under path, or is "".
func confDiff(path string, a, b any) string {
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok {
			break
		}
		for _, k := range slices.Sorted(maps.Keys(b)) {
			if _, ok := a[k]; !ok {
				return fmt.Sprintf("%s.%s: missing, compose has %v", path, k, b[k])
			}
		}
		for _, k := range slices.Sorted(maps.Keys(a)) {
			if d := confDiff(path+"."+k, a[k], b[k]); d != "" {
				return d
			}
		}
		return ""
	case []any:
		b, ok := b.([]any)
		if !ok {
			break
		}
		for i := range min(len(a), len(b)) {
			if d := confDiff(fmt.Sprintf("%s[%d]", path, i), a[i], b[i]); d != "" {
				return d
			}
		}
		if len(a) != len(b) {
			return fmt.Sprintf("%s: %d entries, compose has %d", path, len(a), len(b))
		}
		return ""
	}
	if !reflect.DeepEqual(a, b) {
		return fmt.Sprintf("%s: %#v, compose has %#v", path, a, b)
	}
	return ""
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// secretRef names a Secret's key for a message.
func secretRef(ref *corev1.SecretKeySelector) string {
	if ref == nil {
		return "no Secret"
	}
	return fmt.Sprintf("Secret %s key %s", ref.Name, ref.Key)
}

// binaryOf is the natter binary d's pods run, or "".
func binaryOf(d *appsv1.Deployment) string {
	if cs := d.Spec.Template.Spec.Containers; len(cs) > 0 && len(cs[0].Command) > 0 {
		return filepath.Base(cs[0].Command[0])
	}
	return ""
}

// edge is the Deployment of the edges, or nil.
func (m *manifests) edge() *appsv1.Deployment {
	for _, d := range m.deployments {
		if binaryOf(d) == "edge" {
			return d
		}
	}
	return nil
}
