package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// holdfast up's lease settings (the defaults): the bounds below are stated
// in them.
const (
	upTTL         = 4 * time.Second
	upLoop        = 1 * time.Second
	upFenceMargin = upLoop
)

// promotionAllowance is what a failover may take beyond detecting the dead
// primary: the promotion and the new primary's first write. A clean
// handover takes about 0.1s (bench/failover); this leaves room for a loaded
// machine.
const promotionAllowance = 2 * time.Second

// With embedded etcd, freezing the primary's agent (SIGSTOP) freezes an
// etcd member too. The other agents must not keep sending their store
// requests to it: a replica is promoted once the frozen primary's lease has
// run out, within 2×TTL + promotion — not after the etcd client's keepalive
// gives up on the frozen endpoint (it took 12–13s).
func TestFrozenPrimaryAgentEmbeddedFailsOver(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	old := c.Primary()
	c.Exec(old, "CREATE TABLE frozen (id int)")
	rest := others(c.DBMembers(), old)
	for _, m := range rest {
		c.WaitCount(m, "frozen", 0, 30*time.Second)
	}
	agent := c.AgentPID(old) // from the cluster's pid file, checked against /proc
	resume := freeze(t, agent)
	defer resume()
	start := time.Now()
	var took time.Duration
	for took == 0 && time.Since(start) < time.Minute {
		for _, m := range rest {
			if err := c.TryExecWithin(m, time.Second, "INSERT INTO frozen VALUES (1)"); err == nil {
				took = time.Since(start)
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took == 0 {
		t.Fatalf("no other member accepted a write within a minute of freezing %s's agent", old)
	}
	bound := 2*upTTL + promotionAllowance
	t.Logf("a write was acknowledged by another member %s after freezing %s's agent (bound %s)", took.Round(time.Millisecond), old, bound)
	if took > bound {
		t.Errorf("failover after freezing the primary's agent took %s, more than 2×TTL + %s = %s: the other agents' store access stalled on the frozen member", took.Round(time.Millisecond), promotionAllowance, bound)
	}
	resume()
	c.WaitFor("healthy after the agent thaws", 90*time.Second, Healthy(3))
}

// Freezing a replica's agent — the one whose embedded etcd member is the
// raft leader, when a replica's is (the primary moves raft leadership off
// its own member, so it usually is) — must not bring the healthy primary
// to its fence point: it keeps renewing its lease through the freeze,
// keeps the leader key and keeps accepting writes.
func TestFrozenReplicaAgentLeavesPrimaryLeased(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	p := c.Primary()
	c.Exec(p, "CREATE TABLE frozen (id int)")
	victim := raftLeader(t, c)
	isRaftLeader := victim != "" && victim != p
	if !isRaftLeader {
		victim = others(c.DBMembers(), p)[0]
	}
	pm := c.PostmasterPID(p)
	metrics := c.Layout.APIURL(c.Member(p)) + "/metrics"
	agent := c.AgentPID(victim)
	resume := freeze(t, agent)
	defer resume()
	frozeAt := time.Now()
	t.Logf("froze %s's agent (its etcd member the raft leader: %v); primary %s", victim, isRaftLeader, p)
	// How long the store had no raft leader: the primary's renewals wait
	// that long, whatever holdfast does.
	elected := make(chan time.Duration, 1)
	go func() {
		live := others(c.DBMembers(), victim)
		for time.Since(frozeAt) < 3*upTTL {
			for _, m := range live {
				if raftLeaderName(t, c, m) == m {
					elected <- time.Since(frozeAt)
					return
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		elected <- 3 * upTTL
	}()
	minLease := upTTL
	failed := 0
	for start := time.Now(); time.Since(start) < 3*upTTL; time.Sleep(100 * time.Millisecond) {
		if v, err := leaseValid(metrics); err == nil {
			minLease = min(minLease, v)
		} else {
			t.Logf("read %s: %v", metrics, err)
		}
		// A write that times out on a loaded machine proves nothing; one
		// the primary refuses or ends does (the postmaster check below
		// catches a fence either way).
		if err := c.TryExecWithin(p, statementTimeout, "INSERT INTO frozen VALUES (1)"); err != nil {
			if !pgconn.Timeout(err) {
				failed++
			}
			t.Logf("write on %s: %v", p, err)
		}
	}
	resume()
	noLeader := <-elected
	t.Logf("primary's lease: at least %s left during the freeze; %d writes failed; a raft leader among the others after %s", minLease.Round(time.Millisecond), failed, noLeader.Round(time.Millisecond))
	// The claim is behaviour: the primary never reached its fence point —
	// as long as the store elected a new raft leader in time. No renewal
	// can succeed without one: a primary that renewed just before the
	// freeze has TTL − fence margin − a loop of headroom. A machine so
	// loaded that the election took longer makes the fence the right
	// answer, and then the claim cannot be checked.
	if headroom := upTTL - upFenceMargin - upLoop; isRaftLeader && noLeader > headroom {
		t.Logf("the election took %s, more than the lease's headroom (%s): the store was unavailable that long, so the primary may rightly fence; not checked", noLeader.Round(time.Millisecond), headroom)
		c.WaitFor("healthy after the agent thaws", 90*time.Second, Healthy(3))
		return
	}
	// The lease may run into its fence margin: the primary renews it
	// during its failsafe round, up to the fence point, once the store has
	// elected a leader (and the metric shows the deadline published after
	// the loop). It must not run out.
	if minLease <= 0 {
		t.Errorf("the primary's lease ran out (%s) while %s's agent was frozen", minLease.Round(time.Millisecond), victim)
	}
	if failed > 0 {
		t.Errorf("%d writes on the primary failed while a replica's agent was frozen", failed)
	}
	if !c.StillServedBy(p, pm) {
		t.Errorf("the primary's PostgreSQL postmaster %d is gone or replaced: it fenced", pm)
	}
	// After the thaw the leader may change: the thawed etcd member, raft
	// leader before it froze, can still revoke the leases it saw expire
	// while frozen before it learns it was replaced (etcd's guard,
	// issue 15247, skips its check right after a tick). That is the
	// store's hazard on a thaw, not the freeze this test is about.
	l := c.WaitFor("healthy after the agent thaws", 90*time.Second, Healthy(3))
	if l.Leader != p {
		t.Logf("after the thaw the leader changed from %s to %s", p, l.Leader)
	}
}

// freeze sends SIGSTOP to pid and returns a function that sends SIGCONT
// once (later calls do nothing).
func freeze(t *testing.T, pid int) func() {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %d: %v", pid, err)
	}
	done := false
	return func() {
		if !done {
			done = true
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}
}

// raftLeader names the member whose embedded etcd member is the raft
// leader, "" when none says so.
func raftLeader(t *testing.T, c *Cluster) string {
	t.Helper()
	for _, m := range c.DBMembers() {
		if raftLeaderName(t, c, m) == m {
			return m
		}
	}
	return ""
}

// raftLeaderName returns name when its etcd member says it is the raft
// leader, else "".
func raftLeaderName(t *testing.T, c *Cluster, name string) string {
	t.Helper()
	ep := fmt.Sprintf("http://127.0.0.1:%d", c.Member(name).ClientPort)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return ""
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, ep)
	if err != nil || st.Leader != st.Header.MemberId {
		return ""
	}
	return name
}

// leaseValid reads holdfast_lease_valid_seconds from a member's metrics.
func leaseValid(url string) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "holdfast_lease_valid_seconds") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("holdfast_lease_valid_seconds: %w", err)
		}
		return time.Duration(v * float64(time.Second)), nil
	}
	return 0, fmt.Errorf("no holdfast_lease_valid_seconds in %s", url)
}
