package main

import (
	"fmt"
	"math"
	"time"
)

// drift is the least-squares slope of one series over the fit window, as
// a percentage of its mean per 10 minutes.
type drift struct {
	Proc      string  `json:"proc"`
	Series    string  `json:"series"` // rss, goroutines, fds
	Samples   int     `json:"samples"`
	From, To  float64 `json:"-"` // seconds: the window
	Mean      float64 `json:"mean"`
	Slope     float64 `json:"slope_per_s"` // units a second
	Intercept float64 `json:"-"`
	Pct10m    float64 `json:"pct_per_10m"`
	Pass      bool    `json:"pass"`
}

// maxDriftPct is the pass rule: no series may grow by 1% of its mean or
// more per 10 minutes.
const maxDriftPct = 1.0

// fitWindow is the part of the run the slopes are fitted over: the last
// fit, but never the first warm-up (capped at a third of the run: the
// connect, the streams and caches filling, the heap finding its size).
func fitWindow(end float64, fit, warmup time.Duration) (from, to float64) {
	skip := min(warmup.Seconds(), end/3)
	return max(end-fit.Seconds(), skip), end
}

// drifts fits RSS, goroutines and open files of every process.
func drifts(samples []sample, from, to float64) []drift {
	var names []string
	if len(samples) > 0 {
		for _, p := range samples[0].Procs {
			names = append(names, p.Name)
		}
	}
	var out []drift
	for i, name := range names {
		for _, series := range []string{"rss", "goroutines", "fds"} {
			var xs, ys []float64
			for _, s := range samples {
				if s.T < from || s.T > to || i >= len(s.Procs) || s.Procs[i].Name != name {
					continue
				}
				p := s.Procs[i]
				var y float64
				switch series {
				case "rss":
					y = float64(p.RSS)
				case "goroutines":
					y = float64(p.Goroutines)
				case "fds":
					y = float64(p.FDs)
				}
				xs, ys = append(xs, s.T), append(ys, y)
			}
			d := drift{Proc: name, Series: series, Samples: len(xs), From: from, To: to}
			d.Slope, d.Intercept, d.Mean = leastSquares(xs, ys)
			if d.Mean == 0 {
				continue // not measured: the NATS server has no goroutine count
			}
			d.Pct10m = 100 * d.Slope * 600 / d.Mean
			// A count (goroutines, files) of a small process cannot grow by
			// 1% of itself: presence holds 13 files, and one more half-way
			// through fits as 3% per 10 minutes. One step of one fits as a
			// growth of at most 1.5 over the window: such a count drifts
			// only if the fit has it grow by 2 or more.
			small := series != "rss" && d.Slope*(to-from) < 2
			d.Pass = len(xs) >= 3 && (d.Pct10m < maxDriftPct || small)
			out = append(out, d)
		}
	}
	return out
}

// leastSquares fits y = slope*x + intercept.
func leastSquares(xs, ys []float64) (slope, intercept, mean float64) {
	n := float64(len(xs))
	if n == 0 {
		return 0, 0, 0
	}
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	mx, my = mx/n, my/n
	var sxy, sxx float64
	for i := range xs {
		sxy += (xs[i] - mx) * (ys[i] - my)
		sxx += (xs[i] - mx) * (xs[i] - mx)
	}
	if sxx == 0 {
		return 0, my, my
	}
	slope = sxy / sxx
	return slope, my - slope*mx, my
}

// verdict is the run's pass or fail, with every reason to fail.
func verdict(ds []drift, r checkResult) (bool, []string) {
	var why []string
	for _, d := range ds {
		if !d.Pass {
			if d.Samples < 3 {
				why = append(why, fmt.Sprintf("%s %s: %d samples, too few to fit", d.Proc, d.Series, d.Samples))
			} else {
				why = append(why, fmt.Sprintf("%s %s grows %.2f%% of its mean per 10 min", d.Proc, d.Series, d.Pct10m))
			}
		}
	}
	if r.Lost > 0 {
		why = append(why, fmt.Sprintf("%d acked room deliveries lost", r.Lost))
	}
	if r.DMLost > 0 {
		why = append(why, fmt.Sprintf("%d acked dm deliveries lost", r.DMLost))
	}
	if r.Expected == 0 {
		why = append(why, "nothing was expected: no load ran")
	}
	return len(why) == 0, why
}

// fmtPct formats a drift for tables.
func fmtPct(v float64) string {
	if math.Abs(v) < 0.005 {
		return "0.00%"
	}
	return fmt.Sprintf("%+.2f%%", v)
}
