package presence

import "github.com/prometheus/client_golang/prometheus"

// metrics are the presence service's measures; docs/operations.md lists them.
type metrics struct {
	active        prometheus.Gauge
	edges         prometheus.Gauge
	pairs         prometheus.Gauge
	rooms         prometheus.Gauge
	events        prometheus.Counter
	suppressed    prometheus.Counter
	syncs         *prometheus.CounterVec
	expired       prometheus.Counter
	who           prometheus.Counter
	bad           prometheus.Counter
	writeFailures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_presence_active", Help: "1 while this replica is the one announcing presence and answering who."}),
		edges: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_presence_edges", Help: "Edges known (heard from in the last 15 s)."}),
		pairs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_presence_session_rooms", Help: "Session-room pairs held, over all edges."}),
		rooms: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_presence_rooms", Help: "Rooms with at least one user present."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_events_total", Help: "Presence events (joins and leaves) published."}),
		suppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_events_suppressed_total", Help: "Presence changes not announced because the room has more than CHAT_PRESENCE_MAX_MEMBERS users."}),
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_presence_syncs_total", Help: "Full-state syncs with an edge, by result (done, failed)."}, []string{"result"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_edges_expired_total", Help: "Edges that stopped sending heartbeats while they held sessions."}),
		who: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_who_total", Help: "who requests answered."}),
		bad: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_bad_messages_total", Help: "Malformed session reports and heartbeats ignored."}),
		writeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_presence_write_failures_total", Help: "Writes of the announced state to the key-value bucket that failed (retried)."}),
	}
	for _, c := range []prometheus.Collector{m.active, m.edges, m.pairs, m.rooms, m.events, m.suppressed,
		m.syncs, m.expired, m.who, m.bad, m.writeFailures} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Both results start at zero, so that a fresh process exposes them
	// and rate() has a zero to start from.
	for _, result := range []string{"done", "failed"} {
		m.syncs.WithLabelValues(result)
	}
	return m, nil
}
