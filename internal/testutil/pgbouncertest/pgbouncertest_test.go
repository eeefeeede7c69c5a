package pgbouncertest_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgbouncertest"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
)

// pgbouncerTestTimeout bounds the whole test on a loaded machine.
const pgbouncerTestTimeout = 2 * time.Minute

// TestCommand: the PgBouncer Command prepares takes a SCRAM login and
// forwards queries to a real PostgreSQL, and refuses a wrong password.
func TestCommand(t *testing.T) {
	if _, err := pgbouncertest.Binary(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgbouncerTestTimeout)
	defer cancel()
	_, pgPort := pgtest.Start(ctx, t, "pgb", "secret")
	dir := filepath.Join(testutil.Dir(t), "pgbouncer")
	listen := testutil.FreePort(t)
	cmd, err := pgbouncertest.Command(pgbouncertest.Config{Dir: dir, ServerPort: pgPort, ListenPort: listen, User: "postgres", Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	url := func(pw string) string {
		return fmt.Sprintf("postgres://postgres:%s@127.0.0.1:%d/postgres?sslmode=disable", pw, listen)
	}
	var conn *pgx.Conn
	for {
		if conn, err = pgx.Connect(ctx, url("secret")); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("connect through pgbouncer: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT 41 + 1").Scan(&n); err != nil || n != 42 {
		t.Fatalf("query through pgbouncer: %d %v", n, err)
	}
	if c, err := pgx.Connect(ctx, url("wrong")); err == nil {
		c.Close(ctx)
		t.Fatal("pgbouncer let a wrong password in")
	}
}

func TestCommandRefusesIncompleteConfig(t *testing.T) {
	if _, err := pgbouncertest.Binary(); err != nil {
		t.Skip(err)
	}
	if _, err := pgbouncertest.Command(pgbouncertest.Config{Dir: t.TempDir()}); err == nil {
		t.Fatal("Command accepted a config without ports or user")
	}
	_, err := pgbouncertest.Command(pgbouncertest.Config{Dir: t.TempDir(), ServerPort: 1, ListenPort: 2, User: "u", PoolMode: "statment"})
	if err == nil || !strings.Contains(err.Error(), `"statment"`) {
		t.Fatalf("Command with pool mode %q: %v, want an error naming it", "statment", err)
	}
}
