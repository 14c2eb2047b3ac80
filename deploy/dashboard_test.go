package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metricsql"
	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/natter-chat/natter/shared/logwatch"
	"github.com/natter-chat/natter/shared/servicetest"
)

// The observability profile of docker-compose.yml: Prometheus scrapes
// every natter container (prometheus/prometheus.yml) and Grafana shows
// grafana/natter.json. These tests keep the three in step with the
// services: the dashboard asks only for series the binaries expose, the
// scrape configuration names exactly the natter services of the compose
// file, and the profile wires Grafana to both.

var (
	dashboardPath  = filepath.Join(root, "deploy/grafana/natter.json")
	scrapePath     = filepath.Join(root, "deploy/prometheus/prometheus.yml")
	datasourcePath = filepath.Join(root, "deploy/grafana/provisioning/datasources/prometheus.yml")
	providerPath   = filepath.Join(root, "deploy/grafana/provisioning/dashboards/natter.yml")
)

// Every query of the dashboard names only metrics that the natter
// binaries expose, with labels they have: the single binary and the three
// separate services, each freshly started, are scraped, and each panel
// target's PromQL is parsed. The dashboard is also one Grafana imports:
// valid JSON, unique panel ids, every panel with a data source that
// resolves and at least one query.
func TestDashboard(t *testing.T) {
	queries := readDashboard(t)
	series := scrapeBinaries(t, startProcesses(t))
	// What Prometheus adds: the per-target series it writes itself, and
	// the target labels (job, instance and the static ones) on every
	// series it scrapes.
	for _, name := range []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling", "scrape_series_added"} {
		series[name] = map[string]bool{}
	}
	targetLabels := map[string]bool{"job": true, "instance": true}
	for _, sc := range readScrapeConfig(t).ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for l := range st.Labels {
				targetLabels[l] = true
			}
		}
	}

	missing := map[string][]string{} // metric → where the dashboard asks for it
	for _, q := range queries {
		where := fmt.Sprintf("panel %d %q, query %s", q.panel, q.title, q.refID)
		sels, bys, err := parseQuery(q.expr)
		if err != nil {
			t.Errorf("%s: %v\n  %s", where, err, q.expr)
			continue
		}
		// has reports whether one of sels is exposed (known) and whether
		// the series of one of those carry label.
		has := func(sels []selector, label string) (known, found bool) {
			if targetLabels[label] {
				return true, true
			}
			for _, s := range sels {
				if ls, ok := series[s.name]; ok {
					known = true
					found = found || ls[label]
				}
			}
			return known, found
		}
		for _, s := range sels {
			ls, ok := series[s.name]
			if !ok {
				missing[s.name] = append(missing[s.name], where)
				continue
			}
			for _, l := range s.labels {
				if !ls[l] && !targetLabels[l] {
					t.Errorf("%s: %s has no label %s (it has %v)", where, s.name, l, slices.Sorted(maps.Keys(ls)))
				}
			}
		}
		for _, b := range bys {
			for _, l := range b.labels {
				if known, found := has(b.sels, l); known && !found {
					t.Errorf("%s: by (%s): no series under it has the label %s", where, strings.Join(b.labels, ", "), l)
				}
			}
		}
		for _, m := range regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`).FindAllStringSubmatch(q.legend, -1) {
			if known, found := has(sels, m[1]); known && !found {
				t.Errorf("%s: legend %q names the label %s, which none of its series has", where, q.legend, m[1])
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(missing)) {
		t.Errorf("%s: no natter binary exposes it; asked for by %s", name, strings.Join(missing[name], "; "))
	}
}

// The scrape configuration names every natter service of the compose
// file and nothing else, each at the port its CHAT_HTTP_ADDR gives (the
// binary's default where the compose file sets none), in a job named for
// its kind, with the service's name as its instance.
func TestScrapeConfig(t *testing.T) {
	cfg := readScrapeConfig(t)
	if d, err := time.ParseDuration(cfg.Global.ScrapeInterval); err != nil || d <= 0 || d > 10*time.Second {
		t.Errorf("scrape_interval %q, want at most 10s", cfg.Global.ScrapeInterval)
	}

	want := map[string]string{} // "job target instance" → service
	p := loadCompose(t)
	for name, s := range p.Services {
		if s.Image != "natter:local" {
			continue
		}
		if len(s.Command) == 0 {
			t.Errorf("%s runs no binary", name)
			continue
		}
		kind := s.Command[0]
		addr := defaultHTTPAddr(t, kind)
		if v := s.Environment["CHAT_HTTP_ADDR"]; v != nil {
			addr = *v
		}
		_, port, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s: CHAT_HTTP_ADDR %q: %v", name, addr, err)
			continue
		}
		want[fmt.Sprintf("job %s target %s instance %s", kind, net.JoinHostPort(name, port), name)] = name
	}
	if len(want) == 0 {
		t.Fatal("no natter services in docker-compose.yml")
	}

	got := map[string]bool{}
	jobs := map[string]bool{}
	for _, sc := range cfg.ScrapeConfigs {
		if jobs[sc.JobName] {
			t.Errorf("job %s twice", sc.JobName)
		}
		jobs[sc.JobName] = true
		if sc.MetricsPath != "" && sc.MetricsPath != "/metrics" || sc.Scheme != "" && sc.Scheme != "http" {
			t.Errorf("job %s scrapes %s://…%s, want http and /metrics", sc.JobName, sc.Scheme, sc.MetricsPath)
		}
		for _, st := range sc.StaticConfigs {
			for _, target := range st.Targets {
				instance := st.Labels["instance"]
				if instance == "" {
					instance = "(the address)"
				}
				key := fmt.Sprintf("job %s target %s instance %s", sc.JobName, target, instance)
				if got[key] {
					t.Errorf("scraped twice: %s", key)
				}
				got[key] = true
			}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(want)) {
		if !got[key] {
			t.Errorf("service %s is not scraped: want %s", want[key], key)
		}
	}
	for _, key := range slices.Sorted(maps.Keys(got)) {
		if want[key] == "" {
			t.Errorf("scraped, but no natter service of docker-compose.yml matches: %s", key)
		}
	}
}

// The observability profile starts nothing unless asked for; with it,
// Prometheus and Grafana run pinned images, answer on 127.0.0.1 only
// (ports movable like the others'), read their configuration read-only,
// and Grafana opens with the Prometheus of the profile as its data source
// and natter.json as its dashboard.
func TestObservabilityProfile(t *testing.T) {
	p := loadComposeProfiles(t, nil)
	for _, name := range []string{"prometheus", "grafana"} {
		if _, ok := p.Services[name]; ok {
			t.Errorf("%s runs without the observability profile", name)
		}
		if _, ok := p.DisabledServices[name]; !ok {
			t.Errorf("no service %s in the observability profile", name)
		}
	}

	p = loadComposeProfiles(t, []string{"observability"})
	prom, graf := p.Services["prometheus"], p.Services["grafana"]
	if !regexp.MustCompile(`^prom/prometheus:v\d+\.\d+\.\d+$`).MatchString(prom.Image) {
		t.Errorf("prometheus image %q: want prom/prometheus pinned to a version", prom.Image)
	}
	if !regexp.MustCompile(`^grafana/grafana:\d+\.\d+\.\d+$`).MatchString(graf.Image) {
		t.Errorf("grafana image %q: want grafana/grafana pinned to a version", graf.Image)
	}
	for _, s := range []types.ServiceConfig{prom, graf} {
		if !slices.Equal(s.Profiles, []string{"observability"}) {
			t.Errorf("%s profiles %v, want observability only", s.Name, s.Profiles)
		}
		if s.Build != nil {
			t.Errorf("%s is built; it is a public image", s.Name)
		}
		for _, port := range s.Ports {
			if port.HostIP != "127.0.0.1" {
				t.Errorf("%s publishes %s:%s, want 127.0.0.1 only", s.Name, port.HostIP, port.Published)
			}
		}
		for _, v := range s.Volumes {
			if v.Type == types.VolumeTypeBind && !v.ReadOnly {
				t.Errorf("%s mounts %s writable", s.Name, v.Source)
			}
		}
	}
	published := func(s types.ServiceConfig) string {
		if len(s.Ports) != 1 {
			t.Fatalf("%s publishes %+v, want one port", s.Name, s.Ports)
		}
		return s.Ports[0].Published
	}
	if published(prom) != "9090" || published(graf) != "3000" {
		t.Errorf("published ports %s and %s, want 9090 and 3000 by default", published(prom), published(graf))
	}
	moved := loadComposeProfiles(t, []string{"observability"}, "NATTER_PROMETHEUS_PORT=19090", "NATTER_GRAFANA_PORT=13000")
	if published(moved.Services["prometheus"]) != "19090" || published(moved.Services["grafana"]) != "13000" {
		t.Errorf("NATTER_PROMETHEUS_PORT and NATTER_GRAFANA_PORT do not move the ports")
	}
	// Anonymous viewers, and an admin whose password is .env's, not
	// Grafana's default (admin), which its login API would take.
	for k, want := range map[string]string{"GF_AUTH_ANONYMOUS_ENABLED": "true", "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
		"GF_AUTH_BASIC_ENABLED": "false", "GF_SECURITY_ADMIN_PASSWORD": "dev-grafana-change-me"} {
		if v := graf.Environment[k]; v == nil || *v != want {
			t.Errorf("Grafana's %s is not %s", k, want)
		}
	}

	// hostPath maps a path inside a container to the repository's file
	// that a bind mount puts there.
	hostPath := func(s types.ServiceConfig, inside string) string {
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeBind {
				continue
			}
			if rel, err := filepath.Rel(v.Target, inside); err == nil && !strings.HasPrefix(rel, "..") {
				return filepath.Join(v.Source, rel)
			}
		}
		t.Errorf("%s: nothing is mounted at %s", s.Name, inside)
		return ""
	}
	// Prometheus reads prometheus.yml and keeps its data in a volume.
	flag := func(s types.ServiceConfig, name string) string {
		for _, arg := range s.Command {
			if v, ok := strings.CutPrefix(arg, "--"+name+"="); ok {
				return v
			}
		}
		t.Errorf("%s runs %v, without --%s", s.Name, s.Command, name)
		return ""
	}
	if got := hostPath(prom, flag(prom, "config.file")); got != scrapePath {
		t.Errorf("Prometheus reads %s, want %s", got, scrapePath)
	}
	if data := flag(prom, "storage.tsdb.path"); !slices.ContainsFunc(prom.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == data
	}) {
		t.Errorf("Prometheus keeps its data in %s, which is no named volume", data)
	}
	env := func(s types.ServiceConfig, k string) string {
		if v := s.Environment[k]; v != nil {
			return *v
		}
		t.Errorf("%s has no %s", s.Name, k)
		return ""
	}
	// Grafana reads the provisioning folder of the repository, whose
	// provider loads the folder holding natter.json, and opens on it.
	if got := hostPath(graf, env(graf, "GF_PATHS_PROVISIONING")); got != filepath.Dir(filepath.Dir(providerPath)) {
		t.Errorf("Grafana's provisioning is %s, want %s", got, filepath.Dir(filepath.Dir(providerPath)))
	}
	if got := hostPath(graf, env(graf, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")); got != dashboardPath {
		t.Errorf("Grafana's home dashboard is %s, want %s", got, dashboardPath)
	}
	var providers struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	readYAML(t, providerPath, &providers)
	if len(providers.Providers) != 1 || providers.Providers[0].Type != "file" {
		t.Fatalf("%s: providers %+v, want one of type file", providerPath, providers.Providers)
	}
	if dir := hostPath(graf, providers.Providers[0].Options.Path); dir != filepath.Dir(dashboardPath) {
		t.Errorf("the dashboard provider loads %s, want %s", dir, filepath.Dir(dashboardPath))
	}
	// The data source is the profile's Prometheus, at its scrape
	// interval (the base of $__rate_interval).
	var ds struct {
		Datasources []struct {
			UID, Type, URL string
			IsDefault      bool `yaml:"isDefault"`
			JSONData       struct {
				TimeInterval string `yaml:"timeInterval"`
			} `yaml:"jsonData"`
		}
	}
	readYAML(t, datasourcePath, &ds)
	if len(ds.Datasources) != 1 {
		t.Fatalf("%s: %d data sources, want one", datasourcePath, len(ds.Datasources))
	}
	src := ds.Datasources[0]
	if src.Type != "prometheus" || !src.IsDefault || src.UID == "" {
		t.Errorf("data source %+v: want the default, of type prometheus, with a uid", src)
	}
	if want := "http://prometheus:9090"; src.URL != want {
		t.Errorf("data source URL %s, want %s (the prometheus service)", src.URL, want)
	}
	if interval := readScrapeConfig(t).Global.ScrapeInterval; src.JSONData.TimeInterval != interval {
		t.Errorf("data source timeInterval %q, want the scrape_interval %q", src.JSONData.TimeInterval, interval)
	}
}

// loadComposeProfiles is loadCompose with profiles enabled.
func loadComposeProfiles(t *testing.T, profiles []string, env ...string) *types.Project {
	t.Helper()
	// In the order docker compose applies them: the shell's variables
	// first, then .env for those the shell does not set.
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root), cli.WithEnv(env), cli.WithEnvFiles(), cli.WithDotEnv, cli.WithProfiles(profiles))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	if err != nil {
		t.Fatalf("docker compose v2 would refuse docker-compose.yml with profiles %v: %v", profiles, err)
	}
	return p
}

// scrapeConfig is the part of prometheus.yml the tests read.
type scrapeConfig struct {
	Global struct {
		ScrapeInterval string `yaml:"scrape_interval"`
	}
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		MetricsPath   string `yaml:"metrics_path"`
		Scheme        string
		StaticConfigs []struct {
			Targets []string
			Labels  map[string]string
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func readScrapeConfig(t *testing.T) scrapeConfig {
	t.Helper()
	var cfg scrapeConfig
	readYAML(t, scrapePath, &cfg)
	return cfg
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	if err := yaml.Unmarshal([]byte(readFile(t, path)), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// defaultHTTPAddr is the default of CHAT_HTTP_ADDR in a separate
// service's Config (services/<kind>/main.go).
func defaultHTTPAddr(t *testing.T, kind string) string {
	t.Helper()
	path := filepath.Join(root, "services", kind, "main.go")
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	addr := ""
	ast.Inspect(f, func(n ast.Node) bool {
		if field, ok := n.(*ast.Field); ok && field.Tag != nil {
			tag, _ := strconv.Unquote(field.Tag.Value)
			if st := reflect.StructTag(tag); st.Get("envconfig") == "HTTP_ADDR" {
				addr = st.Get("default")
			}
		}
		return true
	})
	if addr == "" {
		t.Fatalf("%s: no default of HTTP_ADDR", path)
	}
	return addr
}

// query is one panel target of the dashboard.
type query struct {
	panel       int
	title       string
	refID, expr string
	legend      string
}

// dsRef is a data source reference: {"type": …, "uid": …}.
type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panelJSON struct {
	ID         *int            `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID        string          `json:"refId"`
		Expr         string          `json:"expr"`
		LegendFormat string          `json:"legendFormat"`
		Datasource   json.RawMessage `json:"datasource"`
	} `json:"targets"`
	Panels []panelJSON `json:"panels"` // a collapsed row's
}

// readDashboard reads natter.json and checks what a Grafana import needs:
// a uid and title, no instance-local id, the current schema, unique panel
// ids, every panel placed on the grid, with a Prometheus data source that
// resolves (the datasource variable or the provisioned uid) and at least
// one query, each with a refId unique in its panel.
func readDashboard(t *testing.T) []query {
	t.Helper()
	var raw struct {
		UID           string          `json:"uid"`
		Title         string          `json:"title"`
		ID            json.RawMessage `json:"id"`
		SchemaVersion int             `json:"schemaVersion"`
		Panels        []panelJSON     `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(readFile(t, dashboardPath)), &raw); err != nil {
		t.Fatalf("%s is not a dashboard's JSON: %v", dashboardPath, err)
	}
	if raw.UID == "" || raw.Title == "" {
		t.Errorf("dashboard uid %q, title %q: want both", raw.UID, raw.Title)
	}
	if id := strings.TrimSpace(string(raw.ID)); id != "" && id != "null" {
		t.Errorf("dashboard id %s: an importable dashboard has id null", id)
	}
	if raw.SchemaVersion < 41 {
		t.Errorf("schemaVersion %d, want a current one (41 or later)", raw.SchemaVersion)
	}

	// The data sources a panel may name: the datasource variables of type
	// prometheus, and the provisioned data source.
	uids := map[string]bool{}
	for _, v := range raw.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			uids["$"+v.Name], uids["${"+v.Name+"}"] = true, true
		}
	}
	var ds struct{ Datasources []struct{ UID string } }
	readYAML(t, datasourcePath, &ds)
	for _, s := range ds.Datasources {
		uids[s.UID] = true
	}
	resolves := func(r json.RawMessage) (string, error) {
		var ref dsRef
		if err := json.Unmarshal(r, &ref); err != nil {
			return "", fmt.Errorf("data source %s is not a {type, uid} reference", strings.Join(strings.Fields(string(r)), " "))
		}
		if ref.Type != "prometheus" || !uids[ref.UID] {
			return "", fmt.Errorf("data source {type %q, uid %q} is none of the prometheus ones: %v", ref.Type, ref.UID, slices.Sorted(maps.Keys(uids)))
		}
		return ref.UID, nil
	}

	var queries []query
	ids := map[int]string{}
	var walk func(panels []panelJSON)
	walk = func(panels []panelJSON) {
		for _, p := range panels {
			name := fmt.Sprintf("panel %q", p.Title)
			if p.ID == nil {
				t.Errorf("%s has no id", name)
				continue
			}
			if other, ok := ids[*p.ID]; ok {
				t.Errorf("%s and panel %q share the id %d", name, other, *p.ID)
			}
			ids[*p.ID] = p.Title
			if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
				t.Errorf("%s is not on the grid: %+v", name, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			uid, err := resolves(p.Datasource)
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s has no query", name)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q missing or repeated", name, tg.RefID)
				}
				refs[tg.RefID] = true
				if len(tg.Datasource) > 0 && err == nil {
					if tuid, terr := resolves(tg.Datasource); terr != nil {
						t.Errorf("%s, query %s: %v", name, tg.RefID, terr)
					} else if tuid != uid {
						t.Errorf("%s, query %s: data source %q, the panel's is %q", name, tg.RefID, tuid, uid)
					}
				}
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s, query %s: no expr", name, tg.RefID)
					continue
				}
				queries = append(queries, query{panel: *p.ID, title: p.Title, refID: tg.RefID, expr: tg.Expr, legend: tg.LegendFormat})
			}
		}
	}
	walk(raw.Panels)
	if len(queries) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return queries
}

// selector is a vector selector of a query: its metric and the labels it
// matches on.
type selector struct {
	name   string
	labels []string
}

// byClause is an aggregation's by (…) and the selectors under it.
type byClause struct {
	labels []string
	sels   []selector
}

// grafanaVariables are Grafana's built-in variables a query may use, with
// a value of the right kind for parsing.
var grafanaVariables = strings.NewReplacer(
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__interval}", "1m", "$__interval", "1m",
	"${__range}", "1h", "$__range", "1h",
)

// promqlFunctions are PromQL's functions and aggregation operators
// (Prometheus 3): the parser below reads MetricsQL, a superset, so a
// function PromQL lacks is refused here.
var promqlFunctions = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`abs absent absent_over_time acos acosh asin asinh atan atanh
		avg_over_time ceil changes clamp clamp_max clamp_min cos cosh count_over_time day_of_month
		day_of_week day_of_year days_in_month deg delta deriv double_exponential_smoothing exp floor
		histogram_avg histogram_count histogram_fraction histogram_quantile histogram_stddev
		histogram_stdvar histogram_sum hour idelta increase info irate label_join label_replace
		last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
		predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin sinh
		sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time stdvar_over_time
		sum_over_time tan tanh time timestamp vector year
		sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio`) {
		promqlFunctions[f] = true
	}
}

// parseQuery parses a dashboard query, with Grafana's built-in variables
// given values, and returns its vector selectors and by clauses.
//
// The parser is github.com/VictoriaMetrics/metricsql, not Prometheus's
// own promql/parser: that one lives in the prometheus/prometheus module,
// whose requirements would raise versions in the whole workspace (among
// them gorilla/websocket, which the edge serves with, to an untagged
// commit that changes the upgrade). MetricsQL reads every PromQL
// query; what it accepts beyond PromQL (functions PromQL lacks, rate()
// without a range, WITH templates, limit, keep_metric_names, or-filters)
// is refused here.
func parseQuery(expr string) ([]selector, []byClause, error) {
	q := grafanaVariables.Replace(expr)
	if i := strings.Index(q, "$"); i >= 0 {
		return nil, nil, fmt.Errorf("a variable the dashboard does not define: %s", q[i:])
	}
	if regexp.MustCompile(`(?i)^\s*with\s*\(`).MatchString(q) {
		return nil, nil, fmt.Errorf("WITH templates are MetricsQL, not PromQL")
	}
	e, err := metricsql.Parse(q)
	if err != nil {
		return nil, nil, err
	}
	var problems []string
	selectorsIn := func(e metricsql.Expr) []selector {
		var sels []selector
		metricsql.VisitAll(e, func(x metricsql.Expr) {
			me, ok := x.(*metricsql.MetricExpr)
			if !ok {
				return
			}
			if len(me.LabelFilterss) != 1 {
				problems = append(problems, "or-filters in a selector are MetricsQL, not PromQL")
				return
			}
			var s selector
			for _, lf := range me.LabelFilterss[0] {
				if lf.Label == "__name__" && !lf.IsRegexp && !lf.IsNegative {
					s.name = lf.Value
				} else if lf.Label != "__name__" {
					s.labels = append(s.labels, lf.Label)
				}
			}
			if s.name == "" {
				problems = append(problems, fmt.Sprintf("selector %s names no metric plainly, so it cannot be checked", me.AppendString(nil)))
				return
			}
			sels = append(sels, s)
		})
		return sels
	}
	sels := selectorsIn(e)
	var bys []byClause
	metricsql.VisitAll(e, func(x metricsql.Expr) {
		switch x := x.(type) {
		case *metricsql.AggrFuncExpr:
			if !promqlFunctions[strings.ToLower(x.Name)] {
				problems = append(problems, fmt.Sprintf("%s is no PromQL aggregation", x.Name))
			}
			if x.Limit != 0 {
				problems = append(problems, "limit is MetricsQL, not PromQL")
			}
			if strings.EqualFold(x.Modifier.Op, "by") {
				var b byClause
				for _, a := range x.Args {
					b.sels = append(b.sels, selectorsIn(a)...)
				}
				b.labels = x.Modifier.Args
				bys = append(bys, b)
			}
		case *metricsql.FuncExpr:
			name := strings.ToLower(x.Name)
			if !promqlFunctions[name] {
				problems = append(problems, fmt.Sprintf("%s is no PromQL function", x.Name))
			}
			if x.KeepMetricNames {
				problems = append(problems, "keep_metric_names is MetricsQL, not PromQL")
			}
			// A function over a range needs the range written out.
			if i := metricsql.GetRollupArgIdx(x); i >= 0 && i < len(x.Args) && name != "timestamp" {
				if re, ok := x.Args[i].(*metricsql.RollupExpr); !ok || re.Window == nil {
					problems = append(problems, fmt.Sprintf("%s needs a range vector, as in %s(x[5m])", x.Name, x.Name))
				}
			}
		}
	})
	if len(problems) > 0 {
		return nil, nil, fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return sels, bys, nil
}

// parseQuery reads PromQL, and refuses what only MetricsQL accepts.
func TestParseQuery(t *testing.T) {
	for _, tt := range []struct {
		expr, sels, bys, err string
	}{
		{expr: `histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="edge"}[$__rate_interval])))`, sels: "a_bucket[job]", bys: "le: a_bucket[job]"},
		{expr: `sum by (instance) (rate(a[5m])) / on (instance) group_left b`, sels: "a[] b[]", bys: "instance: a[]"},
		{expr: `max by (instance) (a) == 1`, sels: "a[]", bys: "instance: a[]"},
		{expr: `rate(a)`, err: "needs a range vector"},
		{expr: `rate(sum(a))`, err: "needs a range vector"},
		{expr: `a{b="1" or c="2"}`, err: "or-filters"},
		{expr: `WITH (x = a) x`, err: "WITH"},
		{expr: `rollup_rate(a[5m])`, err: "no PromQL function"},
		{expr: `sum(a) limit 3`, err: "limit"},
		{expr: `abs(a) keep_metric_names`, err: "keep_metric_names"},
		{expr: `rate(a[$window])`, err: "variable"},
		{expr: `{__name__=~"a.*"}`, err: "names no metric"},
		{expr: `sum(rate(a[5m])`, err: "unexpected"},
	} {
		sels, bys, err := parseQuery(tt.expr)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s: error %v, want one saying %q", tt.expr, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.expr, err)
			continue
		}
		str := func(ss []selector) string {
			var out []string
			for _, s := range ss {
				out = append(out, s.name+"["+strings.Join(s.labels, ",")+"]")
			}
			return strings.Join(out, " ")
		}
		var gotBys []string
		for _, b := range bys {
			gotBys = append(gotBys, strings.Join(b.labels, ",")+": "+str(b.sels))
		}
		if str(sels) != tt.sels || strings.Join(gotBys, "; ") != tt.bys {
			t.Errorf("%s: selectors %q, by %q; want %q, %q", tt.expr, str(sels), gotBys, tt.sels, tt.bys)
		}
	}
}

// processes is natter as processes on this machine: the single binary,
// with its embedded NATS, and the three separate services against that
// NATS; so an edge, a presence replica and a broadcaster twice.
type processes struct {
	natsURL string
	// addrs are the HTTP addresses by binary: chat, edge, presence,
	// broadcaster.
	addrs map[string]string
}

// startProcesses builds the single binary and the three separate services
// and starts them; they stop when the test ends.
func startProcesses(t *testing.T) processes {
	t.Helper()
	bin := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// One build of the four: they share most packages. Without -race,
	// even when the tests run with it: only what they expose matters.
	// .ci/run builds the same first, so that this one hits the cache.
	build := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-o", bin+string(filepath.Separator),
		"./services/chat", "./services/edge", "./services/presence", "./services/broadcaster")
	build.Dir = root
	build.Env = append(os.Environ(), "GOWORK="+filepath.Join(root, "go.work"), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	chatLogs := startBinary(t, filepath.Join(bin, "chat"),
		"CHAT_HTTP_ADDR=127.0.0.1:0", "CHAT_NATS_ADDR=127.0.0.1:0", "CHAT_DATA_DIR="+filepath.Join(t.TempDir(), "data"))
	natsURL := "nats://" + chatLogs.Await(t, "nats", 30*time.Second)
	addrs := map[string]string{"chat": chatLogs.Await(t, "http", 30*time.Second)}
	for _, name := range []string{"edge", "presence", "broadcaster"} {
		logs := startBinary(t, filepath.Join(bin, name), "CHAT_HTTP_ADDR=127.0.0.1:0", "CHAT_NATS_URL="+natsURL)
		addrs[name] = logs.Await(t, "http", 30*time.Second)
	}
	return processes{natsURL: natsURL, addrs: addrs}
}

// scrapeBinaries scrapes each /metrics of ps once and returns every
// series name a query may use with the label names its series carry.
func scrapeBinaries(t *testing.T, ps processes) map[string]map[string]bool {
	t.Helper()
	addrs := ps.addrs

	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	series := map[string]map[string]bool{}
	add := func(name string, labels map[string]bool, extra ...string) {
		if series[name] == nil {
			series[name] = map[string]bool{}
		}
		maps.Copy(series[name], labels)
		for _, l := range extra {
			series[name][l] = true
		}
	}
	for _, name := range slices.Sorted(maps.Keys(addrs)) {
		mfs := scrape(t, client, name, "http://"+addrs[name]+"/metrics")
		for family, mf := range mfs {
			labels := map[string]bool{}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					labels[l.GetName()] = true
				}
			}
			switch mf.GetType() {
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				add(family+"_bucket", labels, "le")
				add(family+"_sum", labels)
				add(family+"_count", labels)
			case dto.MetricType_SUMMARY:
				add(family, labels, "quantile")
				add(family+"_sum", labels)
				add(family+"_count", labels)
			default:
				add(family, labels)
			}
		}
	}
	return series
}

// scrape reads one /metrics in the text format, polling until it answers
// (a process serves once it is ready) or 30 s have passed.
func scrape(t *testing.T, client *http.Client, name, url string) map[string]*dto.MetricFamily {
	t.Helper()
	var mfs map[string]*dto.MetricFamily
	var err error
	if !servicetest.Poll(30*time.Second, func() bool {
		mfs, err = func() (map[string]*dto.MetricFamily, error) {
			req, err := http.NewRequest(http.MethodGet, url, nil)
			if err != nil {
				return nil, err
			}
			req.Header.Set("Accept", "text/plain;version=0.0.4")
			resp, err := client.Do(req)
			if err != nil {
				return nil, err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
			}
			p := expfmt.NewTextParser(model.UTF8Validation)
			return p.TextToMetricFamilies(resp.Body)
		}()
		return err == nil
	}) {
		t.Fatalf("%s: %v", name, err)
	}
	return mfs
}

// startBinary starts a natter binary with env over the test's environment
// less its CHAT_ variables, its log collected; when the test ends it gets
// SIGTERM and is waited for (killed after 20 s), and a process that did
// not exit cleanly fails the test.
func startBinary(t *testing.T, path string, env ...string) *logwatch.Watch {
	t.Helper()
	logs := logwatch.New()
	cmd := exec.Command(path)
	cmd.Dir = t.TempDir()
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHAT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(path)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s after SIGTERM: %v\n%s", name, err, logs.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit within 20 s of SIGTERM\n%s", name, logs.String())
		}
	})
	return logs
}
