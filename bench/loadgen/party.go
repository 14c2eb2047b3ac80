package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Several generator processes of one run (-parties, past one process's
// 20,000 open files) meet at two points through files in a directory of
// the run's own (-sync): before the first connect, so that the one that
// measures the servers reads their memory before anyone connects, and
// once all are connected, so that all measure the idle memory and the
// window at the same moments, computed from the last to arrive.

// arrival is one generator's file at a meeting point.
type arrival struct {
	At    int64          `json:"at"`              // unix nanos
	Conns map[string]int `json:"conns,omitempty"` // connected, by endpoint name
}

// meet writes this generator's arrival at phase, in a file named for
// self (its pid), and returns everyone's once all parties have arrived.
func meet(dir, phase, self string, parties int, a arrival) ([]arrival, error) {
	if parties <= 1 {
		return []arrival{a}, nil
	}
	b, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	name := filepath.Join(dir, phase+"-"+self+".json")
	// Renamed into place, so that no one reads a file half written.
	if err := os.WriteFile(name+".tmp", b, 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(name+".tmp", name); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		files, err := filepath.Glob(filepath.Join(dir, phase+"-*.json"))
		if err != nil {
			return nil, err
		}
		if len(files) > parties {
			return nil, fmt.Errorf("%s: %d generators at %s, not %d: use a fresh -sync directory per run", dir, len(files), phase, parties)
		}
		if len(files) == parties {
			out := make([]arrival, 0, parties)
			for _, f := range files {
				var o arrival
				b, err := os.ReadFile(f)
				if err == nil {
					err = json.Unmarshal(b, &o)
				}
				if err != nil {
					return nil, fmt.Errorf("%s: %w", f, err)
				}
				out = append(out, o)
			}
			return out, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s: %d of %d generators at %s after 10 minutes", dir, len(files), parties, phase)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
