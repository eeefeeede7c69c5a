package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/ctl"
)

// loadBeforeSwitchover bounds how long TestHealthChecksHAProxyAndSwitchover
// waits for its writers' first acknowledged writes (a loaded machine is
// slow to start them).
const loadBeforeSwitchover = 2 * time.Minute

// One cluster, the health checks a load balancer reads, HAProxy configured
// as Patroni's documentation recommends, and planned and unplanned changes
// of primary under it:
//
//   - every health check answers as the member's role says, with GET, HEAD
//     and OPTIONS, before and after a switchover;
//   - writes through HAProxy land on the primary, then on the new primary
//     after `ctl switchover`, then on the next one after kill -9;
//   - a switchover under a steady write load loses no acknowledged row.
func TestHealthChecksHAProxyAndSwitchover(t *testing.T) {
	c := StartCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	first := c.Primary()
	c.Exec(first, "CREATE TABLE sw (id bigint PRIMARY KEY)")
	c.Exec(first, "CREATE TABLE hap (id bigint PRIMARY KEY, port int)")
	var hapIDs atomic.Int64

	t.Run("health checks before a switchover", func(t *testing.T) {
		c := c.in(t)
		c.WaitFor("healthy", 60*time.Second, Healthy(3))
		c.checkHealth(c.roles(first), 30*time.Second)
	})

	// HAProxy lives as long as the whole test.
	hap := startHAProxy(t, c)

	t.Run("haproxy sends writes to the primary", func(t *testing.T) {
		if hap == nil {
			t.Skip("haproxy is not installed")
		}
		c := c.in(t)
		took := hap.waitRoutedTo(c, "hap", &hapIDs, first, hapRouteTimeout)
		t.Logf("writes through HAProxy land on the primary %s (5 in a row after %s)", first, took.Round(time.Millisecond))
	})

	var second string
	var switchedAt time.Time
	ok := t.Run("switchover under write load loses no acknowledged row", func(t *testing.T) {
		c := c.in(t)
		c.WaitFor("healthy", 60*time.Second, Healthy(3))
		old := c.Primary()
		target := others(c.DBMembers(), old)[0]

		w := newPrimaryWriter(c, "sw")
		stop, splitStop := make(chan struct{}), make(chan struct{})
		done := w.start(3, 5*time.Millisecond, stop)
		split := c.AtMostOneWritable(splitStop)
		stopAll := func() {
			select {
			case <-stop:
			default:
				close(stop)
				<-done
				close(splitStop)
			}
		}
		defer stopAll()

		// A steady load before the switchover: wait for acknowledged
		// writes (a state), not for a time that is enough when idle.
		for deadline := time.Now().Add(loadBeforeSwitchover); ; time.Sleep(100 * time.Millisecond) {
			if acked, _ := w.results(); len(acked) >= 5 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the writers got fewer than 5 writes acknowledged in %s before the switchover", loadBeforeSwitchover)
			}
		}
		from := time.Now()
		out, err := c.ctlRun(2*time.Minute, "switchover", "--to", target)
		switchedAt = time.Now()
		time.Sleep(3 * time.Second)
		stopAll()
		if err := <-split; err != nil {
			t.Error(err)
		}
		if err != nil {
			t.Fatalf("ctl switchover --to %s: %v\n%s", target, err, out)
		}
		t.Logf("ctl switchover --to %s took %s: %s", target, switchedAt.Sub(from).Round(time.Millisecond), out)
		l := c.WaitFor("the candidate running as primary", 30*time.Second, func(l ctl.ClusterList) bool {
			return l.Leader == target && member(l, target).Role == "primary" && member(l, target).State == "running"
		})
		second = l.Leader

		acked, failed := w.results()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		conn, err := c.Connect(ctx, second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(ctx, "SELECT id FROM sw WHERE id = ANY($1)", acked)
		if err != nil {
			t.Fatal(err)
		}
		found := map[int64]bool{}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			found[id] = true
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var missing []int64
		for _, id := range acked {
			if !found[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			t.Errorf("%d of %d acknowledged writes are missing on the new primary %s: %v", len(missing), len(acked), second, missing)
		}
		var total int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM sw").Scan(&total); err != nil {
			t.Fatal(err)
		}
		if total < int64(len(acked)) {
			t.Errorf("the new primary holds %d rows, fewer than the %d acknowledged", total, len(acked))
		}
		t.Logf("switchover %s -> %s under load: %d writes acknowledged (all present on %s, %d rows there), %d failed (no member accepted them); longest pause between acknowledged writes %s",
			old, second, len(acked), second, total, failed, w.longestGap(from, switchedAt.Add(3*time.Second)).Round(time.Millisecond))
	})
	if !ok {
		return
	}

	t.Run("haproxy follows the switchover", func(t *testing.T) {
		if hap == nil {
			t.Skip("haproxy is not installed")
		}
		c := c.in(t)
		hap.waitRoutedTo(c, "hap", &hapIDs, second, hapRouteTimeout)
		t.Logf("writes through HAProxy land on the new primary %s (%s after the switchover returned)", second, time.Since(switchedAt).Round(time.Millisecond))
	})

	t.Run("health checks after a switchover", func(t *testing.T) {
		c := c.in(t)
		// The old primary rejoins as a replica within a few seconds.
		c.WaitFor("healthy after the switchover", 60*time.Second, Healthy(3))
		c.checkHealth(c.roles(second), 30*time.Second)
	})

	t.Run("haproxy follows a failover", func(t *testing.T) {
		if hap == nil {
			t.Skip("haproxy is not installed")
		}
		c := c.in(t)
		c.WaitFor("healthy", 60*time.Second, Healthy(3))
		dead := c.Primary()
		killed := time.Now()
		c.KillHard(dead)
		l := c.WaitFor("a new primary after kill -9", 60*time.Second, func(l ctl.ClusterList) bool {
			return l.Leader != "" && l.Leader != dead && member(l, l.Leader).Role == "primary" && member(l, l.Leader).State == "running"
		})
		hap.waitRoutedTo(c, "hap", &hapIDs, l.Leader, hapRouteTimeout)
		t.Logf("writes through HAProxy land on %s %s after kill -9 of %s", l.Leader, time.Since(killed).Round(time.Millisecond), dead)
		c.Up()
		c.WaitFor("healthy after the killed member rejoins", 90*time.Second, Healthy(3))
	})
}
