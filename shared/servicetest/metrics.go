package servicetest

import (
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape gets /metrics from the service on addr (host:port) and parses
// the text exposition, as Prometheus would read it.
func Scrape(t *testing.T, addr string) Metrics {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	return mfs
}

// Metrics are the metric families of one scrape, by name.
type Metrics map[string]*dto.MetricFamily

// Histogram returns the count and sum of the histogram name, summed over
// its labels; ok is false when the scrape has no histogram of that name.
func (ms Metrics) Histogram(name string) (count uint64, sum float64, ok bool) {
	mf := ms[name]
	if mf == nil || mf.GetType() != dto.MetricType_HISTOGRAM {
		return 0, 0, false
	}
	for _, m := range mf.GetMetric() {
		count += m.GetHistogram().GetSampleCount()
		sum += m.GetHistogram().GetSampleSum()
	}
	return count, sum, true
}
