package chart_test

import (
	"strings"
	"testing"
)

// restoreS3Values start the cluster from an encrypted S3 source.
var restoreS3Values = []string{
	"bootstrap.restore.enabled=true",
	"bootstrap.restore.repository=s3://pg-backups/orders",
	"bootstrap.restore.stanza=orders",
	"bootstrap.restore.targetTime=2026-12-06T10:15:00Z",
	"bootstrap.restore.s3.endpoint=minio.backup.svc:9000",
	"bootstrap.restore.s3.region=us-east-1",
	"bootstrap.restore.s3.uriStyle=path",
	"bootstrap.restore.s3.existingSecret=src-creds",
	"bootstrap.restore.s3.caSecret=s3-ca",
	"bootstrap.restore.cipherPassSecret=src-pass",
}

// TestRestoreOffRendersNothing: with bootstrap.restore.enabled false, the
// restore values change nothing, byte for byte.
func TestRestoreOffRendersNothing(t *testing.T) {
	def := renderText(t)
	if strings.Contains(def, "restore") || strings.Contains(def, "bootstrap:") {
		t.Errorf("the default render mentions a restore:\n%s", grepLines(def, "restore"))
	}
	off := append([]string{"bootstrap.restore.enabled=false"}, restoreS3Values[1:]...)
	off = append(off, "bootstrap.restore.posix.existingClaim=old", "bootstrap.restore.targetLSN=0/3000060")
	if got := renderText(t, off...); got != def {
		t.Errorf("bootstrap.restore.enabled=false with restore values set renders differently from the defaults:\n%s", firstDiff(def, got))
	}
}

// TestRestoreS3: the section reaches the members' configuration, the
// secrets are projected files under /etc/holdfast/restore/, and the
// agent's own loader accepts the result next to backups into a new stanza.
func TestRestoreS3(t *testing.T) {
	m := render(t, namespace, append(restoreS3Values, s3Values...)...)
	cfg := agentConfig(t, m)
	want(t, "repository", str(cfg, "bootstrap", "restore", "repository"), "s3://pg-backups/orders")
	want(t, "stanza", str(cfg, "bootstrap", "restore", "stanza"), "orders")
	want(t, "target_time", str(cfg, "bootstrap", "restore", "target_time"), "2026-12-06T10:15:00Z")
	want(t, "cipher_pass_file", str(cfg, "bootstrap", "restore", "cipher_pass_file"), "/etc/holdfast/restore/cipher-pass")
	want(t, "s3.key_file", str(cfg, "bootstrap", "restore", "s3", "key_file"), "/etc/holdfast/restore/s3-access-key-id")
	want(t, "s3.ca_file", str(cfg, "bootstrap", "restore", "s3", "ca_file"), "/etc/holdfast/restore/s3-ca.crt")
	for path, wantSrc := range map[string]string{
		"restore/s3-access-key-id":     "secret src-creds access-key-id",
		"restore/s3-secret-access-key": "secret src-creds secret-access-key",
		"restore/s3-ca.crt":            "secret s3-ca ca.crt",
		"restore/cipher-pass":          "secret src-pass passphrase",
	} {
		kind, name, key := projectedFile(t, m, path)
		want(t, path+" from", kind+" "+name+" "+key, wantSrc)
	}
	c := loadRendered(t, m)
	want(t, "agent bootstrap.restore.stanza", c.Bootstrap.Restore.Stanza, "orders")
	want(t, "agent own stanza", c.BackupStanza(), release)
	tg, err := c.Bootstrap.Restore.Target()
	if err != nil || tg.Time.IsZero() {
		t.Errorf("agent target %v, %v", tg, err)
	}
}

// TestRestorePOSIX: the source's volume is mounted read-only at
// /var/lib/holdfast-restore and is the default repository.
func TestRestorePOSIX(t *testing.T) {
	m := render(t, namespace, "bootstrap.restore.enabled=true", "bootstrap.restore.posix.existingClaim=old-backups",
		"bootstrap.restore.stanza=orders", "bootstrap.restore.targetXID=1234")
	cfg := agentConfig(t, m)
	want(t, "repository", str(cfg, "bootstrap", "restore", "repository"), "/var/lib/holdfast-restore")
	want(t, "target_xid", str(cfg, "bootstrap", "restore", "target_xid"), "1234")
	if at(cfg, "bootstrap", "restore", "s3") != nil {
		t.Error("s3 rendered for a directory repository")
	}
	wantClaimMounted(t, m, "restore-repo", "/var/lib/holdfast-restore", "old-backups")
	c := loadRendered(t, m)
	want(t, "agent repository", c.Bootstrap.Restore.Repository, "/var/lib/holdfast-restore")
}

// TestRestoreBadValues: refused, naming the value to set.
func TestRestoreBadValues(t *testing.T) {
	base := []string{"bootstrap.restore.enabled=true", "bootstrap.restore.posix.existingClaim=old", "bootstrap.restore.stanza=orders"}
	with := func(more ...string) []string { return append(append([]string{}, base...), more...) }
	for _, tc := range []struct {
		sets  []string
		names []string
	}{
		{[]string{"bootstrap.restore.enabled=true", "bootstrap.restore.stanza=orders"}, []string{"bootstrap.restore.repository is required"}},
		{[]string{"bootstrap.restore.enabled=true", "bootstrap.restore.posix.existingClaim=old"}, []string{"bootstrap.restore.stanza is required"}},
		{with("backup.enabled=true", "backup.posix.existingClaim=new", "backup.stanza=orders"), []string{"bootstrap.restore.stanza", "also this cluster's backup stanza", "backup.stanza"}},
		{with("backup.enabled=true", "backup.posix.existingClaim=new", "bootstrap.restore.stanza="+release), []string{"also this cluster's backup stanza"}},
		{with("bootstrap.restore.targetTime=2026-12-06T10:15:00Z", "bootstrap.restore.targetXID=12"), []string{"at most one of targetTime, targetLSN and targetXID"}},
		{with("bootstrap.restore.targetLSN=12345"), []string{"targetLSN"}},
		{with("bootstrap.restore.repository=/backups"), []string{"bootstrap.restore.repository", "/var/lib/holdfast-restore"}},
		{with("bootstrap.restore.repository=s3://pg-backups/x"), []string{"bootstrap.restore.s3.endpoint is required"}},
		{[]string{"bootstrap.restore.enabled=true", "bootstrap.restore.stanza=orders", "bootstrap.restore.repository=s3://b-1/x",
			"bootstrap.restore.s3.endpoint=minio:9000", "bootstrap.restore.s3.region=us-east-1"}, []string{"bootstrap.restore.s3.existingSecret is required"}},
		{with("bootstrap.restore.s3.existingSecret=creds"), []string{"bootstrap.restore.s3", "not an s3:// bucket"}},
	} {
		t.Run(strings.Join(tc.sets, ","), func(t *testing.T) {
			t.Parallel()
			wantRefused(t, tc.sets, tc.names...)
		})
	}
}

// TestRestoreLint: helm lint --strict accepts both source shapes.
func TestRestoreLint(t *testing.T) {
	for _, sets := range [][]string{restoreS3Values, {"bootstrap.restore.enabled=true", "bootstrap.restore.posix.existingClaim=old", "bootstrap.restore.stanza=orders", "bootstrap.restore.targetXID=1234"}} {
		args := []string{"lint", chartDir(t), "--strict"}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, errOut, err := runHelm(t, args...); err != nil {
			t.Errorf("helm %v: %v\n%s%s", args, err, out, errOut)
		}
	}
}
