package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// series is one line of a chart.
type series struct {
	name string
	xy   plotter.XYs
	fit  *drift // drawn dashed over its window
}

// chart is one PNG: a title, a unit and its lines, over minutes of the run.
type chart struct {
	file, title, unit string
	lines             []series
}

// redraw draws the charts of a samples file again, the drift fitted
// as a run would.
func redraw(prefix string, every, fit, warmup time.Duration) ([]string, error) {
	data, err := os.ReadFile(prefix + ".jsonl")
	if err != nil {
		return nil, err
	}
	var samples []sample
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var s sample
		if err := json.Unmarshal(line, &s); err != nil {
			return nil, fmt.Errorf("%s.jsonl: %w", prefix, err)
		}
		samples = append(samples, s)
	}
	if len(samples) == 0 {
		return nil, fmt.Errorf("%s.jsonl: no samples", prefix)
	}
	from, to := fitWindow(samples[len(samples)-1].T, fit, warmup)
	return charts(prefix, every, samples, drifts(samples, from, to))
}

// charts draws the samples into PNGs named prefix-<file>.png and returns
// their file names.
func charts(prefix string, every time.Duration, samples []sample, ds []drift) ([]string, error) {
	minutes := func(s sample) float64 { return s.T / 60 }
	var names []string
	if len(samples) > 0 {
		for _, p := range samples[0].Procs {
			names = append(names, p.Name)
		}
	}
	fitOf := func(proc, ser string) *drift {
		for i := range ds {
			if ds[i].Proc == proc && ds[i].Series == ser {
				return &ds[i]
			}
		}
		return nil
	}
	perProc := func(file, title, unit, ser string, scale float64, get func(procSample) float64) chart {
		c := chart{file: file, title: title, unit: unit}
		for i, name := range names {
			l := series{name: name, fit: fitOf(name, ser)}
			for _, s := range samples {
				if i < len(s.Procs) {
					l.xy = append(l.xy, plotter.XY{X: minutes(s), Y: get(s.Procs[i]) / scale})
				}
			}
			if l.fit != nil {
				f := *l.fit
				f.Slope, f.Intercept = f.Slope/scale, f.Intercept/scale
				l.fit = &f
			}
			c.lines = append(c.lines, l)
		}
		return c
	}
	gen := func(name string, get func(sample) float64) series {
		l := series{name: name}
		for _, s := range samples {
			l.xy = append(l.xy, plotter.XY{X: minutes(s), Y: get(s)})
		}
		return l
	}
	all := []chart{
		perProc("rss", "Resident memory (RSS)", "MiB", "rss", 1<<20, func(p procSample) float64 { return float64(p.RSS) }),
		perProc("goroutines", "Goroutines", "goroutines", "goroutines", 1, func(p procSample) float64 { return float64(p.Goroutines) }),
		perProc("fds", "Open files", "files", "fds", 1, func(p procSample) float64 { return float64(p.FDs) }),
		{file: "p99", title: fmt.Sprintf("Delivery latency over each %s", every), unit: "ms", lines: []series{
			gen("p99, send to receive", func(s sample) float64 { return s.Gen.P99ms }),
			gen("p50, send to receive", func(s sample) float64 { return s.Gen.P50ms }),
			gen("p99 in the edges (bucket bound)", func(s sample) float64 { return s.Edges.P99ms }),
		}},
		{file: "load", title: "Live room deliveries", unit: "thousands a second", lines: []series{
			gen("received", func(s sample) float64 { return s.Gen.PerSec / 1000 }),
		}},
		{file: "queue", title: "Edge send queues (a client is cut off past 512)", unit: "events per client", lines: []series{
			gen("the most one client has (send_queue_max)", func(s sample) float64 { return float64(s.Edges.SendQueueMax) }),
			gen("the mean (send_queue / connections)", func(s sample) float64 {
				return float64(s.Edges.SendQueue) / float64(max(s.Edges.Connections, 1))
			}),
		}},
		{file: "streams", title: "JetStream streams", unit: "MiB", lines: []series{
			gen("CHAT", func(s sample) float64 { return float64(s.Streams["CHAT"].Bytes) / (1 << 20) }),
			gen("CHAT_DM", func(s sample) float64 { return float64(s.Streams["CHAT_DM"].Bytes) / (1 << 20) }),
		}},
	}
	cpu := chart{file: "cpu", title: "CPU", unit: "cores"}
	for i, name := range names {
		l := series{name: name}
		for _, s := range samples {
			if i < len(s.Procs) {
				l.xy = append(l.xy, plotter.XY{X: minutes(s), Y: s.Procs[i].CPU})
			}
		}
		cpu.lines = append(cpu.lines, l)
	}
	cpu.lines = append(cpu.lines, gen("generator", func(s sample) float64 { return s.Gen.CPU }))
	all = append(all, cpu)

	var files []string
	for _, c := range all {
		path := prefix + "-" + c.file + ".png"
		if err := c.draw(path); err != nil {
			return files, fmt.Errorf("chart %s: %w", c.file, err)
		}
		files = append(files, filepath.Base(path))
	}
	return files, nil
}

func (c chart) draw(path string) error {
	p := plot.New()
	p.Title.Text = c.title
	p.X.Label.Text = "minutes"
	p.Y.Label.Text = c.unit
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	for i, s := range c.lines {
		if len(s.xy) == 0 {
			continue
		}
		l, err := plotter.NewLine(s.xy)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(s.name, l)
		if f := s.fit; f != nil && f.Samples >= 2 {
			fl, err := plotter.NewLine(plotter.XYs{
				{X: f.From / 60, Y: f.Slope*f.From + f.Intercept},
				{X: f.To / 60, Y: f.Slope*f.To + f.Intercept},
			})
			if err != nil {
				return err
			}
			fl.Color = plotutil.Color(i)
			fl.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			p.Add(fl)
		}
	}
	// Room above the lines for the legend, at the top left.
	if p.Y.Max > 0 {
		p.Y.Max *= 1.1 + 0.08*float64(len(c.lines))
	}
	return p.Save(8*vg.Inch, 3*vg.Inch, path)
}
