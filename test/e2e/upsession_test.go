package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestUpSessionProxy: `holdfast up --proxy-mode session` runs the local
// cluster's own proxy in session mode with nothing done by hand. The
// agents keep the auth role the proxy reads verifiers as
// (postgresql.proxy_auth, its password in the layout), the proxy takes
// that password from the layout, and a psql-like session — a setting and
// an SQL PREPARE — idle across a `ctl switchover` runs its next statements
// on the new primary with both, on the same client connection.
func TestUpSessionProxy(t *testing.T) {
	c := StartCluster(t, 2, "--proxy-mode", "session")
	if c.Layout.ProxyMode != "session" || c.Layout.ProxyAuthPassword == "" {
		t.Fatalf("layout: proxy mode %q, auth password set %v; want session and a password", c.Layout.ProxyMode, c.Layout.ProxyAuthPassword != "")
	}
	c.WaitFor("healthy", 90*time.Second, Healthy(2))
	waitProxyAuth(t, c)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.Layout.SuperuserDSN(c.Layout.ProxyRWPort, 10*time.Second))
	if err != nil {
		t.Fatalf("connect through the cluster's session-mode proxy: %v", err)
	}
	defer conn.Close(context.Background())
	for _, sql := range []string{"SET application_name = 'up-session'", "PREPARE whoami AS SELECT inet_server_port(), current_setting('application_name')"} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	whoami := func() (int, string) {
		t.Helper()
		qctx, cancel := context.WithTimeout(ctx, sessionQueryTimeout)
		defer cancel()
		var port int
		var app string
		if err := conn.QueryRow(qctx, "EXECUTE whoami", pgx.QueryExecModeSimpleProtocol).Scan(&port, &app); err != nil {
			t.Fatalf("EXECUTE whoami through the proxy: %v", err)
		}
		return port, app
	}
	old := c.Primary()
	if port, app := whoami(); port != c.Member(old).PGPort || app != "up-session" {
		t.Fatalf("before the switchover: port %d, application_name %q; want the primary's %d and up-session", port, app, c.Member(old).PGPort)
	}
	if out, err := c.ctlRun(time.Minute, "switchover"); err != nil {
		t.Fatalf("ctl switchover: %v\n%s", err, out)
	}
	np := c.WaitFor("a new primary after the switchover", 60*time.Second, leaderRunning(old)).Leader
	if port, app := whoami(); port != c.Member(np).PGPort || app != "up-session" {
		t.Errorf("after the switchover: port %d, application_name %q; want the new primary %s's %d and up-session", port, app, np, c.Member(np).PGPort)
	}
}
