package pg

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pgauth"
	"github.com/holdfast/holdfast/internal/procstat"
	"github.com/holdfast/holdfast/internal/testutil"
)

// helperEnv makes the test binary act as a tiny agent that starts
// PostgreSQL and then waits to be killed (see TestPdeathsig).
const helperEnv = "HOLDFAST_PG_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperMain()
		return
	}
	os.Exit(m.Run())
}

// helperMain starts PostgreSQL from the data directory in the environment,
// prints the postmaster's pid and blocks until killed.
func helperMain() {
	port, _ := strconv.Atoi(os.Getenv("HELPER_PORT"))
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	e, err := New(testOptions(os.Getenv("HELPER_BIN"), os.Getenv("HELPER_DIR"), "pg-helper", port, acct))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	if err := e.Start(context.Background(), StartOptions{}); err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	fmt.Println("PID", e.PID())
	time.Sleep(2 * time.Minute) // a safety net: the test kills us long before
	os.Exit(0)
}

// testOptions are the options of a test member living in dir/<name>.
func testOptions(bin, dir, name string, port int, acct osuser.Account) Options {
	return Options{
		BinDir:      bin,
		DataDir:     filepath.Join(dir, name, "data"),
		LogFile:     filepath.Join(dir, name, "postgresql.log"),
		Account:     acct,
		Member:      name,
		ListenHost:  "127.0.0.1",
		Port:        port,
		Parameters:  map[string]string{"fsync": "off", "shared_buffers": "16MB", "max_connections": "30"},
		PgHBA:       []string{"host all nobody 0.0.0.0/0 reject"},
		InitdbArgs:  []string{"--no-sync"},
		Superuser:   Credentials{Username: "postgres", Password: `su'pa\ss`},
		Replication: Credentials{Username: "replicator", Password: "repl-secret"},
	}
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newTestEngine returns an engine for member name under dir; PostgreSQL
// runs as the postgres account when the test runs as root.
func newTestEngine(t *testing.T, dir, name string) *Engine {
	t.Helper()
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		t.Skipf("no postgres account: %v", err)
	}
	o := testOptions(testutil.PGBinDir(t), dir, name, testutil.FreePort(t), acct)
	o.Logger = slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Stop(ctx, Immediate); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		e.Close()
		if t.Failed() {
			if b, err := os.ReadFile(o.LogFile); err == nil {
				t.Logf("%s log:\n%s", name, lastLines(string(b), 60))
			}
		}
	})
	return e
}

func (e *Engine) source() Source { return Source{Host: e.o.ConnectHost, Port: e.o.Port} }

// waitStatus polls Status until ok accepts it.
func waitStatus(ctx context.Context, t *testing.T, e *Engine, what string, ok func(Status) bool) Status {
	t.Helper()
	var last Status
	var lastErr error
	for {
		st, err := e.Status(ctx)
		if err == nil && ok(st) {
			return st
		}
		if err != nil && e.Running() && ctx.Err() == nil && !pgconn.Timeout(err) {
			// Starting, recovering or reconfiguring is Ready=false, not an
			// error. (A connection or query that timed out is the
			// machine's load, not the server's state: asked again.)
			t.Errorf("%s: Status while postgres runs: %v", e.o.Member, err)
		}
		last, lastErr = st, err
		if pid, exitErr := e.LastExit(); pid != 0 {
			t.Fatalf("%s: waiting for %s: postgres exited: %v", e.o.Member, what, exitErr)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: waiting for %s: last status %+v, error %v", e.o.Member, what, last, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func ids(ctx context.Context, t *testing.T, e *Engine) []int64 {
	t.Helper()
	rows, err := e.Query(ctx, "SELECT id FROM t ORDER BY id")
	if err != nil {
		t.Fatalf("%s: %v", e.o.Member, err)
	}
	var out []int64
	for _, r := range rows {
		out = append(out, r[0].(int64))
	}
	return out
}

func TestReplicationFailoverRewind(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	dir := testutil.Dir(t)
	a := newTestEngine(t, dir, "pg-a")
	b := newTestEngine(t, dir, "pg-b")
	step := func(name string) func() {
		start := time.Now()
		return func() { t.Logf("step %-40s %v", name, time.Since(start).Round(time.Millisecond)) }
	}

	done := step("initdb")
	if st, err := a.Inspect(); err != nil || st.Kind != DataDirMissing {
		t.Fatalf("before initdb: %+v %v", st, err)
	}
	if err := a.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := a.Inspect()
	if err != nil || st.Kind != DataDirValid || st.Control == nil {
		t.Fatalf("after initdb: %+v %v", st, err)
	}
	if !st.Control.DataChecksums || st.Control.State != StateShutDown || st.Control.CheckpointTimeline != 1 {
		t.Errorf("control data after initdb: %+v", st.Control)
	}
	sysid := st.Control.SystemID
	if err := a.WriteMarker("test", sysid); err != nil {
		t.Fatal(err)
	}
	if st, err := a.Inspect(); err != nil || st.Marker == nil || *st.Marker != (Marker{Cluster: "test", SystemID: sysid}) {
		t.Fatalf("marker: %+v %v", st.Marker, err)
	}
	if _, err := os.Stat(a.o.DataDir + ".initdb-tmp"); !os.IsNotExist(err) {
		t.Errorf("initdb left its temporary directory: %v", err)
	}
	done()

	done = step("start primary")
	if err := a.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx, StartOptions{}); err == nil {
		t.Error("a second Start was accepted")
	}
	ps := waitStatus(ctx, t, a, "primary ready", func(s Status) bool { return s.Ready })
	if ps.InRecovery || ps.Timeline != 1 || ps.SystemID != sysid || ps.WriteLSN == 0 {
		t.Errorf("primary status: %+v", ps)
	}
	done()

	done = step("replication role and slots")
	for i := 0; i < 2; i++ {
		if err := a.EnsureReplicationUser(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.EnsureSlots(ctx, []string{"pg_b"}); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := a.Query(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'")
	if err != nil || len(rows) != 1 || !strings.HasPrefix(rows[0][0].(string), "SCRAM-SHA-256$4096:") {
		t.Fatalf("replicator password: %v %v", rows, err)
	}
	verifier := rows[0][0].(string)
	if err := a.EnsureReplicationUser(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, _ := a.Query(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = 'replicator'"); rows[0][0].(string) != verifier {
		t.Error("EnsureReplicationUser rewrote a correct password")
	}
	rows, err = a.Query(ctx, "SELECT slot_name::text, restart_lsn IS NOT NULL FROM pg_replication_slots")
	if err != nil || len(rows) != 1 || rows[0][0] != "pg_b" || rows[0][1] != true {
		t.Fatalf("slots: %v %v", rows, err)
	}
	done()

	done = step("the session proxy's auth role")
	// With the password set, the primary installs the role and its
	// function; the role can call it (and log in with the password), and
	// a second call writes nothing.
	a.o.ProxyAuth = ProxyAuth{Role: pgauth.AuthRole, Password: "auth-secret",
		Function: pgauth.AuthFunction + "(text)", SetupSQL: pgauth.SetupSQL}
	if err := a.EnsureProxyAuth(ctx); err != nil {
		t.Fatal(err)
	}
	const verifierOf = "SELECT rolpassword FROM pg_authid WHERE rolname = 'holdfast_auth' AND rolcanlogin AND NOT rolsuper"
	rows, err = a.Query(ctx, verifierOf)
	if err != nil || len(rows) != 1 || !strings.HasPrefix(rows[0][0].(string), "SCRAM-SHA-256$4096:") {
		t.Fatalf("holdfast_auth: %v %v", rows, err)
	}
	authVerifier := rows[0][0].(string)
	ac, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=holdfast_auth password=auth-secret dbname=postgres sslmode=disable", a.o.Port))
	if err != nil {
		t.Fatalf("log in as holdfast_auth: %v", err)
	}
	var v string
	err = ac.QueryRow(ctx, "SELECT verifier FROM holdfast.get_auth('replicator')").Scan(&v)
	ac.Close(ctx)
	if err != nil || v != verifier {
		t.Fatalf("holdfast.get_auth as holdfast_auth = %q, %v; want the replicator's verifier", v, err)
	}
	// Dropped by hand: back after the next start or promotion, not before
	// (the call is free once it has succeeded).
	if err := a.Exec(ctx, "DROP FUNCTION holdfast.get_auth(text)"); err != nil {
		t.Fatal(err)
	}
	if err := a.EnsureProxyAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, _ := a.Query(ctx, "SELECT to_regprocedure('holdfast.get_auth(text)') IS NULL"); rows[0][0] != true {
		t.Error("EnsureProxyAuth ran SQL again after its first success")
	}
	a.proxyAuthDone = false // as Start and Promote do
	if err := a.EnsureProxyAuth(ctx); err != nil {
		t.Fatal(err)
	}
	if rows, _ := a.Query(ctx, "SELECT to_regprocedure('holdfast.get_auth(text)') IS NOT NULL"); rows[0][0] != true {
		t.Error("EnsureProxyAuth did not reinstall the function")
	}
	if rows, _ := a.Query(ctx, verifierOf); len(rows) != 1 || rows[0][0].(string) != authVerifier {
		t.Errorf("EnsureProxyAuth rewrote a correct password: %v", rows)
	}
	done()

	done = step("clone and start standby")
	if err := b.Clone(ctx, a.source()); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx, StartOptions{Standby: true, Primary: ptr(a.source()), SlotName: "pg_b"}); err != nil {
		t.Fatal(err)
	}
	bs := waitStatus(ctx, t, b, "standby streaming", func(s Status) bool { return s.Ready && s.Streaming })
	if !bs.InRecovery || bs.SystemID != sysid || bs.Timeline != 1 || bs.UpstreamPort != a.o.Port || bs.UpstreamHost != "127.0.0.1" {
		t.Errorf("standby status: %+v", bs)
	}
	done()

	done = step("replicate a row")
	if err := a.Exec(ctx, "CREATE TABLE t (id int8 PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	for {
		if rows, err := b.Query(ctx, "SELECT count(*) FROM pg_class WHERE relname = 't'"); err == nil && rows[0][0].(int64) == 1 {
			if slices.Equal(ids(ctx, t, b), []int64{1}) {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("row 1 never reached the standby")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rows, err = a.Query(ctx, "SELECT application_name, state FROM pg_stat_replication")
	if err != nil || len(rows) != 1 || rows[0][0] != "pg-b" || rows[0][1] != "streaming" {
		t.Errorf("pg_stat_replication: %v %v", rows, err)
	}
	done()

	// Diverge: cut the standby off, write a row only the old primary has,
	// crash the old primary, promote the standby.
	done = step("disconnect standby, diverge, crash")
	if err := b.Reconfigure(ctx, StartOptions{Standby: true}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, b, "standby disconnected", func(s Status) bool { return s.Ready && !s.Streaming && s.UpstreamHost == "" })
	if err := a.Exec(ctx, "INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	// Commits only the crashed primary holds: its rewind discards them.
	if err := a.Exec(ctx, "CREATE TABLE lost AS SELECT generate_series(1, 20000) AS x"); err != nil {
		t.Fatal(err)
	}
	aEnd, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Stop(ctx, Immediate); err != nil {
		t.Fatal(err)
	}
	if pid, _ := a.LastExit(); pid == 0 || a.Running() || a.PID() != 0 {
		t.Error("a still looks alive after Stop")
	}
	if st, err := a.Inspect(); err != nil || st.Control.State != StateInProduction {
		t.Errorf("crashed primary's control data: %+v %v", st.Control, err)
	}
	if got := ids(ctx, t, b); !slices.Equal(got, []int64{1}) {
		t.Fatalf("standby saw rows %v before promotion; the test needs it not to see row 2", got)
	}
	done()

	done = step("promote")
	if err := b.Reconfigure(ctx, StartOptions{}); err == nil {
		t.Error("Reconfigure switched a running standby to primary")
	}
	if err := b.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	bs = waitStatus(ctx, t, b, "promoted", func(s Status) bool { return s.Ready })
	if bs.InRecovery || bs.Timeline != 2 {
		t.Fatalf("after promotion: %+v", bs)
	}
	if err := b.Exec(ctx, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	hist, err := b.TimelineHistory(ctx, 2)
	if err != nil || len(hist) != 1 || hist[0].ParentTimeline != 1 || hist[0].SwitchPoint == 0 {
		t.Fatalf("timeline 2 history: %+v %v", hist, err)
	}
	if h, err := b.TimelineHistory(ctx, 1); err != nil || h != nil {
		t.Errorf("timeline 1 history: %v %v", h, err)
	}
	if err := b.EnsureSlots(ctx, []string{"pg_a"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Reconfigure(ctx, StartOptions{}); err != nil { // drop primary_conninfo now it is a primary
		t.Fatal(err)
	}
	done()

	done = step("rewind the old primary")
	res, err := a.Rewind(ctx, b.source())
	if err != nil {
		t.Fatal(err)
	}
	if !res.Rewound {
		t.Fatal("pg_rewind found nothing to do on a diverged primary")
	}
	// The discarded range runs from timeline 2's switch point to the end
	// of what the crashed primary wrote (at least its last commit).
	if res.Diverged != (cluster.Position{Timeline: 1, LSN: hist[0].SwitchPoint}) {
		t.Errorf("diverged at %+v, want timeline 1 at the switch point %s", res.Diverged, hist[0].SwitchPoint)
	}
	if res.EndOfWAL < aEnd.Position().LSN || res.EndOfWAL > aEnd.Position().LSN+64<<10 {
		t.Errorf("end of WAL %s, want at or just past the crashed primary's last position %s", res.EndOfWAL, aEnd.Position().LSN)
	}
	if d := res.Discarded(); d < 500<<10 || d != int64(res.EndOfWAL-res.Diverged.LSN) {
		t.Errorf("discarded %d bytes, want the 20000 lost rows' WAL (> 500 KiB) from %s to %s", d, res.Diverged.LSN, res.EndOfWAL)
	}
	done()

	done = step("old primary follows the new one")
	if err := a.Start(ctx, StartOptions{Standby: true, Primary: ptr(b.source()), SlotName: "pg_a"}); err != nil {
		t.Fatal(err)
	}
	as := waitStatus(ctx, t, a, "rewound standby streaming on timeline 2", func(s Status) bool {
		return s.Ready && s.Streaming && s.Timeline == 2
	})
	if !as.InRecovery || as.UpstreamPort != b.o.Port || as.Position().Timeline != 2 {
		t.Errorf("rewound standby: %+v", as)
	}
	for !slices.Equal(ids(ctx, t, a), []int64{1, 3}) {
		if ctx.Err() != nil {
			t.Fatalf("rewound standby has rows %v, want [1 3]", ids(ctx, t, a))
		}
		time.Sleep(50 * time.Millisecond)
	}
	done()

	done = step("rewind without divergence")
	if err := a.Stop(ctx, Fast); err != nil {
		t.Fatal(err)
	}
	res, err = a.Rewind(ctx, b.source())
	if err != nil {
		t.Fatal(err)
	}
	if res.Rewound || res.Discarded() != 0 {
		t.Errorf("pg_rewind rewound a standby that had not diverged: %+v", res)
	}
	done()
}

func ptr[T any](v T) *T { return &v }

func TestInitdbRefusesNonEmptyAndCloneCleansUp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := testutil.Dir(t)
	e := newTestEngine(t, dir, "pg-x")

	if err := os.MkdirAll(e.o.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := e.Inspect(); err != nil || st.Kind != DataDirEmpty || st.Err() != nil {
		t.Fatalf("empty: %+v %v", st, err)
	}
	precious := filepath.Join(e.o.DataDir, "precious.txt")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := e.Inspect()
	if err != nil || st.Kind != DataDirInvalid || st.Err() == nil || !strings.Contains(st.Reason, "precious.txt") || !strings.Contains(st.Reason, "will not touch") {
		t.Fatalf("invalid: %+v %v", st, err)
	}
	if err := e.Initdb(ctx); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("Initdb over a non-empty directory: %v", err)
	}
	if err := e.Clone(ctx, Source{Host: "127.0.0.1", Port: 1}); err == nil {
		t.Fatal("Clone over a non-empty directory succeeded")
	}
	entries, _ := os.ReadDir(e.o.DataDir)
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" || len(entries) != 1 {
		t.Fatalf("the directory was touched: %v %v", entries, err)
	}
	if err := e.Start(ctx, StartOptions{}); err == nil {
		t.Fatal("Start on a directory without PostgreSQL data succeeded")
	}

	// Clone from nowhere: fails with pg_basebackup's words, leaves nothing.
	if err := os.RemoveAll(e.o.DataDir); err != nil {
		t.Fatal(err)
	}
	err = e.Clone(ctx, Source{Host: "127.0.0.1", Port: testutil.FreePort(t)})
	if err == nil {
		t.Fatal("Clone from an unreachable source succeeded")
	}
	if !strings.Contains(err.Error(), "pg_basebackup") || !strings.Contains(err.Error(), "connection") {
		t.Errorf("the error should carry pg_basebackup's output: %v", err)
	}
	t.Logf("clone error: %v", err)
	if st, _ := e.Inspect(); st.Kind != DataDirMissing {
		t.Errorf("after a failed clone: %+v", st)
	}
	if _, err := os.Stat(e.o.DataDir + ".clone-tmp"); !os.IsNotExist(err) {
		t.Errorf("clone left its temporary directory: %v", err)
	}

	// MoveAside keeps every old copy: one may hold the only trace of commits.
	if err := os.MkdirAll(e.o.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	first, err := e.MoveAside("test")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.o.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.o.DataDir, "mark"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // a different timestamp
	second, err := e.MoveAside("test again")
	if err != nil {
		t.Fatal(err)
	}
	olds, _ := filepath.Glob(e.o.DataDir + ".old-*")
	if len(olds) != 2 || first == second {
		t.Errorf("old copies: %v, want both %s and %s", olds, first, second)
	}
	if _, err := os.Stat(filepath.Join(second, "mark")); err != nil {
		t.Errorf("the newest copy lost its content: %v", err)
	}
	if _, err := e.MoveAside("nothing there"); err == nil {
		t.Error("MoveAside of a missing directory succeeded")
	}
}

// TestStrayAndConfig covers AdoptOrStopStray (a postmaster started by
// another engine on the same data directory is stopped), idempotent
// configuration, and Status before readiness.
func TestStrayAndConfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := testutil.Dir(t)
	prev := newTestEngine(t, dir, "pg-s")
	if err := prev.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := prev.Status(ctx); err == nil {
		t.Error("Status of a PostgreSQL that does not run gave no error")
	}
	for i := 0; i < 2; i++ {
		if err := prev.Start(ctx, StartOptions{}); err != nil {
			t.Fatal(err)
		}
		waitStatus(ctx, t, prev, "ready", func(s Status) bool { return s.Ready })
		if err := prev.Stop(ctx, Fast); err != nil {
			t.Fatal(err)
		}
	}
	conf, _ := os.ReadFile(filepath.Join(prev.o.DataDir, "postgresql.conf"))
	if n := strings.Count(string(conf), includeLine); n != 1 {
		t.Errorf("postgresql.conf has %d include lines", n)
	}
	fi, err := os.Stat(filepath.Join(prev.o.DataDir, ConfFile))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != prev.o.Account.UID {
		t.Errorf("%s: %v %v", ConfFile, fi.Mode(), err)
	}
	if err := prev.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	pid := prev.PID()
	waitStatus(ctx, t, prev, "ready", func(s Status) bool { return s.Ready })

	// A new agent run (a new engine) finds the previous run's postmaster.
	o := prev.o
	o.Logger = nil
	next, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = next.Stop(context.Background(), Immediate)
		next.Close()
	})
	if err := next.AdoptOrStopStray(ctx); err != nil {
		t.Fatal(err)
	}
	if procstat.Alive(pid) {
		t.Fatal("the stray postmaster still runs")
	}
	deadline := time.Now().Add(5 * time.Second)
	for pid, _ := prev.LastExit(); pid == 0; pid, _ = prev.LastExit() {
		if time.Now().After(deadline) {
			t.Fatal("the owner goroutine did not see the exit")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A stale postmaster.pid is removed (TestStaleLockFileRemoved).
	stale := filepath.Join(o.DataDir, "postmaster.pid")
	if err := os.WriteFile(stale, []byte("999999999\n"+o.DataDir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := next.AdoptOrStopStray(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale postmaster.pid kept: %v", err)
	}
	// Fence stops a PostgreSQL that started.
	if err := next.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, next, "ready", func(s Status) bool { return s.Ready })
	start := time.Now()
	if err := next.Fence(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("fence took %v", time.Since(start))
	if next.Running() {
		t.Error("fenced PostgreSQL still runs")
	}
	if st, err := next.Status(ctx); err == nil || st.Ready {
		t.Errorf("Status after fencing: %+v %v", st, err)
	}

	// PostgreSQL itself reads back what RenderConf quoted.
	nasty := "it's a \\ \"value\"\t# not a comment\nport = 1 ' \\'"
	o.Parameters = map[string]string{"holdfast_test.value": nasty}
	reader, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.writeConfig(StartOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"holdfast_test.value": nasty, "port": strconv.Itoa(o.Port)} {
		out, err := reader.run(ctx, "show "+name, "postgres", []string{"-D", o.DataDir, "-C", name}, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSuffix(out, "\n"); got != want {
			t.Errorf("postgres -C %s = %q, want %q", name, got, want)
		}
	}

	// A postmaster that dies at startup reports why through Exited.
	o.Parameters = map[string]string{"shared_buffers": "plenty"}
	bad, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		pid, exitErr := bad.LastExit()
		if pid != 0 {
			if exitErr == nil || !strings.Contains(exitErr.Error(), "shared_buffers") {
				t.Errorf("exit error should quote the log: %v", exitErr)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatal("postgres with a bad setting did not exit")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPdeathsig starts PostgreSQL from a helper process (this test binary
// re-executed), kills the helper with SIGKILL and checks that the
// postmaster follows it.
func TestPdeathsig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := testutil.Dir(t)
	e := newTestEngine(t, dir, "pg-helper")
	if err := e.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_BIN="+e.o.BinDir, "HELPER_DIR="+dir, "HELPER_PORT="+strconv.Itoa(e.o.Port))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "PID ") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q: %v", line, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "PID ")))
	t.Cleanup(func() {
		if procstat.Alive(pid) {
			syscall.Kill(pid, syscall.SIGQUIT)
		}
	})
	// Let it come up, so the signal hits a working postmaster.
	waitStatus(ctx, t, e, "helper's postgres ready", func(s Status) bool { return s.Ready })
	if !procstat.Alive(pid) {
		t.Fatal("postmaster not alive")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed := time.Now()
	for procstat.Alive(pid) {
		if time.Since(killed) > 5*time.Second {
			t.Fatal("the postmaster outlived its agent by 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("postmaster exited %v after its agent was killed", time.Since(killed).Round(time.Millisecond))
}

func TestFindBinDir(t *testing.T) {
	bin := testutil.PGBinDir(t)
	if d, err := FindBinDir(bin); err != nil || d != bin {
		t.Errorf("configured: %s %v", d, err)
	}
	if d, err := FindBinDir(""); err != nil || d == "" {
		t.Errorf("discovered: %s %v", d, err)
	}
	empty := t.TempDir()
	_, err := FindBinDir(empty)
	if err == nil || !strings.Contains(err.Error(), "pg_rewind") || !strings.Contains(err.Error(), "bin_dir") {
		t.Errorf("empty dir: %v", err)
	}
}

func TestNewValidates(t *testing.T) {
	acct := osuser.Account{}
	base := testOptions("/nonexistent", "/tmp/x", "pg-1", 5432, acct)
	for name, mut := range map[string]func(*Options){
		"relative dir":  func(o *Options) { o.DataDir = "data" },
		"bad member":    func(o *Options) { o.Member = "Bad_Name" },
		"no password":   func(o *Options) { o.Replication.Password = "" },
		"bad parameter": func(o *Options) { o.Parameters = map[string]string{"wal_level": "minimal"} },
		"no listen":     func(o *Options) { o.ListenHost = "" },
	} {
		o := base
		mut(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	o := base
	o.ListenHost = "*"
	o.LogFile = ""
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if e.o.ConnectHost != "127.0.0.1" || e.o.LogFile != "/tmp/x/pg-1/data.log" {
		t.Errorf("defaults: %+v", e.o)
	}
}

// A frozen postmaster (SIGSTOP) ignores shutdown signals while its backends
// keep committing on their existing connections: Fence still stops every
// write by its deadline, by killing the whole process group.
func TestFenceFrozenPostmaster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e := newTestEngine(t, testutil.Dir(t), "pg-frozen")
	if err := e.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, e, "ready", func(s Status) bool { return s.Ready })
	var conn *pgx.Conn // a client session of its own, as the engine opens them
	if err := e.withConn(ctx, true, func(c *pgx.Conn) error { conn = c; return nil }); err != nil {
		t.Fatal(err)
	}
	e.conn = nil
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE TABLE f (id int)"); err != nil {
		t.Fatal(err)
	}
	pid := e.PID()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	if _, err := conn.Exec(ctx, "INSERT INTO f VALUES (1)"); err != nil {
		t.Fatalf("a backend of the frozen postmaster should still commit (that is the danger): %v", err)
	}
	deadline := time.Now().Add(time.Second)
	if err := e.Fence(time.Second); err != nil {
		t.Fatalf("fence: %v", err)
	}
	// The fault guarded against is waiting for escalationGrace (or
	// forever) past the deadline; reaping the killed group on a loaded
	// machine may take a moment.
	if late := time.Since(deadline); late > escalationGrace/4 {
		t.Errorf("fence returned %s after its deadline", late)
	}
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	defer wcancel()
	if _, err := conn.Exec(wctx, "INSERT INTO f VALUES (2)"); err == nil {
		t.Fatal("a backend still committed after the fence")
	}
}

// TestCloneWith: the data directory is built by fill in a temporary
// sibling and appears only complete; a failed fill leaves nothing behind
// (so a fallback clone can follow), and a non-empty directory is refused
// before fill runs.
func TestCloneWith(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, testutil.Dir(t), "pg-cw")
	boom := errors.New("boom")
	err := e.CloneWith(ctx, "test restore", func(_ context.Context, dir string) error {
		if !strings.HasSuffix(dir, ".restore-tmp") {
			t.Errorf("fill got %s, want the temporary sibling", dir)
		}
		return os.WriteFile(filepath.Join(dir, "half"), nil, 0o600)
	})
	if err == nil || !strings.Contains(err.Error(), "no PG_VERSION") {
		t.Fatalf("a fill that wrote no PostgreSQL data: %v", err)
	}
	if st, _ := e.Inspect(); st.Kind != DataDirMissing {
		t.Fatalf("after a fill without PostgreSQL data: %+v", st)
	}
	err = e.CloneWith(ctx, "test restore", func(_ context.Context, dir string) error {
		return os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.o.DataDir, "PG_VERSION")); err != nil {
		t.Fatalf("the fill was not installed: %v", err)
	}
	called := false
	err = e.CloneWith(ctx, "test restore", func(context.Context, string) error { called = true; return nil })
	if err == nil || called || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("over a non-empty directory: called %v, err %v", called, err)
	}
	if err := os.RemoveAll(e.o.DataDir); err != nil {
		t.Fatal(err)
	}
	err = e.CloneWith(ctx, "test restore", func(_ context.Context, dir string) error {
		if err := os.WriteFile(filepath.Join(dir, "PG_VERSION"), []byte("15\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return boom
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "clone by test restore") {
		t.Fatalf("failed fill: %v", err)
	}
	if st, _ := e.Inspect(); st.Kind != DataDirMissing {
		t.Errorf("after a failed fill: %+v", st)
	}
	if _, err := os.Stat(e.o.DataDir + ".restore-tmp"); !os.IsNotExist(err) {
		t.Errorf("a failed fill left its temporary directory: %v", err)
	}
}

// TestStaleLockFileRemoved: a postmaster.pid left by a postmaster that is
// gone never keeps PostgreSQL from starting. In a container started again
// on the same volume, the dead postmaster's pid is soon another process's
// (one of the agent's own threads, say), and PostgreSQL refuses to start
// while the pid in its lock file lives; it also refuses an empty or garbled
// lock file (a crash while it was being written).
func TestStaleLockFileRemoved(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	e := newTestEngine(t, testutil.Dir(t), "pg-l")
	if err := e.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	// A live process of PostgreSQL's account that is not PostgreSQL.
	other := exec.Command("sleep", "300")
	other.SysProcAttr = e.sysProcAttr(syscall.SIGKILL)
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	lock := filepath.Join(e.o.DataDir, "postmaster.pid")
	for _, c := range []struct{ name, content string }{
		{"a live process that is not PostgreSQL", fmt.Sprintf("%d\n%s\n", other.Process.Pid, e.o.DataDir)},
		{"a dead process", "999999999\n" + e.o.DataDir + "\n"},
		{"empty", ""},
		{"garbled", "\x00\x00\x00"},
	} {
		if err := os.WriteFile(lock, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := e.o.Account.Chown(lock); err != nil {
			t.Fatal(err)
		}
		if err := e.AdoptOrStopStray(ctx); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := e.Start(ctx, StartOptions{}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		waitStatus(ctx, t, e, "ready with a stale lock file: "+c.name, func(s Status) bool { return s.Ready })
		if err := e.Stop(ctx, Fast); err != nil {
			t.Fatal(err)
		}
	}
	if other.ProcessState != nil {
		t.Error("the other process was stopped")
	}
}
