// Package osuser decides which operating-system account runs PostgreSQL.
// PostgreSQL refuses to start as root, so when holdfast itself runs as root
// every PostgreSQL program (initdb, postgres, pg_basebackup, pg_rewind) runs
// as an unprivileged account, and the directories it writes are owned by it.
package osuser

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// Account is an OS user resolved to numeric ids. The zero value means "the
// current user": no credential switch, no chown.
type Account struct {
	Name     string
	UID, GID uint32
	Switch   bool // true when commands must run with UID/GID instead of ours
}

// Resolve returns the account to run PostgreSQL as. Only root switches; any
// other user runs PostgreSQL as itself and name is ignored, so a developer
// can run holdfast without a postgres account.
func Resolve(name string) (Account, error) {
	if os.Geteuid() != 0 {
		return Account{Name: currentName(), UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, nil
	}
	if name == "" || name == "root" {
		return Account{}, fmt.Errorf("resolve PostgreSQL OS user: running as root needs an unprivileged os_user (PostgreSQL refuses to run as root); set postgresql.os_user")
	}
	u, err := user.Lookup(name)
	if err != nil {
		return Account{}, fmt.Errorf("resolve PostgreSQL OS user %q: %w (create it, e.g. with the project's scripts/install-deps.sh, or set postgresql.os_user)", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return Account{}, fmt.Errorf("resolve PostgreSQL OS user %q: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return Account{}, fmt.Errorf("resolve PostgreSQL OS user %q: gid %q: %w", name, u.Gid, err)
	}
	return Account{Name: name, UID: uint32(uid), GID: uint32(gid), Switch: true}, nil
}

func currentName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// Credential is what exec.Cmd.SysProcAttr needs to run as the account; nil
// when no switch is needed.
func (a Account) Credential() *syscall.Credential {
	if !a.Switch {
		return nil
	}
	return &syscall.Credential{Uid: a.UID, Gid: a.GID}
}

// MkdirOwned creates dir (and missing parents, mode 0755 so the account can
// traverse them) and makes the final directory owned by the account with the
// given mode. It is idempotent.
func (a Account) MkdirOwned(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	if a.Switch {
		if err := os.Chown(dir, int(a.UID), int(a.GID)); err != nil {
			return fmt.Errorf("give directory %s to %s: %w", dir, a.Name, err)
		}
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("set mode of %s: %w", dir, err)
	}
	return nil
}

// Chown gives path to the account (no-op without a switch).
func (a Account) Chown(path string) error {
	if !a.Switch {
		return nil
	}
	if err := os.Chown(path, int(a.UID), int(a.GID)); err != nil {
		return fmt.Errorf("give %s to %s: %w", path, a.Name, err)
	}
	return nil
}

// CheckReachable verifies that the account can traverse every directory
// from / down to dir, and explains which one blocks it. It guards against a
// cluster directory under e.g. /root (mode 0700), where PostgreSQL running
// as an unprivileged user would fail much later with a less helpful error.
func CheckReachable(a Account, dir string) error {
	if !a.Switch {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err == nil {
			st, ok := fi.Sys().(*syscall.Stat_t)
			mode := fi.Mode().Perm()
			reachable := mode&0o001 != 0 ||
				(ok && st.Uid == a.UID && mode&0o100 != 0) ||
				(ok && st.Gid == a.GID && mode&0o010 != 0)
			if !reachable {
				return fmt.Errorf("PostgreSQL runs as %s, which cannot enter %s (mode %o): choose a directory that %s can reach (e.g. under /var/lib or /tmp), or chmod o+x %s", a.Name, p, mode, a.Name, p)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}
