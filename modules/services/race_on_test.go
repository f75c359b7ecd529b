//go:build race

package services

// raceEnabled: the race detector slows the test process several times;
// timing bounds are relaxed under it.
const raceEnabled = true
