package pg

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/cluster"
)

// RenderSyncStandbys renders synchronous_standby_names for "commits wait
// for quorum of members": `ANY 2 ("pg-1", "pg-2")`, or "" (asynchronous)
// when quorum is 0. The member "*" is written bare: any standby. Member names are quoted, so names with '-' work. It
// refuses a quorum larger than the list and names PostgreSQL could not
// read back as written.
func RenderSyncStandbys(members []string, quorum int) (string, error) {
	if quorum == 0 {
		return "", nil
	}
	if quorum < 0 || quorum > len(members) {
		return "", fmt.Errorf("render synchronous_standby_names: quorum %d for %d standbys", quorum, len(members))
	}
	quoted := make([]string, len(members))
	for i, m := range members {
		if m == "*" {
			quoted[i] = m // any standby
			continue
		}
		if m == "" || strings.ContainsAny(m, "\"\x00,()") {
			return "", fmt.Errorf("render synchronous_standby_names: member name %q cannot be listed", m)
		}
		quoted[i] = `"` + m + `"`
	}
	return fmt.Sprintf("ANY %d (%s)", quorum, strings.Join(quoted, ", ")), nil
}

var syncNamesRe = regexp.MustCompile(`^ANY ([0-9]+) \((.*)\)$`)

// ParseSyncStandbys reads back what RenderSyncStandbys writes: the members
// and the quorum ("" is no member, quorum 0). ok is false for anything else
// (a value an operator set by hand): its meaning is then unknown to
// holdfast, which replaces it.
func ParseSyncStandbys(s string) (members []string, quorum int, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, 0, true
	}
	m := syncNamesRe.FindStringSubmatch(s)
	if m == nil {
		return nil, 0, false
	}
	q, err := strconv.Atoi(m[1])
	if err != nil {
		return nil, 0, false
	}
	for _, part := range strings.Split(m[2], ",") {
		part = strings.TrimSpace(part)
		if part == "*" {
			members = append(members, part)
			continue
		}
		if len(part) < 3 || part[0] != '"' || part[len(part)-1] != '"' {
			return nil, 0, false
		}
		members = append(members, part[1:len(part)-1])
	}
	if q < 1 || q > len(members) {
		return nil, 0, false
	}
	return members, q, true
}

// SetSyncStandbys makes value the server's synchronous_standby_names:
// ALTER SYSTEM (durable in postgresql.auto.conf, so a restart in place
// keeps the same guarantee) then pg_reload_conf(). The reload is
// asynchronous: Status reads the value back once the server has applied
// it. Works on a primary and on a standby (which ignores the setting until
// promoted). ctx bounds the call.
func (e *Engine) SetSyncStandbys(ctx context.Context, value string) error {
	const op = "set synchronous_standby_names"
	lit, err := QuoteLiteral(value)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	err = e.withConn(ctx, true, func(c *pgx.Conn) error {
		if _, err := c.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = "+lit); err != nil {
			return err
		}
		_, err := c.Exec(ctx, "SELECT pg_reload_conf()")
		return err
	})
	if err != nil {
		return fmt.Errorf("%s to %q: %w", op, value, err)
	}
	e.log.Info("synchronous_standby_names set", "value", value)
	return nil
}

// parseReplicas reads the JSON array of pg_stat_replication rows the status
// query builds.
func parseReplicas(s string) ([]Replica, error) {
	var rows []struct {
		Name      string  `json:"name"`
		State     string  `json:"state"`
		SyncState string  `json:"sync_state"`
		Flush     *string `json:"flush"`
		Reply     *int64  `json:"reply_us"`
	}
	if err := json.Unmarshal([]byte(s), &rows); err != nil {
		return nil, fmt.Errorf("read pg_stat_replication: %w", err)
	}
	out := make([]Replica, 0, len(rows))
	for _, r := range rows {
		rep := Replica{Name: r.Name, State: r.State, SyncState: r.SyncState}
		if r.Reply != nil {
			rep.Reply = *r.Reply
		}
		if r.Flush != nil {
			l, err := cluster.ParseLSN(*r.Flush)
			if err != nil {
				return nil, fmt.Errorf("read pg_stat_replication: %s: %w", r.Name, err)
			}
			rep.Flush = l
		}
		out = append(out, rep)
	}
	return out, nil
}
