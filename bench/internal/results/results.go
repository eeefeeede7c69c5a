// Package results holds what the benchmarks under bench/ share: summary
// statistics of repeated measurements and the facts a results file records
// about the run (settings, PostgreSQL version, source revision).
package results

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

// Stats summarises repeated measurements in seconds.
type Stats struct {
	RunsSeconds []float64 `json:"runs_seconds"`
	Median      float64   `json:"median_seconds"`
	Min         float64   `json:"min_seconds"`
	Max         float64   `json:"max_seconds"`
	Stdev       float64   `json:"stdev_seconds"`
}

// Summarize computes median, range and (population) standard deviation.
func Summarize(xs []float64) Stats {
	s := Stats{RunsSeconds: xs}
	sorted := append([]float64(nil), xs...)
	sort.Float64s(sorted)
	n := len(sorted)
	if n == 0 {
		return s
	}
	s.Min, s.Max = sorted[0], sorted[n-1]
	if n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	var mean, sq float64
	for _, x := range xs {
		mean += x
	}
	mean /= float64(n)
	for _, x := range xs {
		sq += (x - mean) * (x - mean)
	}
	s.Stdev = math.Sqrt(sq / float64(n))
	return s
}

// Setting reads a top-level "key: value" from a member's YAML
// configuration, "?" when absent.
func Setting(yaml []byte, key string) string {
	for _, line := range strings.Split(string(yaml), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// PGVersion is the newest installed PostgreSQL major version, "?" if none.
func PGVersion() string {
	b, err := exec.Command("sh", "-c", "ls -d /usr/lib/postgresql/*/ | sort -V | tail -1").Output()
	if err != nil {
		return "?"
	}
	return filepath.Base(strings.TrimSpace(string(b)))
}

// Floats prints measurements with the given number of decimals.
func Floats(xs []float64, decimals int) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.*f", decimals, x))
	}
	return strings.Join(parts, " ")
}

// GitSource names the code measured: the commit, and whether the working
// tree had uncommitted changes when the binary was built.
func GitSource() string {
	b, err := exec.Command("git", "describe", "--always", "--dirty", "--abbrev=12").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// WriteJSON writes v, indented, to dir/name (creating dir).
func WriteJSON(dir, name string, v any) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644)
}

// Machine describes the machine a benchmark ran on: CPUs, OS/architecture
// and PostgreSQL's version.
func Machine() map[string]string {
	return map[string]string{"cpus": strconv.Itoa(runtime.NumCPU()), "os": runtime.GOOS + "/" + runtime.GOARCH, "postgres": PGVersion()}
}
