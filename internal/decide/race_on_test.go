//go:build race

package decide

// raceBuild: the race detector slows these single-goroutine model runs
// several times over while having nothing to find in a pure function, so
// they run fewer seeds under it (the plain `go test` runs all of them).
const raceBuild = true
