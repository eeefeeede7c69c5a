//go:build linux

package kube_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil/release"
)

// Timeouts of the session proxy step.
const (
	// sessionRolloutTimeout bounds the role-aware rollout the upgrade to
	// proxy.mode=session starts (the members get the auth role's password:
	// three members, one switchover) and the proxy Deployment's.
	sessionRolloutTimeout = 8 * time.Minute
	// sessionWait bounds how long the psql session stays idle waiting for
	// the test to let it go on (the switchover happens meanwhile).
	sessionWait = 4 * time.Minute
)

// sessionGoFile is the file whose appearance lets the idle psql session of
// testSessionProxy go on; under the data volume, which the agent's
// container can write.
const sessionGoFile = "/var/lib/holdfast/session-proxy-go"

// testSessionProxy: helm upgrade with proxy.mode=session. The members get
// the auth role's password from the chart's Secret and the primary keeps
// the role; the proxy pods log in to the members as the clients (TLS, the
// chain checked against the chart's CA). A psql session through the proxy
// Service with SET application_name, idle across a `ctl switchover`, runs
// its next statement on the new primary with the same setting, on the same
// connection.
func testSessionProxy(t *testing.T, e *release.Env) {
	// Not supervised: an earlier step (SupervisedRollout) leaves it on, and
	// this rollout must not wait for an approval.
	e.Upgrade("proxy.mode=session", "rollout.supervised=false")
	rev := e.UpdateRevision()
	e.WaitRolledOut("the session proxy values rolled out", rev, sessionRolloutTimeout)
	if out, err := e.C.Kubectl("rollout", "status", "deployment/"+release.Proxy, "-n", release.NS,
		"--timeout", sessionRolloutTimeout.String()); err != nil {
		t.Fatalf("the proxy Deployment did not roll out: %v\n%s", err, out)
	}
	client := e.AnyLive()
	e.Eventually("a login through the session-mode proxy", 2*time.Minute, func() error {
		out, err := e.Psql(client, release.Proxy, 5432, "select pg_is_in_recovery()")
		if err == nil && out != "f" {
			err = fmt.Errorf("pg_is_in_recovery() = %q through the read-write port", out)
		}
		return err
	})

	old := e.Primary()
	// The session: a setting, one statement, then idle (a shell loop in
	// psql, the connection open and between transactions) until the test
	// creates sessionGoFile, then one statement more.
	e.C.MustKubectl("exec", "-n", release.NS, client, "-c", "holdfast", "--", "rm", "-f", sessionGoFile)
	script := fmt.Sprintf(`PGPASSWORD="$HOLDFAST_POSTGRESQL_SUPERUSER_PASSWORD" PGCONNECT_TIMEOUT=10 psql -XAtq -v ON_ERROR_STOP=1 -h %s -p 5432 -U postgres -d postgres <<'EOF'
SET application_name = 'kube-session';
SELECT 'before', host(inet_server_addr()), current_setting('application_name');
\! sh -c 'i=0; while [ ! -f %s ] && [ $i -lt %d ]; do sleep 1; i=$((i+1)); done'
SELECT 'after', host(inet_server_addr()), current_setting('application_name'), pg_is_in_recovery();
EOF`, release.Proxy, sessionGoFile, int(sessionWait/time.Second))
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := e.C.Kubectl("exec", "-n", release.NS, client, "-c", "holdfast", "--", "sh", "-c", script)
		done <- result{out, err}
	}()
	e.Eventually("the session idle on the primary", 2*time.Minute, func() error {
		out, err := e.Psql(client, release.Release+"-rw", 5432, "select count(*) from pg_stat_activity where application_name = 'kube-session' and state = 'idle'")
		if err == nil && out != "1" {
			err = fmt.Errorf("%s idle kube-session sessions on the primary", out)
		}
		return err
	})
	if out, err := ctl(e, client, "switchover"); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	var np release.Member
	e.Eventually("another member labelled primary", release.FailoverTimeout, func() error {
		p, ok := e.CurrentPrimary()
		if !ok || p.Name == old.Name {
			return fmt.Errorf("primary: %q", p.Name)
		}
		np = p
		return nil
	})
	e.C.MustKubectl("exec", "-n", release.NS, client, "-c", "holdfast", "--", "touch", sessionGoFile)
	var r result
	select {
	case r = <-done:
	case <-time.After(sessionWait + time.Minute):
		t.Fatal("the psql session did not finish")
	}
	e.C.MustKubectl("exec", "-n", release.NS, client, "-c", "holdfast", "--", "rm", "-f", sessionGoFile)
	if r.err != nil {
		t.Fatalf("the psql session through the session-mode proxy failed across the switchover: %v\n%s", r.err, r.out)
	}
	lines := strings.Split(strings.TrimSpace(r.out), "\n")
	wantLines := []string{
		"before|" + e.PodIP(old.Name) + "|kube-session",
		"after|" + e.PodIP(np.Name) + "|kube-session|f",
	}
	if len(lines) != 2 || lines[0] != wantLines[0] || lines[1] != wantLines[1] {
		t.Errorf("the session's output:\n%s\nwant:\n%s\n(the session began on %s and must go on on the new primary %s with its setting)",
			r.out, strings.Join(wantLines, "\n"), old.Name, np.Name)
	}
}
