package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgbenchtest"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

// stallTimeout is how long the client waits for the next answer before
// it calls the session stalled: answers come many times a second while
// the session relays (even under the race detector on a loaded machine),
// and never again once it has stalled.
const stallTimeout = time.Minute

// sessionDetached reports whether p's one protocol session has let its
// server connection go (false: none, or still attached).
func sessionDetached(p *Proxy) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ps := range p.protos {
		return ps.bc == nil
	}
	return false
}

// realSessionProxy starts a real PostgreSQL (pg-0, with the auth role set
// up) and a session-mode proxy in front of it; it returns the proxy, its
// source, the stand-in for pg-0 in views, and the superuser's password.
// mods change the proxy's options after session mode's.
func realSessionProxy(ctx context.Context, t *testing.T, mods ...func(*Options)) (*Proxy, *fakeSource, *backend, string) {
	t.Helper()
	const superPassword, authPassword = "pipeline-super", "pipeline-auth"
	_, port := pgtest.Start(ctx, t, "pg-0", superPassword)
	admin, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", port, superPassword))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	for _, sql := range []string{pgauth.SetupSQL, "ALTER ROLE " + pgauth.AuthRole + " PASSWORD '" + authPassword + "'"} {
		if err := admin.Exec(ctx, sql).Close(); err != nil {
			t.Fatalf("set up the auth role: %v", err)
		}
	}
	b := &backend{name: "pg-0", port: port}
	src := newFakeSource(mkView("pg-0", primary(b)))
	p := startProxy(t, src, func(o *Options) {
		sessionMode(o)
		o.Session.AuthPassword = authPassword
		o.HoldTimeout = 30 * time.Second
		for _, m := range mods {
			m(o)
		}
	})
	return p, src, b, superPassword
}

// rawThroughProxy logs in through the proxy with pgconn as postgres and
// takes the protocol connection over.
func rawThroughProxy(ctx context.Context, t *testing.T, p *Proxy, password string) *pgconn.HijackedConn {
	t.Helper()
	return rawThroughProxyAs(ctx, t, p, "postgres", password)
}

// rawThroughProxyAs is rawThroughProxy as user.
func rawThroughProxyAs(ctx context.Context, t *testing.T, p *Proxy, user, password string) *pgconn.HijackedConn {
	t.Helper()
	_, port, err := net.SplitHostPort(p.RWAddr())
	if err != nil {
		t.Fatal(err)
	}
	pc, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=postgres sslmode=disable", port, user, password))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	return hc
}

// pipeline sends msgs to the server on their own goroutine, written
// without waiting for any answer, while the caller reads the answers
// until it has seen syncs ReadyForQuery: a client that pipelines as libpq
// and pgx do (they read while a write would block). It returns the
// DataRows seen, or fails the test when the answers stop coming.
func pipeline(t *testing.T, hc *pgconn.HijackedConn, msgs []pgproto3.FrontendMessage, syncs int) int {
	t.Helper()
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = m.Encode(buf); err != nil {
			t.Fatal(err)
		}
	}
	wrote := make(chan error, 1)
	go func() {
		_, err := hc.Conn.Write(buf)
		wrote <- err
	}()
	rows, rfq := 0, 0
	for rfq < syncs {
		_ = hc.Conn.SetReadDeadline(time.Now().Add(stallTimeout))
		m, err := hc.Frontend.Receive()
		if err != nil {
			t.Fatalf("stalled after %d of %d answers (%d rows) to %d MB of requests: %v", rfq, syncs, rows, len(buf)>>20, err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows++
		case *pgproto3.ReadyForQuery:
			rfq++
		case *pgproto3.ErrorResponse:
			t.Fatalf("error %s: %s", m.Code, m.Message)
		}
	}
	if err := <-wrote; err != nil { // all answered: all written
		t.Fatalf("write the pipeline: %v", err)
	}
	_ = hc.Conn.SetDeadline(time.Time{})
	return rows
}

// A client that pipelines megabytes of requests before it reads its
// answers gets them all: the session passes the server's answers to the
// client while it is still passing requests to the server (a session
// that did one at a time stalled once the socket buffers were full both
// ways: the server blocked writing answers nobody read, the proxy blocked
// writing requests the server did not read). The session is then still
// tracked: it leaves the server at the boundary when the primary is
// withdrawn and, moved to a new connection, still has its prepared
// statement.
func TestSessionPipelineBothWays(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, src, b, password := realSessionProxy(ctx, t)
	// More than the socket buffers hold both ways (Linux lets a
	// loopback receive buffer grow to 32 MB): 64 MB of requests, 80 MB of
	// answers.
	pad := strings.Repeat("x", 16000)
	const n, perQuery = 4000, 20 // rows of 1 kB

	t.Run("simple queries", func(t *testing.T) {
		hc := rawThroughProxy(ctx, t, p, password)
		msgs := make([]pgproto3.FrontendMessage, n)
		for i := range msgs {
			msgs[i] = &pgproto3.Query{String: fmt.Sprintf("SELECT repeat('y', 1000) FROM generate_series(1, %d) g -- %s", perQuery, pad)}
		}
		if rows := pipeline(t, hc, msgs, n); rows != n*perQuery {
			t.Errorf("%d rows, want %d", rows, n*perQuery)
		}
	})

	t.Run("extended protocol batches", func(t *testing.T) {
		hc := rawThroughProxy(ctx, t, p, password)
		msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "echo", Query: "SELECT left($1::text, 1) || repeat('y', 1000) FROM generate_series(1, $2::int)"}}
		const perSync = 100
		for i := range n {
			msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "echo", Parameters: [][]byte{[]byte(pad), []byte(fmt.Sprint(perQuery))}}, &pgproto3.Execute{})
			if (i+1)%perSync == 0 {
				msgs = append(msgs, &pgproto3.Sync{})
			}
		}
		if rows := pipeline(t, hc, msgs, n/perSync); rows != n*perQuery {
			t.Errorf("%d rows, want %d", rows, n*perQuery)
		}

		// The session moves: no primary (it leaves pg-0 at the boundary),
		// then pg-0 again (it logs in anew and replays "echo").
		gens := func() int {
			p.mu.Lock()
			defer p.mu.Unlock()
			for ps := range p.protos {
				return ps.gens
			}
			return 0
		}
		eventually(t, "only this subtest's session left", func() bool {
			p.mu.Lock()
			defer p.mu.Unlock()
			return len(p.protos) == 1
		})
		before := gens()
		src.set(mkView(""), true)
		eventually(t, "the session left pg-0", func() bool { return sessionDetached(p) })
		src.set(mkView("pg-0", primary(b)), true)
		msgs = []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: "echo", Parameters: [][]byte{[]byte("moved"), []byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}}
		if rows := pipeline(t, hc, msgs, 1); rows != 1 {
			t.Errorf("after the move: %d rows, want 1", rows)
		}
		if after := gens(); after != before+1 {
			t.Errorf("backend connections: %d before the move, %d after; want one more", before, after)
		}
	})
}

// pgbench's pipeline mode (\startpipeline … \endpipeline, libpq's
// pipeline under -M extended: no Sync until the end) through the session
// proxy: every transaction completes. pgbench sends too slowly to fill
// the server's socket buffer, so this did not stall before the outboxes
// either (TestSessionPipelineBothWays does): it shows the tracker follows
// a libpq pipeline.
func TestSessionPgbenchPipeline(t *testing.T) {
	bin := filepath.Join(testutil.PGBinDir(t), "pgbench")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no pgbench beside PostgreSQL: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p, _, _, password := realSessionProxy(ctx, t)
	var script strings.Builder
	script.WriteString("\\startpipeline\n")
	line := "SELECT repeat('y', 1000) FROM generate_series(1, 20) WHERE '" + strings.Repeat("x", 1000) + "' <> '';\n"
	for range 500 {
		script.WriteString(line)
	}
	script.WriteString("\\endpipeline\n")
	file := filepath.Join(testutil.Dir(t), "pipeline.sql")
	if err := os.WriteFile(file, []byte(script.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, err := net.SplitHostPort(p.RWAddr())
	if err != nil {
		t.Fatal(err)
	}
	const txs = 5
	cmd := exec.CommandContext(ctx, bin, "-n", "-M", "extended", "-c", "1", "-t", fmt.Sprint(txs), "-f", file)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "PG") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGPASSWORD="+password,
		"PGDATABASE=postgres", "PGSSLMODE=disable")
	out, err := cmd.CombinedOutput()
	sum, perr := pgbenchtest.Parse(string(out))
	if err != nil || perr != nil || sum.Processed != txs || sum.Failed != 0 {
		t.Fatalf("pgbench: %v; summary %+v (%v); want %d transactions, none failed\n%s", err, sum, perr, txs, lastLines(string(out), 20))
	}
}

// lastLines is the end of s, n lines at most.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(len(l)-n, 0):], "\n")
}
