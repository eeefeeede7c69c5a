package e2e

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
)

// TestFailoverPriority: members ranked with failover_priority (one
// member_tags map in every member's file, as the Helm chart renders it)
// are honoured by a switchover without a named target and by a failover
// between members holding the same WAL; ctl list shows the tags and ctl
// explain says who a switchover would go to.
func TestFailoverPriority(t *testing.T) {
	c := StartCluster(t, 3)
	names := c.DBMembers()
	slices.Sort(names)
	// names[2] is preferred most, names[1] next, names[0] least.
	prio := map[string]string{names[0]: "1", names[1]: "3", names[2]: "5"}
	tags := "\nmember_tags:\n"
	for n, p := range prio {
		tags += "  " + n + `.failover_priority: "` + p + `"` + "\n"
	}
	c.Down()
	for _, n := range names {
		f := local.ConfigFile(c.Dir, n)
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "member_tags:") {
			t.Fatalf("%s already has member_tags", f)
		}
		if err := os.WriteFile(f, append(b, tags...), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.Up()
	l := c.WaitFor("healthy with the tags", 90*time.Second, func(l ctl.ClusterList) bool {
		if !Healthy(3)(l) {
			return false
		}
		for _, m := range l.Members {
			if m.Tags["failover_priority"] != prio[m.Name] {
				return false
			}
		}
		return true
	})

	// A switchover without a target goes to the most preferred replica.
	best := func(except string) string {
		for _, n := range []string{names[2], names[1], names[0]} {
			if n != except {
				return n
			}
		}
		return ""
	}
	want := best(l.Leader)
	out, err := c.ctlRun(30*time.Second, "explain")
	if err != nil || !strings.Contains(out, "would go to "+want) || !strings.Contains(out, want+" can take over [failover_priority "+prio[want]+"]") {
		t.Fatalf("ctl explain does not name %s as the switchover target: %v\n%s", want, err, out)
	}
	if out, err := c.ctlRun(time.Minute, "switchover"); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	l = c.WaitFor("the switchover to "+want, 90*time.Second, func(l ctl.ClusterList) bool { return Healthy(3)(l) && l.Leader == want })

	// A failover: the two replicas hold the same WAL (nothing is written),
	// so the preferred one takes over; the other stands back.
	time.Sleep(15 * time.Second) // past every agent's startup grace (3 × TTL) after the restart
	killed := l.Leader
	c.KillHard(killed)
	want = best(killed)
	l = c.WaitFor("a new primary", 90*time.Second, func(l ctl.ClusterList) bool {
		for _, m := range l.Members {
			if m.Leader && m.Role == "primary" && m.State == "running" && m.Name != killed {
				return true // want, or the wrong one: caught below
			}
		}
		return false
	})
	if l.Leader != want {
		t.Fatalf("failover promoted %s, want %s (failover_priority %s over %s)", l.Leader, want, prio[want], prio[l.Leader])
	}
	c.Up()
	c.WaitFor("healthy again", 2*time.Minute, Healthy(3))
}
