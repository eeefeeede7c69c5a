package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/ctl"
)

// The local cluster's lease TTL (the default): the proxy's view turns stale
// after it.
const proxyTTL = 4 * time.Second

// One three-member cluster started by `holdfast up` (which starts the
// cluster's proxy too), and what the proxy must show under it:
//
//   - `up` prints the proxy's addresses and `ctl list -o json` has them;
//   - read-only connections spread over the replicas, never the primary;
//     a replica beyond --max-lag gets none, and with --ro-fallback=false
//     no qualifying replica means refused, not sent to the primary;
//   - pgbench opening a connection per transaction through the read-write
//     port sees no failed transaction and no aborted client across two
//     `ctl switchover`s in one run;
//   - after a switchover no client connection through the read-write port
//     remains on the old primary, and new ones land on the new primary;
//   - during a failover (kill -9 of the primary's agent and postmaster) a
//     client that connects through the proxy for every write has its new
//     connections held, not refused, while the dead primary still holds the
//     leader key and until the new primary is writable: it sees at most a
//     tenth of the errors a client connecting directly (every member,
//     target_session_attrs=read-write) sees meanwhile, and after its first
//     success every attempt succeeds on the new primary; a long-lived
//     connection is closed;
//   - with the store unreachable (every agent, and so every embedded etcd
//     member, frozen with SIGSTOP) while the primary's PostgreSQL keeps
//     running, the proxy refuses new read-write connections and closes the
//     existing one within TTL + 3s, and routes again once the store is back.
func TestProxy(t *testing.T) {
	c, upOut := startProxyCluster(t, 3)
	c.WaitFor("healthy", 60*time.Second, Healthy(3))
	rw, ro := c.Layout.ProxyRW(), c.Layout.ProxyRO()
	if rw == "" || ro == "" {
		t.Fatalf("cluster.json names no proxy ports: proxy_rw_port %d, proxy_ro_port %d", c.Layout.ProxyRWPort, c.Layout.ProxyROPort)
	}

	t.Run("up prints the proxy addresses and ctl list shows them", func(t *testing.T) {
		c := c.pxBind(t)
		for _, want := range []struct {
			kind string
			port int
		}{{"read-write", c.Layout.ProxyRWPort}, {"read-only", c.Layout.ProxyROPort}} {
			re := regexp.MustCompile(`(?m)^\s*proxy\s+` + want.kind + `\s+psql "host=127\.0\.0\.1 port=` + fmt.Sprint(want.port) + ` `)
			if !re.MatchString(upOut) {
				t.Errorf("holdfast up does not print the proxy's %s address (port %d):\n%s", want.kind, want.port, upOut)
			}
		}
		if want := fmt.Sprintf("proxy listening on %s (read-write, passthrough mode) and %s (read-only)", rw, ro); !strings.Contains(upOut, want) {
			t.Errorf("holdfast up does not say the proxy is listening (%q):\n%s", want, upOut)
		}
		l, err := c.List()
		if err != nil {
			t.Fatal(err)
		}
		if l.Proxy == nil || l.Proxy.RW != rw || l.Proxy.RO != ro {
			t.Errorf(`ctl list -o json "proxy" = %+v, want {rw: %s, ro: %s}`, l.Proxy, rw, ro)
		}
		b, err := whoAnswers(c.proxyDSN(rw, 5*time.Second), 10*time.Second)
		if err != nil {
			t.Fatalf("connect through the proxy's read-write port %s: %v", rw, err)
		}
		if p := c.Member(l.Leader).PGPort; b.port != p || b.inRecovery {
			t.Errorf("read-write port %s reached port %d (in recovery %v), want the primary %s on %d", rw, b.port, b.inRecovery, l.Leader, p)
		}
	})

	t.Run("read-only connections spread over the replicas", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		primary := c.Primary()
		reps := others(c.DBMembers(), primary)
		// batch makes 20 new read-only connections and counts them per
		// member ("primary" for any that reached a server not in recovery).
		batch := func() map[string]int {
			counts := map[string]int{}
			for i := 0; i < 20; i++ {
				b, err := whoAnswers(c.proxyDSN(ro, 5*time.Second), 10*time.Second)
				if err != nil {
					t.Fatalf("read-only connection %d through %s: %v", i+1, ro, err)
				}
				name := c.memberByPort(b.port)
				if name == primary || !b.inRecovery {
					name = "primary " + name
				}
				counts[name]++
			}
			return counts
		}
		clean := func(counts map[string]int) bool {
			return counts[reps[0]] > 0 && counts[reps[1]] > 0 && counts[reps[0]]+counts[reps[1]] == 20
		}
		// Both replicas qualify in the store (streaming, lag measured and
		// within the proxy's default 1MB)...
		c.WaitFor("both replicas within 1MB", 30*time.Second, func(l ctl.ClusterList) bool {
			for _, r := range reps {
				if m := member(l, r); m.State != "streaming" || m.LagBytes == nil || *m.LagBytes > 1<<20 {
					return false
				}
			}
			return true
		})
		// ...but the proxy sees status changes only at its next refresh
		// (every TTL/4; status writes do not wake its watch): right after
		// bootstrap it may still send read-only connections to the primary
		// by fallback. Wait for one clean batch, then require the next.
		deadline := time.Now().Add(15 * time.Second)
		for n := 1; ; n++ {
			counts := batch()
			if clean(counts) {
				break
			}
			t.Logf("batch %d of 20 read-only connections before the proxy's view shows both replicas qualifying: %v", n, counts)
			if time.Now().After(deadline) {
				t.Fatalf("20 read-only connections still not spread over both replicas alone 15s after both qualify: %v", counts)
			}
			time.Sleep(300 * time.Millisecond)
		}
		counts := batch()
		if !clean(counts) {
			t.Errorf("20 new read-only connections went %v; want every one on a replica (%s, %s), each > 0, none on the primary %s", counts, reps[0], reps[1], primary)
		}
		t.Logf("20 new read-only connections: %v (primary %s)", counts, primary)
	})

	t.Run("read-only skips a replica beyond the lag limit", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		primary := c.Primary()
		reps := others(c.DBMembers(), primary)
		lagging, good := reps[0], reps[1]
		p := startProxyProc(t, c, "--max-lag", "1kB", "--ro-fallback=false")
		fr := newFreezer(t)
		dsn := c.proxyDSN(p.ro, 5*time.Second)

		// spread makes n read-only connections and counts them per member.
		spread := func(n int) (map[string]int, error) {
			counts := map[string]int{}
			for i := 0; i < n; i++ {
				b, err := whoAnswers(dsn, 10*time.Second)
				if err != nil {
					return counts, err
				}
				name := c.memberByPort(b.port)
				if name == primary || !b.inRecovery {
					t.Errorf("a read-only connection landed on %s (in recovery %v), the primary, with --ro-fallback=false", name, b.inRecovery)
				}
				counts[name]++
			}
			return counts, nil
		}
		// Idle, both replicas are within 1kB: both get connections.
		waitSpread := func(what string) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				counts, err := spread(10)
				if err == nil && counts[lagging] > 0 && counts[good] > 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: read-only connections through a --max-lag 1kB proxy never reached both replicas within 30s: %v (err %v)", what, counts, err)
				}
				time.Sleep(300 * time.Millisecond)
			}
		}
		waitSpread("before any lag")

		// Freeze the WAL receiver of one replica: it stays up, streaming as
		// far as it knows, its agent keeps reporting, but it receives nothing
		// more. Then write about 300kB of WAL on the primary.
		pid, err := c.walReceiverPID(lagging)
		if err != nil {
			t.Fatal(err)
		}
		if err := fr.freeze(pid, "WAL receiver of "+lagging); err != nil {
			t.Fatal(err)
		}
		c.Exec(primary, "CREATE TABLE px_lag1 AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g")
		l := c.WaitFor(lagging+" more than 1kB behind", 30*time.Second, func(l ctl.ClusterList) bool {
			m := member(l, lagging)
			return m.LagBytes != nil && *m.LagBytes > 1024
		})
		t.Logf("with its WAL receiver frozen, %s reports %s, lag %d bytes", lagging, member(l, lagging).State, *member(l, lagging).LagBytes)

		// Round-robin alternates between qualifying replicas: 10 in a row on
		// one means the other was dropped. Then it must stay dropped.
		deadline := time.Now().Add(20 * time.Second)
		for {
			counts, err := spread(10)
			if err == nil && counts[good] == 10 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the proxy kept sending read-only connections to %s (lag > 1kB, --max-lag 1kB) for 20s: %v (err %v)", lagging, counts, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		counts, err := spread(20)
		if err != nil {
			t.Fatalf("read-only connection while %s lags: %v", lagging, err)
		}
		if counts[lagging] > 0 || counts[good] != 20 {
			t.Errorf("while %s lags beyond --max-lag, read-only connections went %v; want all 20 on %s", lagging, counts, good)
		}

		// Both replicas lagging, no fallback: refused, never the primary.
		pid2, err := c.walReceiverPID(good)
		if err != nil {
			t.Fatal(err)
		}
		if err := fr.freeze(pid2, "WAL receiver of "+good); err != nil {
			t.Fatal(err)
		}
		c.Exec(primary, "CREATE TABLE px_lag2 AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g")
		c.WaitFor("both replicas more than 1kB behind", 30*time.Second, func(l ctl.ClusterList) bool {
			a, b := member(l, lagging), member(l, good)
			return a.LagBytes != nil && *a.LagBytes > 1024 && b.LagBytes != nil && *b.LagBytes > 1024
		})
		deadline = time.Now().Add(20 * time.Second)
		for {
			if _, err := spread(1); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("read-only connections still routed 20s after both replicas fell beyond --max-lag")
			}
			time.Sleep(200 * time.Millisecond)
		}
		for i := 0; i < 5; i++ {
			if b, err := whoAnswers(dsn, 10*time.Second); err == nil {
				t.Errorf("with no qualifying replica and --ro-fallback=false a read-only connection reached %s", c.memberByPort(b.port))
			}
		}
		if n, err := p.metric("holdfast_proxy_refused_total", `listener="ro"`, `reason="no_replica"`); err != nil || n < 5 {
			t.Errorf(`holdfast_proxy_refused_total{listener="ro",reason="no_replica"} = %v (err %v), want >= 5`, n, err)
		}

		fr.thawAll()
		waitSpread("after the WAL receivers resume")
	})

	t.Run("pgbench -C through two switchovers: no failed transaction, no aborted client", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		env := c.pgbenchEnv(rw)
		ictx, icancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer icancel()
		pgbenchBin := pgbenchPath(t)
		initCmd := exec.CommandContext(ictx, pgbenchBin, "-i", "-s", "1", "-q")
		initCmd.Env = env
		if out, err := initCmd.CombinedOutput(); err != nil {
			t.Fatalf("pgbench -i through the proxy %s: %v\n%s", rw, err, out)
		}
		first := c.Primary()

		// Switchovers at ~3s and ~8s (the second once the old primary has
		// rejoined, which on a loaded machine may be many seconds later);
		// the run is long enough for the second to complete well before
		// it ends, and for transactions under the third primary after it.
		const duration = 40 * time.Second
		cmd := exec.Command(pgbenchBin, "-C", "-c", "4", "-j", "4", "-T", fmt.Sprint(int(duration/time.Second)), "-P", "3", "-n")
		cmd.Env = env
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		finished := false
		t.Cleanup(func() {
			if !finished {
				cmd.Process.Kill()
				<-done
			}
		})

		switchover := func(at time.Duration, from string) (string, time.Time, time.Time) {
			time.Sleep(time.Until(start.Add(at)))
			begun := time.Now()
			if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
				t.Fatalf("ctl switchover (from %s) %s into the pgbench run: %v\n%s", from, begun.Sub(start).Round(time.Millisecond), err, o)
			}
			l := c.WaitFor("a new primary after the switchover from "+from, 40*time.Second, leaderRunning(from))
			return l.Leader, begun, time.Now()
		}
		second, sw1Start, sw1Done := switchover(3*time.Second, first)
		c.WaitFor("healthy after the first switchover", 40*time.Second, Healthy(3))
		third, sw2Start, sw2Done := switchover(8*time.Second, second)

		var err error
		select {
		case err = <-done:
		case <-time.After(duration + time.Minute):
			t.Fatalf("pgbench did not finish a minute after its %s run:\n%s", duration, out.String())
		}
		finished = true
		end := time.Now()
		res := out.String()
		t.Logf("switchovers %s -> %s at %s (primary running again %s later) and %s -> %s at %s (%s later); pgbench output:\n%s",
			first, second, sw1Start.Sub(start).Round(time.Millisecond), sw1Done.Sub(sw1Start).Round(time.Millisecond),
			second, third, sw2Start.Sub(start).Round(time.Millisecond), sw2Done.Sub(sw2Start).Round(time.Millisecond), res)
		if err != nil {
			t.Errorf("pgbench exited with %v", err)
		}
		if strings.Contains(strings.ToLower(res), "aborted") {
			t.Errorf("a pgbench client aborted (see the output above)")
		}
		processed, failed, perr := pgbenchCounts(res)
		switch {
		case perr != nil:
			t.Errorf("%v", perr)
		case !strings.Contains(res, "number of failed transactions: 0 "):
			t.Errorf("pgbench reports %d failed transactions, want 0", failed)
		case processed == 0:
			t.Errorf("pgbench processed no transaction")
		}
		if sw2Done.After(end.Add(-time.Second)) {
			t.Errorf("the second switchover completed %s after pgbench ended (run too short to cover it)", sw2Done.Sub(end))
		}
		// Transactions committed under each of the three primaries.
		for _, w := range []struct {
			who      string
			from, to time.Time
		}{{first, start, sw1Start}, {second, sw1Done, sw2Start}, {third, sw2Done, end}} {
			n, err := c.queryInt(third, "SELECT count(*) FROM pgbench_history WHERE mtime > to_timestamp($1::float8)::timestamp AND mtime < to_timestamp($2::float8)::timestamp",
				float64(w.from.UnixMicro())/1e6, float64(w.to.UnixMicro())/1e6)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				t.Errorf("no pgbench transaction committed while %s was primary (%s to %s into the run)", w.who, w.from.Sub(start).Round(time.Millisecond), w.to.Sub(start).Round(time.Millisecond))
			}
			t.Logf("%d pgbench transactions committed while %s was primary", n, w.who)
		}
	})

	t.Run("switchover closes connections to the old primary", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		old := c.Primary()
		oldPort := c.Member(old).PGPort
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.proxyDSN(rw, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		var port int
		if err := conn.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != oldPort {
			t.Fatalf("long-lived connection through %s: port %d, err %v; want the primary %s on %d", rw, port, err, old, oldPort)
		}
		// Idle, outside a transaction, across the switchover.
		begun := time.Now()
		if o, err := c.ctlRun(time.Minute, "switchover"); err != nil {
			t.Fatalf("ctl switchover: %v\n%s", err, o)
		}
		l := c.WaitFor("a new primary after the switchover", 40*time.Second, leaderRunning(old))
		np := l.Leader
		deadline := time.Now().Add(5 * time.Second)
		for {
			qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
			err := conn.QueryRow(qctx, "SELECT inet_server_port()").Scan(&port)
			qcancel()
			if err != nil {
				t.Logf("the connection to %s through the proxy is closed %s after ctl switchover began: %v", old, time.Since(begun).Round(time.Millisecond), err)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a connection through the read-write port still answers from port %d (%s) after %s became the primary", port, c.memberByPort(port), np)
			}
			time.Sleep(100 * time.Millisecond)
		}
		b, err := whoAnswers(c.proxyDSN(rw, 30*time.Second), 40*time.Second)
		if err != nil {
			t.Fatalf("new connection through %s after the switchover: %v", rw, err)
		}
		if want := c.Member(np).PGPort; b.port != want || b.inRecovery {
			t.Errorf("new read-write connection after the switchover reached %s (in recovery %v), want the new primary %s", c.memberByPort(b.port), b.inRecovery, np)
		}
	})

	t.Run("failover: new connections are held and reach the new primary", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		old := c.Primary()
		oldPort := c.Member(old).PGPort
		c.Exec(old, "CREATE TABLE px_failover (id bigserial PRIMARY KEY, port int, at timestamptz DEFAULT clock_timestamp())")

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		long, err := pgx.Connect(ctx, c.proxyDSN(rw, 10*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer long.Close(context.Background())
		var port int
		if err := long.QueryRow(ctx, "SELECT inet_server_port()").Scan(&port); err != nil || port != oldPort {
			t.Fatalf("long-lived connection through %s: port %d, err %v; want the primary %s on %d", rw, port, err, old, oldPort)
		}

		// The same client through the proxy and directly, side by side.
		w := startConnWriter(c.proxyDSN(rw, 25*time.Second), "px_failover", 20*time.Millisecond, 25*time.Second)
		defer w.halt()
		direct := startConnWriter(c.directDSN(2*time.Second), "px_failover", 20*time.Millisecond, 25*time.Second)
		defer direct.halt()
		deadline := time.Now().Add(20 * time.Second)
		for _, x := range []struct {
			w    *connWriter
			name string
		}{{w, "through the proxy"}, {direct, "directly"}} {
			for ok := 0; ok < 20; {
				ok = 0
				for _, a := range x.w.snapshot() {
					if a.err == nil {
						ok++
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("only %d writes %s succeeded in 20s before the kill", ok, x.name)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}

		killAt := time.Now()
		c.KillHard(old)
		t.Logf("killed %s (agent and postmaster, SIGKILL) in %s", old, time.Since(killAt).Round(time.Millisecond))

		// The long-lived connection must be closed within TTL + 3s.
		closeBy := killAt.Add(proxyTTL + 3*time.Second)
		var closedAfter time.Duration
		for {
			qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := long.Exec(qctx, "SELECT 1")
			qcancel()
			if err != nil {
				closedAfter = time.Since(killAt)
				t.Logf("long-lived connection closed %s after the kill: %v", closedAfter.Round(time.Millisecond), err)
				break
			}
			if time.Now().After(closeBy) {
				t.Errorf("a long-lived connection through the read-write port still answers %s after kill -9 of the primary", time.Since(killAt).Round(time.Millisecond))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}

		l := c.WaitFor("a new primary after kill -9", 60*time.Second, leaderRunning(old))
		np := l.Leader
		npPort := c.Member(np).PGPort

		// Keep writing until 3s of attempts after the first success.
		deadline = time.Now().Add(45 * time.Second)
		for {
			var firstOK time.Time
			var last time.Time
			for _, a := range w.snapshot() {
				if a.start.After(killAt) && a.err == nil && firstOK.IsZero() {
					firstOK = a.end
				}
				last = a.start
			}
			if !firstOK.IsZero() && last.Sub(firstOK) > 3*time.Second {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no write through the proxy succeeded within 45s of %s becoming primary", np)
			}
			time.Sleep(100 * time.Millisecond)
		}
		attempts := w.halt()
		directAttempts := direct.halt()
		var directFailed int
		var directFirstOK time.Time
		directErrs := map[string]int{}
		for _, a := range directAttempts {
			switch {
			case !a.start.After(killAt):
			case a.err != nil:
				directFailed++
				directErrs[shortErr(a.err)]++
			case directFirstOK.IsZero():
				directFirstOK = a.end
			}
		}
		if directFirstOK.IsZero() {
			t.Fatalf("no direct write succeeded after the kill (%d failed: %v)", directFailed, directErrs)
		}
		t.Logf("directly: %d attempts failed after the kill, %s from the kill to the first acknowledged write; errors %v",
			directFailed, directFirstOK.Sub(killAt).Round(time.Millisecond), directErrs)

		var failedBefore, straddling, failedWindow, okAfter int
		var firstOK *attempt
		errs := map[string]int{}
		for i := range attempts {
			a := &attempts[i]
			switch {
			case a.end.Before(killAt):
				if a.err != nil || a.port != oldPort {
					failedBefore++
				}
			case a.start.Before(killAt):
				straddling++
			case firstOK == nil && a.err != nil:
				failedWindow++
				errs[shortErr(a.err)]++
			case firstOK == nil:
				firstOK = a
				fallthrough
			default:
				if a.err != nil {
					t.Errorf("write attempt %s after the kill (%s after the first success on the new primary) failed: %v",
						a.start.Sub(killAt).Round(time.Millisecond), a.start.Sub(firstOK.end).Round(time.Millisecond), a.err)
				} else if a.port != npPort {
					t.Errorf("write attempt %s after the kill landed on port %d (%s), want the new primary %s on %d",
						a.start.Sub(killAt).Round(time.Millisecond), a.port, c.memberByPort(a.port), np, npPort)
				} else {
					okAfter++
				}
			}
		}
		if failedBefore > 0 {
			t.Errorf("%d writes through the proxy failed or missed the primary before the kill", failedBefore)
		}
		if firstOK == nil {
			t.Fatalf("no write succeeded after the kill")
		}
		t.Logf("through the proxy, failover %s -> %s: %d attempts; %d straddling the kill; %d failed in the unavailability window (%s from the kill to the first acknowledged write, on %s), errors %v; %d succeeded after it, all on %s (port %d)",
			old, np, len(attempts), straddling, failedWindow, firstOK.end.Sub(killAt).Round(time.Millisecond), c.memberByPort(firstOK.port), errs, okAfter, np, npPort)
		if directFailed == 0 {
			t.Errorf("test premise: a client connecting directly saw no error during the failover")
		}
		if failedWindow*10 > directFailed {
			t.Errorf("%d write attempts through the proxy failed during the failover, more than a tenth of the %d that failed directly: new connections were refused instead of held (errors %v)",
				failedWindow, directFailed, errs)
		}

		c.Up() // the killed member rejoins as a replica
		c.WaitFor("healthy after the killed member rejoins", 90*time.Second, Healthy(3))
	})

	t.Run("stale view: the proxy fails closed while the store is unreachable", func(t *testing.T) {
		c := c.pxBind(t)
		c.WaitFor("healthy", 90*time.Second, Healthy(3))
		primary := c.Primary()
		pport := c.Member(primary).PGPort
		p := startProxyProc(t, c)
		dsn := c.proxyDSN(p.rw, 3*time.Second)
		b, err := whoAnswers(dsn, 10*time.Second)
		if err != nil || b.port != pport {
			t.Fatalf("a new connection through %s: port %d, err %v; want the primary %s on %d", p.rw, b.port, err, primary, pport)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		long, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer long.Close(context.Background())

		pids := map[string]int{}
		for _, m := range c.DBMembers() {
			pids[m] = c.AgentPID(m)
		}
		fr := newFreezer(t)
		frozenAt := time.Now()
		for m, pid := range pids {
			// The fence guard too: this test is about the proxy failing
			// closed while PostgreSQL itself still accepts writes (without
			// the guard frozen, it kills the primary within the TTL).
			if g := fenceGuardOf(pid); g > 0 {
				if err := fr.freeze(g, "fence guard "+m); err != nil {
					t.Fatal(err)
				}
			}
			if err := fr.freeze(pid, "agent "+m); err != nil {
				t.Fatal(err)
			}
		}

		// Poll both: new connections, and the long-lived one.
		var refusedAfter, closedAfter time.Duration
		deadline := frozenAt.Add(20 * time.Second)
		for (refusedAfter == 0 || closedAfter == 0) && time.Now().Before(deadline) {
			if closedAfter == 0 {
				at := time.Now()
				qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := long.Exec(qctx, "SELECT 1")
				qcancel()
				if err != nil {
					closedAfter = at.Sub(frozenAt)
					t.Logf("long-lived read-write connection closed %s after the store froze: %v", closedAfter.Round(time.Millisecond), err)
				}
			}
			if refusedAfter == 0 {
				at := time.Now()
				if _, err := whoAnswers(dsn, 3*time.Second); err != nil {
					refusedAfter = at.Sub(frozenAt)
					t.Logf("new read-write connections refused %s after the store froze: %v", refusedAfter.Round(time.Millisecond), err)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		limit := proxyTTL + 3*time.Second
		if refusedAfter == 0 || refusedAfter > limit {
			t.Errorf("new read-write connections were refused %s after the store froze (0: not within 20s), want within TTL + 3s = %s", refusedAfter, limit)
		}
		if closedAfter == 0 || closedAfter > limit {
			t.Errorf("the long-lived read-write connection was closed %s after the store froze (0: not within 20s), want within TTL + 3s = %s", closedAfter, limit)
		}
		// Still refused, read-only too, while the primary itself keeps
		// accepting writes: exactly when a stale view would be dangerous.
		for i := 0; i < 3; i++ {
			if b, err := whoAnswers(dsn, 3*time.Second); err == nil {
				t.Errorf("with the store frozen, a new read-write connection reached %s", c.memberByPort(b.port))
			}
		}
		if b, err := whoAnswers(c.proxyDSN(p.ro, 3*time.Second), 5*time.Second); err == nil {
			t.Errorf("with the store frozen, a new read-only connection reached %s", c.memberByPort(b.port))
		}
		if !c.Writable(primary) {
			t.Errorf("test premise: %s should still accept writes directly while its agent is frozen", primary)
		}
		if n, err := p.metric("holdfast_proxy_refused_total", `listener="rw"`, `reason="stale_view"`); err != nil || n < 1 {
			t.Errorf(`holdfast_proxy_refused_total{listener="rw",reason="stale_view"} = %v (err %v), want >= 1`, n, err)
		}

		thawedAt := time.Now()
		fr.thawAll()
		c.WaitFor("healthy after the store thawed", 90*time.Second, Healthy(3))
		deadline = time.Now().Add(30 * time.Second)
		for {
			l, lerr := c.List()
			b, err := whoAnswers(dsn, 10*time.Second)
			if lerr == nil && err == nil && l.Leader != "" && b.port == c.Member(l.Leader).PGPort && !b.inRecovery {
				t.Logf("the proxy routes read-write connections to %s again, %s after the agents resumed", l.Leader, time.Since(thawedAt).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the proxy did not route read-write connections to the primary within 30s of the cluster being healthy again: port %d, err %v (list err %v)", b.port, err, lerr)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// shortErr is an error's message without addresses that differ per attempt.
func shortErr(err error) string {
	s := err.Error()
	s = regexp.MustCompile(`127\.0\.0\.1:\d+`).ReplaceAllString(s, "127.0.0.1:*")
	s = regexp.MustCompile(`\(\[?::?1?\]?:\d+\)`).ReplaceAllString(s, "")
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
