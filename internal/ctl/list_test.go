package ctl

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

func TestListComputesLagAgainstTheLeader(t *testing.T) {
	v := cluster.View{
		Leader: &cluster.Leader{Name: "pg-0"},
		Members: map[string]cluster.MemberInfo{
			"pg-0":  {Name: "pg-0", Host: "127.0.0.1", Port: 5432},
			"pg-1":  {Name: "pg-1", Host: "127.0.0.1", Port: 5433},
			"pg-2":  {Name: "pg-2", Host: "127.0.0.1", Port: 5434},
			"pg-10": {Name: "pg-10", Host: "127.0.0.1", Port: 5435},
			"w-0":   {Name: "w-0", Witness: true},
		},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": {Role: cluster.RolePrimary, State: cluster.StateRunning, Position: cluster.Position{Timeline: 2, LSN: 3 << 20}},
			"pg-1": {Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: cluster.Position{Timeline: 2, LSN: 1 << 20}, ReplayLSN: 1 << 19},
			"pg-2": {Role: cluster.RoleReplica, State: cluster.StateRunning, Position: cluster.Position{Timeline: 1, LSN: 5 << 20}},
			"w-0":  {Role: cluster.RoleWitness, State: cluster.StateRunning},
		},
	}
	l := List("pg", v, "postgres")
	var names []string
	for _, m := range l.Members {
		names = append(names, m.Name)
	}
	if strings.Join(names, ",") != "pg-0,pg-1,pg-2,pg-10,w-0" {
		t.Fatalf("order by ordinal: %v", names)
	}
	byName := map[string]MemberRow{}
	for _, m := range l.Members {
		byName[m.Name] = m
	}
	if m := byName["pg-0"]; !m.Leader || m.LagBytes == nil || *m.LagBytes != 0 || m.ReplayLagBytes == nil || *m.ReplayLagBytes != 0 || m.ReplayLSN != "" || m.Timeline != 2 {
		t.Errorf("leader row: %+v", m)
	}
	if m := byName["pg-1"]; m.LagBytes == nil || *m.LagBytes != 2<<20 {
		t.Errorf("replica lag: %+v", m)
	}
	if m := byName["pg-1"]; m.ReplayLagBytes == nil || *m.ReplayLagBytes != 5<<19 || m.ReplayLSN != "0/80000" {
		t.Errorf("a replica replaying behind what it received: replay lag %v, replay LSN %q; want 2.5 MiB at 0/80000", m.ReplayLagBytes, m.ReplayLSN)
	}
	if m := byName["pg-2"]; m.LagBytes != nil || m.ReplayLagBytes != nil {
		t.Errorf("a replica on another timeline has no comparable lag: %+v", m)
	}
	if m := byName["pg-10"]; m.Role != cluster.RoleStopped || m.LagBytes != nil || m.ReplayLagBytes != nil || m.DSN == "" {
		t.Errorf("a registered member without status is stopped: %+v", m)
	}
	if m := byName["w-0"]; m.Role != cluster.RoleWitness || m.DSN != "" {
		t.Errorf("witness row: %+v", m)
	}
	var tbl, js bytes.Buffer
	if err := l.WriteTable(&tbl); err != nil || !strings.Contains(tbl.String(), "primary *") {
		t.Errorf("table: %v\n%s", err, tbl.String())
	}
	// Both lags, side by side, on the replica's row.
	if !regexp.MustCompile(`RECEIVE LAG \(MB\)\s+REPLAY LAG \(MB\)`).MatchString(tbl.String()) ||
		!regexp.MustCompile(`(?m)^pg-1\s.*\s2\.0\s+2\.5\s*$`).MatchString(tbl.String()) {
		t.Errorf("table does not show pg-1's receive lag 2.0 and replay lag 2.5 MB:\n%s", tbl.String())
	}
	if err := l.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"lag_bytes": 2097152`) || !strings.Contains(js.String(), `"replay_lag_bytes": 2621440`) {
		t.Errorf("json: %v\n%s", err, js.String())
	}
}

// TestListShowsWaits: what a member's node maintenance waits for (a drain
// with no safe target) is in the JSON and under the table.
func TestListShowsWaits(t *testing.T) {
	why := "drain of node n1 (cordoned) waits: the primary cannot move: no replica can take over"
	v := cluster.View{
		Leader:  &cluster.Leader{Name: "pg-0"},
		Members: map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0", Host: "h", Port: 5432}},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": {Role: cluster.RolePrimary, State: cluster.StateRunning, Position: cluster.Position{Timeline: 1, LSN: 1}, Waiting: why},
		},
	}
	l := List("pg", v, "postgres")
	var tbl, js bytes.Buffer
	if err := l.WriteTable(&tbl); err != nil || !strings.Contains(tbl.String(), "pg-0: "+why) {
		t.Errorf("table: %v\n%s", err, tbl.String())
	}
	if err := l.WriteJSON(&js); err != nil || !strings.Contains(js.String(), `"waiting": "drain of node n1`) {
		t.Errorf("json: %v\n%s", err, js.String())
	}
}

// TestListShowsArchive: the primary's archive status is one line under
// the table and an object in the JSON; a member that does not lead
// reports none.
func TestListShowsArchive(t *testing.T) {
	at := time.Date(2026, 12, 6, 16, 20, 1, 0, time.UTC)
	view := func(a *cluster.ArchiveStatus) cluster.View {
		return cluster.View{
			Leader: &cluster.Leader{Name: "pg-1"},
			Members: map[string]cluster.MemberInfo{
				"pg-0": {Name: "pg-0", Host: "h", Port: 5432},
				"pg-1": {Name: "pg-1", Host: "h", Port: 5433},
			},
			Statuses: map[string]cluster.MemberStatus{
				"pg-0": {Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: cluster.Position{Timeline: 2, LSN: 1}},
				"pg-1": {Role: cluster.RolePrimary, State: cluster.StateRunning, Position: cluster.Position{Timeline: 2, LSN: 1}, Archive: a},
			},
		}
	}
	failing := "archiving 000000020000000000000005 failed at 2026-12-06T16:21:00Z (3 failures since the statistics were reset); the last success was 000000020000000000000004 at 2026-12-06T16:20:01Z"
	cases := []struct {
		name string
		a    *cluster.ArchiveStatus
		line string // "" = no archive line
		json string // "" = no archive object either
	}{
		{name: "ok", a: &cluster.ArchiveStatus{State: cluster.ArchiveOK, LastArchivedWAL: "000000020000000000000004", LastArchivedTime: at},
			line: "Archive on pg-1: ok (last archived 000000020000000000000004 at 2026-12-06T16:20:01Z)", json: `"state": "ok"`},
		{name: "ok, nothing archived yet", a: &cluster.ArchiveStatus{State: cluster.ArchiveOK},
			line: "Archive on pg-1: ok (nothing archived yet)", json: `"primary": "pg-1"`},
		{name: "failing", a: &cluster.ArchiveStatus{State: cluster.ArchiveFailing, Reason: failing, LastFailedWAL: "000000020000000000000005", FailedCount: 3},
			line: "Archive on pg-1: failing: " + failing, json: `"last_failed_wal": "000000020000000000000005"`},
		// A cluster without backups: no line in the table, the state in
		// the JSON.
		{name: "off", a: &cluster.ArchiveStatus{State: cluster.ArchiveOff, Reason: "no backup.repository is configured: WAL is not archived"},
			json: `"state": "off"`},
		{name: "not reported (an older agent)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := List("pg", view(c.a), "postgres")
			var tbl, js bytes.Buffer
			if err := l.WriteTable(&tbl); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimRight(tbl.String(), "\n"), "\n")
			if c.line == "" {
				if strings.Contains(tbl.String(), "Archive on") {
					t.Errorf("an archive line for %s:\n%s", c.name, tbl.String())
				}
				if c.json == "" && l.Archive != nil {
					t.Errorf("an archive status nobody reported: %+v", l.Archive)
				}
				if err := l.WriteJSON(&js); err != nil || !strings.Contains(js.String(), c.json) {
					t.Errorf("json lacks %s: %v\n%s", c.json, err, js.String())
				}
				return
			}
			// The title, the header, two members, then the archive line.
			if len(lines) != 5 || lines[4] != c.line {
				t.Errorf("table:\n%s\nwant its last line %q", tbl.String(), c.line)
			}
			for _, row := range lines[1:4] {
				if strings.Contains(row, "archiv") {
					t.Errorf("the archive status leaks into the table's rows: %q", row)
				}
			}
			if err := l.WriteJSON(&js); err != nil || !strings.Contains(js.String(), c.json) {
				t.Errorf("json lacks %s: %v\n%s", c.json, err, js.String())
			}
		})
	}
}
