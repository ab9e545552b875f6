//go:build !race

package membership_test

const raceDetector = false
