package ctl

import (
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

// backupView is a primary pg-0 and two replicas streaming from it, pg-1
// further behind than pg-2, with the given hosts.
func backupView(hosts map[string]string) cluster.View {
	v := cluster.View{
		Leader:   &cluster.Leader{Name: "pg-0"},
		Members:  map[string]cluster.MemberInfo{},
		Statuses: map[string]cluster.MemberStatus{},
	}
	lsn := map[string]cluster.LSN{"pg-0": 3000, "pg-1": 1000, "pg-2": 2000}
	for i, name := range []string{"pg-0", "pg-1", "pg-2"} {
		v.Members[name] = cluster.MemberInfo{Name: name, Host: hosts[name], Port: 5432 + i}
		st := cluster.MemberStatus{Role: cluster.RoleReplica, Position: cluster.Position{Timeline: 1, LSN: lsn[name]}, Following: "pg-0", Streaming: true}
		if name == "pg-0" {
			st = cluster.MemberStatus{Role: cluster.RolePrimary, Position: cluster.Position{Timeline: 1, LSN: lsn[name]}}
		}
		v.Statuses[name] = st
	}
	return v
}

func TestBackupSource(t *testing.T) {
	local := map[string]string{"pg-0": "127.0.0.1", "pg-1": "127.0.0.1", "pg-2": "127.0.0.1"}
	pods := map[string]string{"pg-0": "10.1.0.5", "pg-1": "10.1.1.7", "pg-2": "10.1.2.9"}
	mixed := map[string]string{"pg-0": "10.1.0.5", "pg-1": "10.1.0.5", "pg-2": "10.1.2.9"}
	for _, c := range []struct {
		name        string
		v           cluster.View
		want        string
		wantStandby bool
	}{
		// One host (holdfast up): the replica with the least lag.
		{"same host", backupView(local), "pg-2", true},
		// Every member on its own host (a StatefulSet's pods): the
		// replica's pgBackRest could not reach the primary, so the primary.
		{"other hosts", backupView(pods), "pg-0", false},
		// Only a replica on the primary's host qualifies, even if it lags more.
		{"mixed", backupView(mixed), "pg-1", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, standby, err := BackupSource(c.v)
			if err != nil || got != c.want || standby != c.wantStandby {
				t.Fatalf("BackupSource = %s, %v, %v; want %s, %v", got, standby, err, c.want, c.wantStandby)
			}
		})
	}
	t.Run("no primary", func(t *testing.T) {
		v := backupView(local)
		v.Leader = nil
		if _, _, err := BackupSource(v); err == nil {
			t.Fatal("BackupSource without a leader: no error")
		}
	})
}
