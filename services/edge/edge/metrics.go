package edge

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/natter-chat/natter/services/edge/ws"
	"github.com/natter-chat/natter/shared/ops"
	"github.com/natter-chat/natter/shared/proto"
)

// metrics are the edge's counters; docs/operations.md lists them.
type metrics struct {
	connections prometheus.Gauge
	roomSubs    prometheus.Gauge
	userSubs    prometheus.Gauge
	refused     *prometheus.CounterVec
	handshakes  *prometheus.CounterVec
	framesIn    prometheus.Counter
	framesOut   prometheus.Counter
	posted      prometheus.Counter
	delivered   prometheus.Counter
	slowClients prometheus.Counter
	errors      *prometheus.CounterVec
	reports     prometheus.Counter
	gaps        prometheus.Counter
	gapFailures prometheus.Counter
	replays     *prometheus.CounterVec
	uploads     *prometheus.CounterVec

	// Latency histograms (ops.LatencyBuckets); where each is observed is
	// in its help and in docs/operations.md.
	post      prometheus.Histogram
	delivery  prometheus.Histogram
	replay    prometheus.Histogram
	handshake prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_edge_connections", Help: "Open WebSocket connections."}),
		roomSubs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_edge_room_subscriptions", Help: "NATS room subscriptions held (rooms with local members)."}),
		userSubs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "natter_edge_user_subscriptions", Help: "Users with local sessions whose dms the edge subscribes to (two NATS subscriptions each)."}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_edge_upgrades_refused_total", Help: "WebSocket upgrades and file uploads refused at admission, by reason."}, []string{"reason"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_edge_handshakes_total", Help: "Connections by who read their request: edge (a plain WebSocket request, answered by the edge) or http (handed to net/http)."}, []string{"by"}),
		framesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_frames_received_total", Help: "Text frames received from clients."}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_frames_sent_total", Help: "Frames written to clients (each may coalesce several events)."}),
		posted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_messages_posted_total", Help: "Messages from clients stored by the broadcasters."}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_messages_delivered_total", Help: "Live events (room messages, dms, presence changes, typing) queued to clients."}),
		slowClients: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_slow_clients_total", Help: "Clients cut off because their send queue was full."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_edge_errors_total", Help: "Error events sent to clients, by code."}, []string{"code"}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_presence_reports_failed_total", Help: "Presence reports, heartbeats and sync pages that could not be published (presence recovers them by a sync)."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_gaps_repaired_total", Help: "Gaps on the live path (messages or dms a subscription missed) filled from the stream."}),
		gapFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natter_edge_gaps_failed_total", Help: "Gaps that could not be read from the stream; the members missing them were closed to rejoin with since."}),
		replays: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_edge_replays_total", Help: "Joins with since, by where their replay came from: memory (the room's recent messages, kept by the edge) or stream."}, []string{"from"}),
		uploads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "natter_edge_file_uploads_total", Help: "File uploads (POST /files) by answer: 201, the status of a refusal after admission, or refused (at admission)."}, []string{"status"}),
		post: latency("natter_edge_post_seconds",
			"Posts (messages and dms) from the read of their frame to the broadcaster's answer (ack or refusal); the edge's own refusals and posts left unanswered are not observed."),
		delivery: latency("natter_edge_delivery_seconds",
			"Live room messages and dms from their ts (stored, Unix ms) to the write to a client that carries them: one observation per write, of the oldest one in it."),
		replay: latency("natter_edge_replay_seconds",
			"A join's since replay: its read from the room's recent messages or from the stream, and the stream's retention check."),
		handshake: latency("natter_edge_handshake_seconds",
			"WebSocket handshakes from the accepted connection to the 101 answer written."),
	}
	for _, c := range []prometheus.Collector{m.connections, m.roomSubs, m.userSubs, m.refused, m.handshakes, m.framesIn, m.framesOut,
		m.posted, m.delivered, m.slowClients, m.errors, m.reports, m.gaps, m.gapFailures, m.replays, m.uploads} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, h := range []prometheus.Collector{m.post, m.delivery, m.replay, m.handshake} {
		if err := reg.Register(h); err != nil {
			return nil, err
		}
	}
	// Every known label value starts at zero, so that a fresh process
	// exposes each series and rate() has a zero to start from.
	for _, reason := range []string{"origin", "address", "token", "user"} {
		m.refused.WithLabelValues(reason)
	}
	for _, by := range []string{"edge", "http"} {
		m.handshakes.WithLabelValues(by)
	}
	for _, from := range []string{"memory", "stream"} {
		m.replays.WithLabelValues(from)
	}
	for _, code := range []string{proto.CodeBadRequest, proto.CodeUnknownType, proto.CodeInvalidRoom, proto.CodeInvalidUser,
		proto.CodeNotJoined, proto.CodeTooLong, proto.CodeTooManyRooms, proto.CodeRateLimited, proto.CodeUnavailable} {
		m.errors.WithLabelValues(code)
	}
	return m, nil
}

// wire is what the WebSocket server counts and observes.
func (m *metrics) wire() ws.Metrics {
	return ws.Metrics{
		Answered:  m.handshakes.WithLabelValues("edge"),
		HandedOn:  m.handshakes.WithLabelValues("http"),
		FramesIn:  m.framesIn,
		FramesOut: m.framesOut,
		Handshake: m.handshake,
		Delivery:  m.delivery,
	}
}

// latency is a histogram of seconds with natter's latency buckets.
func latency(name, help string) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: ops.LatencyBuckets})
}
