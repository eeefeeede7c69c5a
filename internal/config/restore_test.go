package config

import (
	"strings"
	"testing"
)

// restoreYAML is baseYAML with backups into stanza "new" and a bootstrap
// from stanza "old" of the same repository.
const restoreYAML = baseYAML + `
backup:
  repository: /var/backups
  stanza: new
bootstrap:
  restore:
    repository: /var/backups
    stanza: old
    target_time: "2026-12-06T10:15:00Z"
`

func TestBootstrapRestoreLoads(t *testing.T) {
	c, _, err := loadYAML(t, restoreYAML, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := c.Bootstrap.Restore
	if !r.Enabled() || r.Stanza != "old" {
		t.Fatalf("bootstrap.restore = %+v", r)
	}
	tg, err := r.Target()
	if err != nil || tg.Time.IsZero() || tg.String() != "time 2026-12-06T10:15:00Z" {
		t.Fatalf("target %v, %v", tg, err)
	}
	// S3 credentials come from the section's own variables.
	c, _, err = loadYAML(t, baseYAML, LoadOptions{Env: []string{
		"HOLDFAST_BOOTSTRAP_RESTORE_REPOSITORY=s3://bucket/x", "HOLDFAST_BOOTSTRAP_RESTORE_STANZA=old",
		"HOLDFAST_BOOTSTRAP_RESTORE_S3_ENDPOINT=s3.example.com", "HOLDFAST_BOOTSTRAP_RESTORE_S3_REGION=eu-west-1",
		"HOLDFAST_BOOTSTRAP_RESTORE_S3_KEY=AKIA", "HOLDFAST_BOOTSTRAP_RESTORE_S3_SECRET=sec",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Bootstrap.Restore.Source(); !s.IsS3() || s.S3.Key != "AKIA" || s.S3.Secret != "sec" {
		t.Fatalf("source %+v", s)
	}
	// Off: nothing set is valid.
	if c, _, err := loadYAML(t, baseYAML, LoadOptions{}); err != nil || c.Bootstrap.Restore.Enabled() {
		t.Fatalf("no bootstrap section: %v %+v", err, c.Bootstrap)
	}
}

func TestBootstrapRestoreRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		wants      []string
	}{
		{"same stanza as own", strings.Replace(restoreYAML, "stanza: old", "stanza: new", 1),
			[]string{"bootstrap.restore.stanza", `"new" is also this cluster's own backup stanza`, "never archive into its source's stanza"}},
		{"source is the cluster name (own default stanza)", strings.Replace(strings.Replace(restoreYAML, "  stanza: new\n", "", 1), "stanza: old", "stanza: holdfast", 1),
			[]string{"bootstrap.restore.stanza", "also this cluster's own backup stanza"}},
		{"no stanza", strings.Replace(restoreYAML, "    stanza: old\n", "", 1),
			[]string{"bootstrap.restore.stanza: required"}},
		{"no repository", strings.Replace(restoreYAML, "    repository: /var/backups\n", "", 1),
			[]string{"bootstrap.restore.repository: required"}},
		{"relative repository", strings.Replace(restoreYAML, "    repository: /var/backups", "    repository: backups", 1),
			[]string{"bootstrap.restore.repository", "not an absolute path"}},
		{"bad time", strings.Replace(restoreYAML, `"2026-12-06T10:15:00Z"`, "yesterday", 1),
			[]string{"bootstrap.restore", `target_time "yesterday": not an RFC 3339 time`}},
		{"two targets", strings.Replace(restoreYAML, "    target_time:", "    target_xid: \"1234\"\n    target_time:", 1),
			[]string{"give one of target_time, target_lsn and target_xid"}},
		{"bad lsn", strings.Replace(restoreYAML, `    target_time: "2026-12-06T10:15:00Z"`, "    target_lsn: 12345", 1),
			[]string{`target_lsn "12345": not a WAL position`}},
		{"bad set", strings.Replace(restoreYAML, "    stanza: old", "    stanza: old\n    set: latest", 1),
			[]string{"bootstrap.restore.set", "not a backup label"}},
		{"s3 without credentials", strings.Replace(restoreYAML, "    repository: /var/backups", "    repository: s3://bucket/x\n    s3: {endpoint: minio:9000, region: us-east-1}", 1),
			[]string{"bootstrap.restore.s3.key: required", "HOLDFAST_BOOTSTRAP_RESTORE_S3_KEY"}},
		{"witness", strings.Replace(restoreYAML, "name: n1", "name: n1\nwitness: true", 1),
			[]string{"a witness runs no database"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := loadYAML(t, tc.yaml, LoadOptions{})
			wantErr(t, err, path, tc.wants...)
		})
	}
}
