// Package pgbouncertest prepares Debian's PgBouncer for the tests and
// benches that compare holdfast's proxy with it: one configuration (session
// pool mode unless transaction pooling is asked for, SCRAM against a
// plain-text auth file), written into a directory of the caller's, and a
// command that runs it as the postgres account when the caller is root
// (PgBouncer refuses to run as root). The caller starts, watches and stops
// the command its own way.
//
// It does not import package testing, so a bench's main program can use it.
package pgbouncertest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// Files PgBouncer writes into Config.Dir.
const (
	// LogFile is PgBouncer's log.
	LogFile = "pgbouncer.log"
	// PIDFile appears once PgBouncer listens.
	PIDFile = "pgbouncer.pid"
)

// Config is one PgBouncer in front of one PostgreSQL (or proxy) port.
type Config struct {
	// Dir holds the configuration, the auth file, the log and the pid file;
	// it is created if missing and given to the postgres account when root.
	Dir string
	// ServerPort is what PgBouncer connects to on 127.0.0.1 (database
	// "postgres").
	ServerPort int
	// ListenPort is where PgBouncer listens on 127.0.0.1.
	ListenPort int
	// User and Password are the one login, in the auth file in clear.
	User, Password string
	// MaxClientConn is max_client_conn; 0 means 200.
	MaxClientConn int
	// PoolMode is pool_mode: PoolSession (also when empty) or
	// PoolTransaction.
	PoolMode string
}

// Pool modes (Config.PoolMode), PgBouncer's names.
const (
	PoolSession     = "session"
	PoolTransaction = "transaction"
)

// defaultMaxClientConn is max_client_conn when Config leaves it 0.
const defaultMaxClientConn = 200

// Binary is PgBouncer's path: on PATH or in /usr/sbin (Debian's package,
// not on a non-root PATH).
func Binary() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	const debian = "/usr/sbin/pgbouncer"
	if _, err := os.Stat(debian); err != nil {
		return "", errors.New("pgbouncer is not installed (scripts/install-deps.sh installs it)")
	}
	return debian, nil
}

// Command writes c's pgbouncer.ini and auth file into c.Dir and returns
// the command that runs PgBouncer on them (not started; Stdout and Stderr
// unset). When the caller is root, c.Dir and its files belong to the
// postgres account and the command runs as it.
func Command(c Config) (*exec.Cmd, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if c.User == "" || c.ServerPort == 0 || c.ListenPort == 0 || c.Dir == "" {
		return nil, fmt.Errorf("pgbouncer config %+v: Dir, ServerPort, ListenPort and User are required", c)
	}
	mode := c.PoolMode
	switch mode {
	case "":
		mode = PoolSession
	case PoolSession, PoolTransaction:
	default:
		return nil, fmt.Errorf("pgbouncer config: pool mode %q: want %q or %q", c.PoolMode, PoolSession, PoolTransaction)
	}
	maxConn := c.MaxClientConn
	if maxConn == 0 {
		maxConn = defaultMaxClientConn
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	ini := fmt.Sprintf(`[databases]
postgres = host=127.0.0.1 port=%d dbname=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = %s
max_client_conn = %d
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = %s
pidfile = %s
`, c.ServerPort, c.ListenPort, filepath.Join(c.Dir, "userlist.txt"), mode, maxConn,
		filepath.Join(c.Dir, LogFile), filepath.Join(c.Dir, PIDFile))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  fmt.Sprintf("%q %q\n", c.User, c.Password),
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		if cred, err = postgresAccount(); err != nil {
			return nil, err
		}
		if err := os.Chown(c.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
	}
	for name, body := range files {
		p := filepath.Join(c.Dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
		if cred != nil {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, fmt.Errorf("pgbouncer: %w", err)
			}
		}
	}
	cmd := exec.Command(bin, filepath.Join(c.Dir, "pgbouncer.ini"))
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	return cmd, nil
}

// postgresAccount is the credential PgBouncer runs with under root.
func postgresAccount() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("PgBouncer refuses to run as root, and there is no postgres account: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return nil, fmt.Errorf("postgres account uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return nil, fmt.Errorf("postgres account gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}
