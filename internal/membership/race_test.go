//go:build race

package membership_test

// raceDetector is on: the race detector slows everything down enough that
// timing assertions (a flood in this very process must not starve gossip)
// say nothing about the code.
const raceDetector = true
