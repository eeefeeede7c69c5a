//go:build race

package agent

// raceBuild: the race detector slows the simulations several times over;
// they run fewer seeds under it (the plain `go test` runs all of them).
const raceBuild = true
