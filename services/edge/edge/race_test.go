//go:build race

package edge

// raceEnabled: the race detector slows map- and hash-heavy tests tenfold.
const raceEnabled = true
