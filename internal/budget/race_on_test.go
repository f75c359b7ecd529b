//go:build race

package budget

// raceEnabled: the race detector slows everything down several times;
// timing bounds are relaxed under it.
const raceEnabled = true
