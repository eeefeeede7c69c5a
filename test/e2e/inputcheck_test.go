package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
)

// Input that used to be accepted but wrong (issue 11, item 8), refused by
// the real binary against a real cluster, each refusal changing nothing:
//
//   - `up --members 0` made 3 members; it is refused and creates nothing;
//   - two concurrent `up` on one directory both started a proxy and one
//     reported a proxy that had failed to bind: now one of them works and
//     the other is refused naming the first, and the proxy starts once;
//   - `--members 2` without a witness warns that one member down loses the
//     store's majority;
//   - PATCH /config {"ttl":"-4s"} answered "cannot be changed on a running
//     cluster"; now "invalid", naming the key and the rule;
//   - maximum_lag_on_failover of 2^63-1 switched the guard off; refused;
//   - a switchover scheduled in the past ran at once; refused;
//   - `up --cluster other` on a directory holding cluster pg started pg;
//     refused, naming both, starting nothing;
//   - `up` reported a proxy started whose port was taken; it now fails,
//     quoting the proxy's log.
func TestInputAcceptedButWrongIsRefused(t *testing.T) {
	testutil.PGBinDir(t)
	dir := filepath.Join(testutil.Dir(t), "cluster")
	c := &Cluster{t: t, Dir: dir}
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs()
			b, _ := os.ReadFile(local.ProxyLogFile(dir))
			t.Logf("proxy.log:\n%s", b)
		}
		run(t, 3*time.Minute, "down", "--dir", dir)
	})

	out, err := run(t, time.Minute, "up", "--detach", "--dir", dir, "--members", "0")
	if err == nil || !strings.Contains(out, "--members 0: a cluster needs at least 1 database member") {
		t.Fatalf("up --members 0: err %v, output:\n%s\nwant a refusal", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("up --members 0 created %s (stat: %v)", dir, err)
	}
	out, err = run(t, time.Minute, "up", "--detach", "--dir", dir, "--proxy-mode", "pooled")
	if err == nil || !strings.Contains(out, `--proxy-mode "pooled": use passthrough`) {
		t.Fatalf("up --proxy-mode pooled: err %v, output:\n%s\nwant a refusal", err, out)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("up --proxy-mode pooled created %s (stat: %v)", dir, err)
	}

	// Two `up` at once on a new directory.
	type result struct {
		out string
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			cmd := exec.Command(binary, "up", "--detach", "--dir", dir, "--members", "2", "--wait", "90s")
			var b bytes.Buffer
			cmd.Stdout, cmd.Stderr = &b, &b
			err := cmd.Run()
			results <- result{b.String(), err}
		}()
	}
	var outs []string
	succeeded := 0
	for range 2 {
		r := <-results
		outs = append(outs, r.out)
		if r.err == nil {
			succeeded++
		} else if !strings.Contains(r.out, "is creating or starting the cluster in "+dir) {
			t.Errorf("a concurrent up failed without saying another up holds the directory (%v):\n%s", r.err, r.out)
		}
	}
	all := strings.Join(outs, "\n----\n")
	if succeeded == 0 {
		t.Fatalf("neither concurrent up succeeded:\n%s", all)
	}
	if n := strings.Count(all, "starting proxy"); n != 1 {
		t.Errorf("the proxy was started %d times, want once:\n%s", n, all)
	}
	if !strings.Contains(all, "proxy listening on") {
		t.Errorf("no up reported the proxy listening:\n%s", all)
	}
	if !strings.Contains(all, "warning: cluster \"pg\" has 2 members and no witness") || !strings.Contains(all, "with one member down it loses its majority") {
		t.Errorf("no warning about the store's majority with 2 members:\n%s", all)
	}
	t.Logf("concurrent ups:\n%s", all)
	if c.Layout, err = local.ReadLayout(dir); err != nil {
		t.Fatal(err)
	}
	c.WaitFor("healthy", 90*time.Second, Healthy(2))

	// While another up holds the directory, up is refused, naming it.
	lock, err := os.OpenFile(local.LockFile(dir), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("lock %s: %v (did an up keep it?)", local.LockFile(dir), err)
	}
	if _, err := lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		t.Fatal(err)
	}
	out, err = run(t, time.Minute, "up", "--detach", "--dir", dir)
	if want := "another holdfast up (pid " + strconv.Itoa(os.Getpid()) + ") is creating or starting the cluster in " + dir; err == nil || !strings.Contains(out, want) {
		t.Errorf("up while the directory is locked: err %v, output:\n%s\nwant %q", err, out, want)
	}
	lock.Truncate(0)
	lock.Close()

	// The cluster's configuration, through the API and ctl.
	before := c.facts()
	leader := before.leader
	for _, bad := range []struct{ name, body, want string }{
		{"negative ttl", `{"ttl":"-4s"}`, "invalid cluster configuration: ttl: -4s is negative (write a duration of at least 2s, e.g. 4s)"},
		{"absurd lag", `{"maximum_lag_on_failover":9223372036854775807}`, "invalid cluster configuration: maximum_lag_on_failover: 9223372036854775807 bytes is more than the limit"},
	} {
		code, body, err := c.apiDo(leader, http.MethodPatch, "/config", bad.body, nil)
		if err != nil {
			t.Fatalf("%s: %v", bad.name, err)
		}
		var e struct {
			Error string `json:"error"`
		}
		if code != http.StatusBadRequest || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, bad.want) {
			t.Errorf("PATCH /config %s: %d %s; want 400 containing %q", bad.body, code, body, bad.want)
		}
	}
	out, err = c.ctlRun(time.Minute, "edit-config", "--set", "maximum_lag_on_failover=9223372036854775807")
	if err == nil || httpStatusIn(out) != http.StatusBadRequest || !strings.Contains(out, "more than the limit") {
		t.Errorf("ctl edit-config with an absurd lag: err %v, output %q; want a 400", err, out)
	}
	out, err = c.ctlRun(time.Minute, "show-config")
	var shown struct {
		TTL    string `json:"ttl"`
		MaxLag int64  `json:"maximum_lag_on_failover"`
	}
	if err != nil || json.Unmarshal([]byte(out), &shown) != nil || shown.TTL != "4s" || shown.MaxLag != 1<<20 {
		t.Errorf("show-config after refused changes: err %v, %q; want ttl 4s and the default lag, unchanged", err, out)
	}

	out, err = c.ctlRun(time.Minute, "switchover", "--at", "2020-01-01T00:00:00Z")
	if err == nil || httpStatusIn(out) != http.StatusBadRequest || !strings.Contains(out, `scheduled_at: "2020-01-01T00:00:00Z" is in the past`) {
		t.Errorf("ctl switchover --at a past time: err %v, output %q; want a 400 saying it is in the past", err, out)
	}
	c.assertUnchanged(before, "a switchover scheduled in the past")

	// Another cluster's name on this directory starts nothing.
	c.Down()
	snap := snapshot(t, dir)
	out, err = run(t, time.Minute, "up", "--detach", "--dir", dir, "--cluster", "other")
	if want := dir + ` already holds cluster "pg"; --cluster "other" names another`; err == nil || !strings.Contains(out, want) {
		t.Errorf("up --cluster other: err %v, output:\n%s\nwant %q", err, out, want)
	}
	for _, m := range c.Layout.Members {
		if pid, ok := local.RunningPID(dir, m.Name); ok {
			t.Errorf("up --cluster other started %s (pid %d)", m.Name, pid)
		}
	}
	if after := snapshot(t, dir); after != snap {
		t.Errorf("up --cluster other changed %s:\nbefore:\n%s\nafter:\n%s", dir, snap, after)
	}
	// Nor does another proxy mode: it is the cluster's, chosen when made.
	out, err = run(t, time.Minute, "up", "--detach", "--dir", dir, "--proxy-mode", "session")
	if want := `whose proxy runs in passthrough mode; --proxy-mode "session" cannot change it`; err == nil || !strings.Contains(out, want) {
		t.Errorf("up --proxy-mode session on a passthrough cluster: err %v, output:\n%s\nwant %q", err, out, want)
	}
	if after := snapshot(t, dir); after != snap {
		t.Errorf("up --proxy-mode session changed %s:\nbefore:\n%s\nafter:\n%s", dir, snap, after)
	}

	// A proxy that cannot bind is reported, not announced as started.
	taken, err := net.Listen("tcp", c.Layout.ProxyRW())
	if err != nil {
		t.Fatalf("take the proxy's port: %v", err)
	}
	defer taken.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, binary, "up", "--detach", "--dir", dir, "--wait", "90s").CombinedOutput()
	out = string(b)
	if err == nil || !strings.Contains(out, "the proxy (pid") || !strings.Contains(out, "failed to start") || !strings.Contains(out, "address already in use") {
		t.Errorf("up with the proxy's port taken: err %v, output:\n%s\nwant a failure quoting the bind error", err, out)
	}
	if strings.Contains(out, "proxy listening on") {
		t.Errorf("up announced a proxy that could not bind:\n%s", out)
	}
}
