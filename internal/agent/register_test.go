package agent

import (
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

// TestSameInfoBackupTLSPort: a registration that lacks this member's
// pgBackRest TLS port (written by an agent before backup.tls was set) is
// written again, else ctl.BackupSource never picks this member, or never
// reaches it as the primary.
func TestSameInfoBackupTLSPort(t *testing.T) {
	a := cluster.MemberInfo{Name: "pg-0", Host: "pg-0.hl", Port: 5432, APIURL: "https://pg-0.hl:8008"}
	b := a
	if !sameInfo(a, b) {
		t.Fatal("equal registrations differ")
	}
	b.BackupTLSPort = 8432
	if sameInfo(a, b) {
		t.Error("a registration without the TLS port counts as current")
	}
}
