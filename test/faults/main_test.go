// Package faults is holdfast's fault-injection suite: every member runs on
// its own host (a Linux network namespace on a bridge), so partitions are
// real, and each scenario breaks a running cluster under a client workload
// (internal/workload), heals the fault, waits for the cluster to become
// healthy with no human step, and checks what the clients saw: acknowledged
// writes lost, split brain, unavailability, client errors. See
// docs/faults.md.
//
// It needs root, iproute2 and PostgreSQL, and skips with the reason
// otherwise. `go test ./test/faults` runs the CI subset;
// HOLDFAST_FAULTS=full runs every scenario and writes docs/faults-report.md
// (scripts/faults.sh).
package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// binaryDir is where TestMain builds holdfast for this test process.
func binaryDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("holdfast-faults-bin-%d", os.Getpid()))
}

// holdfastBin is the holdfast binary the suite runs: $HOLDFAST_FAULTS_BIN
// when set (a binary built elsewhere), else the one TestMain builds.
func holdfastBin() string {
	if b := os.Getenv("HOLDFAST_FAULTS_BIN"); b != "" {
		return b
	}
	return filepath.Join(binaryDir(), "holdfast")
}

func TestMain(m *testing.M) {
	// Build only where the suite can run; elsewhere every test skips.
	if netUnavailable() == "" && suiteSelection() != "off" && os.Getenv("HOLDFAST_FAULTS_BIN") == "" {
		dir := binaryDir()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		build := exec.Command("go", "build", "-o", holdfastBin(), "../../cmd/holdfast")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "build holdfast:", err)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// suiteSelection is HOLDFAST_FAULTS: "" (the CI subset), "full", or "off".
func suiteSelection() string {
	return strings.ToLower(strings.TrimSpace(os.Getenv("HOLDFAST_FAULTS")))
}

// logLevel is the agents' and the proxy's log level: "debug" when
// HOLDFAST_FAULTS_DEBUG is set (every failed store call, every question the
// proxy asks the primary, each decision's timing), else "info".
func logLevel() string {
	if os.Getenv("HOLDFAST_FAULTS_DEBUG") != "" {
		return "debug"
	}
	return "info"
}

// envList reads a comma-separated variable.
func envList(name string) []string {
	var out []string
	for _, s := range strings.Split(os.Getenv(name), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
