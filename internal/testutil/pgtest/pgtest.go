// Package pgtest starts a throwaway PostgreSQL for tests, with holdfast's
// own engine (scram-sha-256 for every TCP login), as the postgres account
// when the tests run as root. It is apart from package testutil because
// internal/pg's own tests use testutil.
package pgtest

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pg"
	"github.com/holdfast/holdfast/internal/testutil"
)

// Start runs a PostgreSQL named member on a free loopback port, with the
// superuser postgres logging in with superPassword, waits until it is
// ready (or ctx ends) and returns it with its port. It is stopped when the
// test ends, and its log shown when the test failed. It skips the test
// when PostgreSQL or the postgres account is missing.
func Start(ctx context.Context, t testing.TB, member, superPassword string) (*pg.Engine, int) {
	t.Helper()
	return StartWith(ctx, t, member, superPassword, nil)
}

// StartWith is Start with PostgreSQL settings added to (or replacing) the
// small, unsynchronised ones Start uses.
func StartWith(ctx context.Context, t testing.TB, member, superPassword string, params map[string]string) (*pg.Engine, int) {
	t.Helper()
	settings := map[string]string{"fsync": "off", "shared_buffers": "16MB", "max_connections": "20"}
	maps.Copy(settings, params)
	bin := testutil.PGBinDir(t)
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		t.Skipf("no postgres account: %v", err)
	}
	dir := testutil.Dir(t)
	port := testutil.FreePort(t)
	logFile := filepath.Join(dir, member, "postgresql.log")
	e, err := pg.New(pg.Options{
		BinDir:      bin,
		DataDir:     filepath.Join(dir, member, "data"),
		LogFile:     logFile,
		Account:     acct,
		Member:      member,
		ListenHost:  "127.0.0.1",
		Port:        port,
		Parameters:  settings,
		InitdbArgs:  []string{"--no-sync"},
		Superuser:   pg.Credentials{Username: "postgres", Password: superPassword},
		Replication: pg.Credentials{Username: "replicator", Password: "repl-secret"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.Stop(ctx, pg.Immediate); err != nil {
			t.Errorf("stop PostgreSQL: %v", err)
		}
		e.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logFile); err == nil {
				t.Logf("PostgreSQL log:\n%s", b)
			}
		}
	})
	if err := e.Initdb(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx, pg.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	for {
		if st, err := e.Status(ctx); err == nil && st.Ready {
			return e, port
		}
		select {
		case <-ctx.Done():
			t.Fatal("PostgreSQL never became ready")
		case <-time.After(100 * time.Millisecond):
		}
	}
}
