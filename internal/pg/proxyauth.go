package pg

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// EnsureProxyAuth installs what the session proxy's auth query needs on
// the primary — Options.ProxyAuth's role with its password, and its
// function (ProxyAuth.SetupSQL) — so that an operator who gives the
// password in the configuration runs no SQL by hand, and a cluster
// restored or bootstrapped anew gets them too. It does nothing without
// ProxyAuth.Password.
//
// Call it on the primary only. It writes only what is missing or wrong
// (SetupSQL when the function or the role's right to call it is missing,
// ALTER ROLE when the password or attributes differ), and after its first
// success it does nothing until PostgreSQL is started or promoted again:
// the agent calls it every loop, which must not cost a query each time. A
// role or function dropped by hand meanwhile comes back at the next
// promotion or agent restart.
func (e *Engine) EnsureProxyAuth(ctx context.Context) error {
	pa := e.o.ProxyAuth
	if pa.Password == "" || e.proxyAuthDone {
		return nil
	}
	const op = "ensure the proxy's auth role"
	// The role first (SetupSQL may create it without a password), then the
	// function it may call.
	if err := e.ensureLoginRole(ctx, op, pa.Role, pa.Password,
		"LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
		"rolcanlogin AND NOT rolinherit AND NOT rolsuper AND NOT rolcreatedb AND NOT rolcreaterole AND NOT rolreplication AND NOT rolbypassrls"); err != nil {
		return err
	}
	var installed bool
	err := e.withConn(ctx, true, func(c *pgx.Conn) error {
		return c.QueryRow(ctx, `SELECT p IS NOT NULL AND has_function_privilege($1, p, 'EXECUTE')
			FROM to_regprocedure($2) AS p`, pa.Role, pa.Function).Scan(&installed)
	})
	if err != nil {
		return fmt.Errorf("%s: look for %s: %w", op, pa.Function, err)
	}
	if !installed {
		if err := e.withConn(ctx, false, func(c *pgx.Conn) error {
			_, err := c.Exec(ctx, pa.SetupSQL)
			return err
		}); err != nil {
			return fmt.Errorf("%s: install %s: %w", op, pa.Function, err)
		}
		e.log.Info("proxy auth function installed", "function", pa.Function, "role", pa.Role)
	}
	e.proxyAuthDone = true
	return nil
}
