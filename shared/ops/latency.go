package ops

// LatencyBuckets are the upper bounds, in seconds, of natter's latency
// histograms: from half a millisecond (a post acked by a local NATS, a
// message delivered within the edge's write delay) to ten seconds (a
// store that hangs until its timeout, a slow client's write).
// Every histogram uses the same ones, so that a dashboard can put them
// side by side. Callers must not change the slice.
var LatencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
