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
	// withTLS registers a pgBackRest TLS server on the named members.
	withTLS := func(v cluster.View, names ...string) cluster.View {
		for _, n := range names {
			info := v.Members[n]
			info.BackupTLSPort = 8432
			v.Members[n] = info
		}
		return v
	}
	notStreaming := func(v cluster.View, names ...string) cluster.View {
		for _, n := range names {
			st := v.Statuses[n]
			st.Streaming = false
			v.Statuses[n] = st
		}
		return v
	}
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
		// Pods with the TLS server on every member: the replica with the
		// least lag again, through the primary's server.
		{"other hosts with TLS", withTLS(backupView(pods), "pg-0", "pg-1", "pg-2"), "pg-2", true},
		// The primary runs no TLS server: nobody can reach it.
		{"TLS on the replicas only", withTLS(backupView(pods), "pg-1", "pg-2"), "pg-0", false},
		// A replica without a client certificate does not qualify.
		{"TLS on the primary and one replica", withTLS(backupView(pods), "pg-0", "pg-1"), "pg-1", true},
		// No healthy (streaming) replica: the primary.
		{"TLS but no replica streams", notStreaming(withTLS(backupView(pods), "pg-0", "pg-1", "pg-2"), "pg-1", "pg-2"), "pg-0", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, standby, err := BackupSource(c.v)
			if err != nil || got != c.want || standby != c.wantStandby {
				t.Fatalf("BackupSource = %s, %v, %v; want %s, %v", got, standby, err, c.want, c.wantStandby)
			}
		})
	}
	t.Run("why the primary", func(t *testing.T) {
		v := notStreaming(withTLS(backupView(pods), "pg-1", "pg-2"), "pg-2")
		got, standby, skipped, err := ExplainBackupSource(v)
		if err != nil || got != "pg-0" || standby {
			t.Fatalf("ExplainBackupSource = %s, %v, %v; want the primary", got, standby, err)
		}
		want := "pg-1: on another host, and the primary runs no pgBackRest TLS server (backup.tls); pg-2: not streaming from the primary"
		if txt := SkippedText(skipped); txt != want {
			t.Errorf("skipped %q, want %q", txt, want)
		}
	})
	t.Run("no primary", func(t *testing.T) {
		v := backupView(local)
		v.Leader = nil
		if _, _, err := BackupSource(v); err == nil {
			t.Fatal("BackupSource without a leader: no error")
		}
	})
}
