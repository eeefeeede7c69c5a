package workload

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// quietUnavailability bounds the longest time without an acknowledged
// write when nothing breaks: a loaded machine may stall the primary's
// commits (an fsync, a CPU-starved backend) for a moment, which is not
// unavailability caused by the system under test.
const quietUnavailability = 5 * time.Second

// TestIntegration runs both workloads against a real two-member cluster
// (started the way `holdfast up` does) with no fault: nothing may be lost,
// every acknowledged write names the primary and its timeline, writes sent
// straight to the replica fail (read-only), and the register history is
// linearizable.
func TestIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real cluster; skipped with -short")
	}
	testutil.PGBinDir(t) // skips when PostgreSQL is not installed
	dir := testutil.Dir(t)
	exe := holdfastBinary(t, dir)
	cdir := filepath.Join(dir, "cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range []string{"pg-0", "pg-1"} {
				b, _ := os.ReadFile(local.LogFile(cdir, name))
				t.Logf("--- %s log tail:\n%s", name, tail(string(b), 40))
			}
		}
		if err := local.Down(context.Background(), cdir, io.Discard); err != nil {
			t.Errorf("holdfast down: %v", err)
		}
	})
	l, err := local.Up(ctx, local.UpOptions{Dir: cdir, Cluster: "pg", Members: 2, Exe: exe, Wait: 90 * time.Second, OSUser: "postgres", Out: io.Discard})
	if err != nil {
		t.Fatalf("holdfast up: %v", err)
	}
	v, err := local.View(ctx, l)
	if err != nil || v.Leader == nil {
		t.Fatalf("cluster view: %v (leader %v)", err, v.Leader)
	}
	primary := v.Leader.Name
	timeline := v.Statuses[primary].Position.Timeline
	var primaryDSN, replicaDSN, replica string
	for _, m := range l.Members {
		if m.Name == primary {
			primaryDSN = l.SuperuserDSN(m.PGPort, 2*time.Second)
		} else {
			replica, replicaDSN = m.Name, l.SuperuserDSN(m.PGPort, 2*time.Second)
		}
	}
	if l.ProxyRWPort == 0 {
		t.Fatal("the cluster has no proxy")
	}
	proxyDSN := l.SuperuserDSN(l.ProxyRWPort, 2*time.Second)

	const table = "wl_integration"
	if err := Setup(ctx, primaryDSN, table); err != nil {
		t.Fatal(err)
	}
	// Direct writes to the replica must meet a read-only error, not a
	// missing table: wait until it has replayed the CREATE TABLE.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, err := Present(ctx, replicaDSN, table)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the table never reached %s: %v", replica, err)
		}
	}
	w, err := StartWriters(ctx, WriterOptions{
		Targets:          []Target{{Name: "proxy", DSN: proxyDSN}, {Name: primary, DSN: primaryDSN}, {Name: replica, DSN: replicaDSN}},
		ClientsPerTarget: 2,
		Table:            table,
		Pause:            2 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := StartRegister(ctx, RegisterOptions{DSN: proxyDSN, Clients: 3, Pause: 2 * time.Millisecond, Seed: 1})
	if err != nil {
		w.Stop()
		t.Fatal(err)
	}
	// Every target's first outcome as it should be (the proxy and the
	// primary acknowledge, the replica refuses), then some more history.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		o := w.Outcomes()
		if o["proxy"][Acked] > 0 && o[primary][Acked] > 0 && o[replica][Failed] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("within a minute, outcomes per target: %v", o)
		}
	}
	time.Sleep(time.Second)
	writes := w.Stop()
	hist := reg.Stop()
	if again := w.Stop(); len(again) != len(writes) {
		t.Errorf("second Stop returned %d writes, first %d", len(again), len(writes))
	}

	present, err := Present(ctx, primaryDSN, table)
	if err != nil {
		t.Fatal(err)
	}
	r := Check(writes, present, CheckOptions{Synchronous: true})
	t.Logf("%d attempts: %d acked, %d failed, %d unknown; members %v; first ack after %s; unavailability %s (+%s to +%s)",
		r.Attempts, r.Acked, r.Failed, r.Unknown, r.Members, r.FirstAck, r.Unavailability,
		r.UnavailableFrom.Sub(writes[0].Start), r.UnavailableTo.Sub(writes[0].Start))
	t.Logf("report:\n%s", FormatReport([]Row{RowFromResult("no fault (integration test)", r, true)}))
	if !r.OK() || r.LostAcked != 0 || r.SplitBrain || len(r.Suspicious) > 0 {
		t.Errorf("check: problems %q, suspicious %q", r.Problems(), r.Suspicious)
	}
	// Only statements in flight when Stop cancelled them may be unknown.
	if r.Unknown > 6 {
		t.Errorf("%d unknown outcomes without a fault", r.Unknown)
	}
	if want := fmt.Sprintf("%s/%d", primary, timeline); len(r.Members) != 1 || r.Members[0] != want {
		t.Errorf("members %v, want [%s]", r.Members, want)
	}
	if r.Unavailability > quietUnavailability {
		t.Errorf("unavailability %s without a fault", r.Unavailability)
	}
	perTarget := CountOutcomes(writes)
	for _, wr := range writes {
		switch {
		case wr.Outcome == Acked && (wr.Member != primary || wr.Timeline != timeline || wr.LSN == 0):
			t.Errorf("acknowledged write %+v: want member %s, timeline %d, an LSN", wr, primary, timeline)
		case wr.Target == replica && wr.Outcome == Failed && !strings.Contains(wr.Err, "25006"):
			t.Errorf("write to the replica failed for another reason: %s", wr.Err)
		}
	}
	t.Logf("outcomes per target: %v", perTarget)
	if perTarget["proxy"][Acked] == 0 || perTarget[primary][Acked] == 0 {
		t.Errorf("want acknowledged writes through the proxy and directly: %v", perTarget)
	}
	if perTarget[replica][Acked] != 0 || perTarget[replica][Failed] == 0 {
		t.Errorf("the replica must refuse every write: %v", perTarget[replica])
	}

	var reads, writesAcked int
	for _, op := range hist.Ops {
		if op.Outcome != Acked {
			continue
		}
		if op.Kind == Read {
			reads++
		} else {
			writesAcked++
		}
		if op.Member != primary {
			t.Errorf("register operation answered by %s, want %s: %+v", op.Member, primary, op)
		}
	}
	res, info := CheckLinearizable(hist, 30*time.Second)
	t.Logf("register: %d operations (%d reads, %d writes acknowledged): %s", len(hist.Ops), reads, writesAcked, res)
	if reads == 0 || writesAcked == 0 {
		t.Errorf("register workload did too little: %d reads, %d writes", reads, writesAcked)
	}
	if res != porcupine.Ok {
		path := filepath.Join(t.TempDir(), "register.html")
		_ = VisualizeRegister(info, path)
		t.Errorf("register history is %s (visualization: %s)", res, path)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// holdfastBinary returns the holdfast binary to run: $HOLDFAST_BIN if set,
// else one built from this tree into dir, else (when the tree does not
// build, e.g. mid-edit) the repository's bin/holdfast, said in the log.
func holdfastBinary(t *testing.T, dir string) string {
	t.Helper()
	if p := os.Getenv("HOLDFAST_BIN"); p != "" {
		return p
	}
	exe := filepath.Join(dir, "holdfast")
	out, err := exec.Command("go", "build", "-o", exe, "github.com/holdfast/holdfast/cmd/holdfast").CombinedOutput()
	if err == nil {
		return exe
	}
	prebuilt, _ := filepath.Abs("../../bin/holdfast")
	if _, serr := os.Stat(prebuilt); serr == nil {
		t.Logf("the tree does not build (%v), using %s:\n%s", err, prebuilt, tail(string(out), 5))
		return prebuilt
	}
	t.Fatalf("build holdfast: %v\n%s", err, out)
	return ""
}
