package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// row is one run in the report: one generator's line, or the merged
// lines of a run's generators.
type row struct {
	result
	generators int
	lost       int64 // expected deliveries not received, summed per generator
}

// add merges another generator's line of the same run into the row.
// Counts add up; percentiles are read again from the merged histograms,
// since the parts' percentiles cannot be combined; the servers' figures
// come from the one generator that measured them.
func (w *row) add(r result) {
	w.generators++
	w.Conns += r.Conns
	w.Connected += r.Connected
	w.ConnectSeconds = max(w.ConnectSeconds, r.ConnectSeconds)
	w.Sent += r.Sent
	w.Expected += r.Expected
	w.Delivered += r.Delivered
	w.lost += max(r.Expected-r.Delivered, 0)
	w.DeliveriesPerSec += r.DeliveriesPerSec
	w.ExpectedPerSec += r.ExpectedPerSec
	w.Maxms = max(w.Maxms, r.Maxms)
	w.OwnCPU += r.OwnCPU
	w.MachineCPU = max(w.MachineCPU, r.MachineCPU) // one machine: each generator measured the same
	w.SoftIRQCPU = max(w.SoftIRQCPU, r.SoftIRQCPU)
	w.Closed += r.Closed
	w.Errors = append(w.Errors, r.Errors...)
	if w.Latency == nil {
		w.Latency = histogram{}
	}
	w.Latency.add(r.Latency)
	if r.ServerRSSMiB > 0 {
		w.ServerRSSMiB, w.ServerCPU, w.IdleRSSPerConnKiB = r.ServerRSSMiB, r.ServerCPU, r.IdleRSSPerConnKiB
		w.ConnectCPUus, w.Procs = r.ConnectCPUus, r.Procs
	}
	if w.ConnectSeconds > 0 {
		w.ConnectPerSec = float64(w.Connected) / w.ConnectSeconds
	}
	if w.Expected > 0 {
		w.LossPct = 100 * float64(w.lost) / float64(w.Expected)
	}
	w.P50ms, w.P90ms, w.P99ms = w.Latency.pct(50), w.Latency.pct(90), w.Latency.pct(99)
	if w.DeliveriesPerSec > 0 {
		w.CPUusPerDelivery = w.ServerCPU * 1e6 / w.DeliveriesPerSec
	}
}

// merge groups the lines of one run (the same scenario and -run-id) into
// one row, in the order of their first line.
func merge(runs []result) []*row {
	var rows []*row
	byRun := map[string]*row{}
	for _, r := range runs {
		key := r.Scenario + "\x00" + r.RunID
		if w := byRun[key]; w != nil && r.RunID != "" {
			w.add(r)
			continue
		}
		w := &row{result: r, generators: 1, lost: max(r.Expected-r.Delivered, 0)}
		if r.RunID != "" {
			byRun[key] = w
		}
		rows = append(rows, w)
	}
	return rows
}

// printReport writes the runs of a JSON-lines file as Markdown tables:
// one row a run, then each process of the runs that measured several.
func printReport(w io.Writer, path, command string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var runs []result
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r result
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		runs = append(runs, r)
	}
	if len(runs) == 0 {
		return fmt.Errorf("%s: no runs", path)
	}
	cpu := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	rows := merge(runs)
	fmt.Fprintf(w, "# Load runs, %s\n\n", runs[0].Time)
	fmt.Fprintf(w, "Command: `%s`. Machine: %s, %d cores; server on CPU 0, generator on CPU 1, GOMAXPROCS=1 for both (M-*: the compose mesh's ten containers on both cores, not measured here), unless a layout below says otherwise.\n\n", command, cpu, runtime.NumCPU())
	fmt.Fprintln(w, "| scenario | target | conns | room | pubs x rate | connect/s | idle KiB/conn | deliveries/s (expected) | loss % | p50 / p99 / max ms | server cores | server MiB | closed |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, r := range rows {
		room := strconv.Itoa(r.RoomSize)
		if r.NoJoin {
			room = "none"
		}
		conns := fmt.Sprintf("%d/%d", r.Connected, r.Conns)
		if r.Edges > 1 {
			conns += fmt.Sprintf(" over %d edges", r.Edges)
		}
		if r.generators > 1 {
			conns += fmt.Sprintf(", %d generators", r.generators)
		}
		pubs := fmt.Sprintf("%d x %g", r.Publishers*r.generators, r.Rate)
		idle, cores, mib := fmt.Sprintf("%.1f", r.IdleRSSPerConnKiB), fmt.Sprintf("%.2f", r.ServerCPU), fmt.Sprintf("%.0f", r.ServerRSSMiB)
		if r.ServerRSSMiB == 0 {
			idle, cores, mib = "–", "–", "–" // no server process measured (the compose mesh)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.0f | %s | %.0f (%.0f) | %.3f | %.1f / %.1f / %.1f | %s | %s | %d |\n",
			r.Scenario, r.Target, conns, room, pubs, r.ConnectPerSec, idle,
			r.DeliveriesPerSec, r.ExpectedPerSec, r.LossPct, r.P50ms, r.P99ms, r.Maxms, cores, mib, r.Closed)
		if r.Rejoin {
			fmt.Fprintf(w, "|  | (rejoin) | all back in %.2f s, %d recovered |  |  |  |  |  |  |  |  |  |  |\n", r.RejoinSeconds, r.Recovered)
		}
	}
	notes := map[string]bool{}
	for _, r := range rows {
		if r.Layout != "" && !notes[r.Scenario] {
			if len(notes) == 0 {
				fmt.Fprintln(w, "\nLayouts:")
			}
			notes[r.Scenario] = true
			fmt.Fprintf(w, "- %s: %s\n", r.Scenario, r.Layout)
		}
	}
	for _, r := range rows {
		if r.generators > 1 {
			fmt.Fprintln(w, "\nA run of several generators is one row: their deliveries and losses added up, their latencies merged in histograms of 1% buckets (percentiles within 0.5%), the connect rate all connections over the longest connect phase.")
			break
		}
	}
	printProcs(w, rows)
	return nil
}

// printProcs writes each process of the runs that measured several, with
// their sums.
func printProcs(w io.Writer, rows []*row) {
	header := false
	for _, r := range rows {
		if len(r.Procs) == 0 {
			continue
		}
		if !header {
			header = true
			fmt.Fprintln(w, "\nProcesses (an edge's figures per connection it holds, the others' per connection in all; CPU over the window):")
			fmt.Fprintln(w, "\n| scenario | process | conns | idle KiB/conn | connect µs/conn | idle MiB | window MiB | cores |")
			fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")
		}
		for _, p := range r.Procs {
			fmt.Fprintf(w, "| %s | %s | %d | %.1f | %.0f | %.0f | %.0f | %.2f |\n",
				r.Scenario, p.Name, p.Conns, p.IdleRSSPerConnKiB, p.ConnectCPUus, p.IdleRSSMiB, p.RSSMiB, p.CPU)
		}
		perDelivery := "–"
		if r.CPUusPerDelivery > 0 {
			perDelivery = fmt.Sprintf("%.2f µs CPU per delivery", r.CPUusPerDelivery)
		}
		fmt.Fprintf(w, "| %s | all servers | %d | %.1f | %.0f | | %.0f | %.2f (%s) |\n",
			r.Scenario, r.Connected, r.IdleRSSPerConnKiB, r.ConnectCPUus, r.ServerRSSMiB, r.ServerCPU, perDelivery)
		fmt.Fprintf(w, "| %s | generators (%d) | | | | | | %.2f |\n", r.Scenario, r.generators, r.OwnCPU)
		if r.MachineCPU > 0 {
			fmt.Fprintf(w, "| %s | the machine: busy (softirq; left for others) | | | | | | %.2f (%.2f; %.2f) |\n",
				r.Scenario, r.MachineCPU, r.SoftIRQCPU, max(r.MachineCPU-r.ServerCPU-r.OwnCPU-r.SoftIRQCPU, 0))
		}
	}
}
