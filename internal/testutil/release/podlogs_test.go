//go:build linux

package release

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeKubectl answers `get pods` with one running member container and
// `logs`, by the count of its calls: a line then the end of the stream
// (a break while the container runs; the time of it in the file "first"),
// then, two seconds later, a failure without output (the container cannot
// be reached), then its arguments and a last line.
const fakeKubectl = `#!/bin/sh
dir=$(dirname "$0")
case " $* " in
*" get "*)
	echo '{"items":[{"metadata":{"name":"pg-0","uid":"u1"},"status":{"containerStatuses":[{"name":"holdfast","restartCount":0,"state":{"running":{}}}]}}]}'
	;;
*" logs "*)
	n=$(($(cat "$dir/calls" 2>/dev/null || echo 0) + 1))
	echo $n > "$dir/calls"
	case $n in
	1) echo "first stream"; date +%s > "$dir/first" ;;
	2) sleep 2; echo "unreachable" >&2; exit 1 ;;
	*) echo "resumed with: $*"; echo "last line"; exec sleep 60 ;;
	esac
	;;
esac
`

// TestPodLogsResumeABrokenStream: a stream that ends while its container
// still runs is followed again from where it broke, into the same file,
// and an attempt that failed does not move that point.
func TestPodLogsResumeABrokenStream(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "kubectl")
	if err := os.WriteFile(bin, []byte(fakeKubectl), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := followPodLogs(dir, bin, "/nonexistent")
	defer p.stop()
	file := filepath.Join(dir, containerKey("pg-0", "u1", 0)+".log")
	var got string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(file)
		if got = string(b); strings.Contains(got, "last line") {
			break
		}
	}
	for _, want := range []string{"first stream\n", "the log stream broke after", "resumed ---\n", "--since-time", "last line\n"} {
		if !strings.Contains(got, want) {
			t.Fatalf("the followed log lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "unreachable") || strings.Count(got, "resumed ---") != 1 {
		t.Fatalf("a failed attempt left a trace in the log:\n%s", got)
	}
	if i, j := strings.Index(got, "first stream"), strings.Index(got, "last line"); i > j {
		t.Fatalf("the resumed stream did not append:\n%s", got)
	}
	// Resumed from the first stream's end, not from the failed attempt's.
	b, err := os.ReadFile(filepath.Join(filepath.Dir(bin), "first"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	_, after, _ := strings.Cut(got, "--since-time ")
	since, err := time.Parse(time.RFC3339, strings.Fields(after)[0])
	if err != nil {
		t.Fatalf("--since-time in %q: %v", got, err)
	}
	if since.Unix() > first {
		t.Errorf("resumed from %s, after the first stream ended (%s): the failed attempt moved the point", since, time.Unix(first, 0).UTC())
	}
}
