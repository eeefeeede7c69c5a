package pg

import (
	"context"
	"fmt"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// Only a connection attempt the server did not answer marks a postmaster
// as refusing connections: "too many clients" or a refused password come
// from a live postmaster, and must not fail the primary over.
func TestServerAnswered(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"too many connections", fmt.Errorf("open a new connection: %w", &pgconn.PgError{Code: "53300"}), true},
		{"password refused", fmt.Errorf("open a new connection: %w", &pgconn.PgError{Code: "28P01"}), true},
		{"no answer in time", fmt.Errorf("open a new connection: %w", context.DeadlineExceeded), false},
		{"TCP refused", fmt.Errorf("open a new connection: %w", syscall.ECONNREFUSED), false},
	} {
		if got := serverAnswered(c.err); got != c.want {
			t.Errorf("%s: serverAnswered = %v, want %v", c.name, got, c.want)
		}
	}
}
