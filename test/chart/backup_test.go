package chart_test

// The chart's backup values (docs/backups.md, "Kubernetes"): off by default
// and then rendering nothing; an S3 bucket with credentials from an existing
// Secret; a directory on a shared ReadWriteMany volume; refusals naming the
// value to set.

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// s3Values: an S3 repository with every optional piece (CA, encryption,
// schedule).
var s3Values = []string{
	"backup.enabled=true",
	"backup.repository=s3://pg-backups/orders",
	"backup.s3.endpoint=minio.backup.svc:9000",
	"backup.s3.region=us-east-1",
	"backup.s3.uriStyle=path",
	"backup.s3.existingSecret=s3-creds",
	"backup.s3.caSecret=s3-ca",
	"backup.cipherPassSecret=backup-pass",
	"backup.retentionFull=3",
	"backup.schedule=full=168h\\,incr=1h",
}

// randomData is the generated Secret data (passwords, certificate, key):
// different at every render.
var randomData = regexp.MustCompile(`(?m)^(  (superuser-password|replication-password|api-token|proxy-auth-password|proxy-mock-secret|tls\.crt|tls\.key|ca\.crt): ).*$`)

// renderText is helm template's output with the random Secret data masked.
func renderText(t *testing.T, sets ...string) string {
	t.Helper()
	args := []string{"template", release, chartDir(t), "--namespace", namespace}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, errOut, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return randomData.ReplaceAllString(out, "${1}RANDOM")
}

// TestBackupOffRendersNothing: with backup.enabled false, every backup
// value set changes nothing in what is rendered, byte for byte, so a
// cluster installed without backups (and the Kubernetes end-to-end test)
// is unaffected by the backup values.
func TestBackupOffRendersNothing(t *testing.T) {
	def := renderText(t)
	if strings.Contains(def, "backup") {
		t.Errorf("the default render mentions backups:\n%s", grepLines(def, "backup"))
	}
	off := append([]string{"backup.enabled=false"}, s3Values[1:]...)
	off = append(off, "backup.posix.existingClaim=shared", "backup.s3.caConfigMap=ca", "backup.s3.tlsSkipVerify=true")
	if got := renderText(t, off...); got != def {
		t.Errorf("backup.enabled=false with backup values set renders differently from the defaults:\n%s", firstDiff(def, got))
	}
}

func grepLines(text, word string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, word) {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// firstDiff shows the first line where a and b differ.
func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range max(len(al), len(bl)) {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return fmt.Sprintf("line %d:\n- %s\n+ %s", i+1, x, y)
		}
	}
	return "(same lines)"
}

// projected lists the sources of the projected config volume.
func projected(t *testing.T, m manifest) []any {
	t.Helper()
	for _, v := range list(m.get(t, "StatefulSet", release), "spec", "template", "spec", "volumes") {
		if str(v, "name") == "config" {
			return list(v, "projected", "sources")
		}
	}
	t.Fatal("no config volume")
	return nil
}

// projectedFile finds the source projecting path: its kind (secret or
// configMap), object name and key.
func projectedFile(t *testing.T, m manifest, path string) (kind, name, key string) {
	t.Helper()
	for _, src := range projected(t, m) {
		for _, k := range []string{"secret", "configMap"} {
			for _, it := range list(src, k, "items") {
				if str(it, "path") == path {
					return k, str(src, k, "name"), str(it, "key")
				}
			}
		}
	}
	return "", "", ""
}

func TestBackupS3(t *testing.T) {
	m := render(t, namespace, s3Values...)
	cfg := agentConfig(t, m)
	want(t, "backup_schedule", str(cfg, "backup_schedule"), "full=168h,incr=1h")
	want(t, "backup.repository", str(cfg, "backup", "repository"), "s3://pg-backups/orders")
	want(t, "backup.retention_full", at(cfg, "backup", "retention_full"), any(3))
	want(t, "backup.cipher_pass_file", str(cfg, "backup", "cipher_pass_file"), "/etc/holdfast/backup/cipher-pass")
	want(t, "backup.s3.endpoint", str(cfg, "backup", "s3", "endpoint"), "minio.backup.svc:9000")
	want(t, "backup.s3.region", str(cfg, "backup", "s3", "region"), "us-east-1")
	want(t, "backup.s3.uri_style", str(cfg, "backup", "s3", "uri_style"), "path")
	want(t, "backup.s3.ca_file", str(cfg, "backup", "s3", "ca_file"), "/etc/holdfast/backup/s3-ca.crt")
	want(t, "backup.s3.key_file", str(cfg, "backup", "s3", "key_file"), "/etc/holdfast/backup/s3-access-key-id")
	want(t, "backup.s3.secret_file", str(cfg, "backup", "s3", "secret_file"), "/etc/holdfast/backup/s3-secret-access-key")
	if at(cfg, "backup", "s3", "tls_skip_verify") != nil {
		t.Error("tls_skip_verify rendered without backup.s3.tlsSkipVerify")
	}

	// Every file the config names is projected from the user's objects.
	for path, wantSrc := range map[string]string{
		"backup/s3-access-key-id":     "secret s3-creds access-key-id",
		"backup/s3-secret-access-key": "secret s3-creds secret-access-key",
		"backup/s3-ca.crt":            "secret s3-ca ca.crt",
		"backup/cipher-pass":          "secret backup-pass passphrase",
	} {
		kind, name, key := projectedFile(t, m, path)
		want(t, path+" from", kind+" "+name+" "+key, wantSrc)
	}

	// Nothing secret in a ConfigMap or in the environment; no Secret
	// created for the backups (the chart only references the users').
	for _, cm := range m.all("ConfigMap") {
		text := fmt.Sprint(cm["data"])
		for _, re := range []string{`(?m)^\s*(key|secret|cipher_pass):`, `HOLDFAST_BACKUP_`} {
			if regexp.MustCompile(re).MatchString(text) {
				t.Errorf("ConfigMap %s holds a credential setting (%s):\n%s", cm.name(), re, text)
			}
		}
	}
	for _, e := range list(agentContainer(t, m), "env") {
		if strings.HasPrefix(str(e, "name"), "HOLDFAST_BACKUP_") {
			t.Errorf("backup credential %s in the environment (PostgreSQL and every child would inherit it)", str(e, "name"))
		}
	}
	for _, s := range m.all("Secret") {
		if n := s.name(); n != release+"-auth" && n != release+"-tls" {
			t.Errorf("the chart renders Secret %s", n)
		}
	}
	// An S3 repository needs no shared volume.
	for _, vm := range list(agentContainer(t, m), "volumeMounts") {
		if str(vm, "name") == "backup-repo" {
			t.Error("a backup-repo volume is mounted for an S3 repository")
		}
	}

	// The agent's own loader accepts it.
	c := loadRendered(t, m)
	want(t, "agent backup.repository", c.Backup.Repository, "s3://pg-backups/orders")
	want(t, "agent backup.s3.key_file", c.Backup.S3.KeyFile, "/etc/holdfast/backup/s3-access-key-id")
	want(t, "agent backup_schedule", c.BackupSchedule, "full=168h,incr=1h")
	want(t, "agent stanza", c.BackupStanza(), release)

	t.Run("CA from a ConfigMap, no encryption, skip verify", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "backup.enabled=true", "backup.repository=s3://pg-backups", "backup.s3.endpoint=s3.example.com",
			"backup.s3.region=eu-west-1", "backup.s3.existingSecret=creds", "backup.s3.accessKeyIdKey=AWS_ACCESS_KEY_ID",
			"backup.s3.secretAccessKeyKey=AWS_SECRET_ACCESS_KEY", "backup.s3.caConfigMap=bundle", "backup.s3.caKey=root.pem",
			"backup.s3.tlsSkipVerify=true", "backup.stanza=orders-2")
		kind, name, key := projectedFile(t, m, "backup/s3-ca.crt")
		want(t, "CA from", kind+" "+name+" "+key, "configMap bundle root.pem")
		_, name, key = projectedFile(t, m, "backup/s3-access-key-id")
		want(t, "key from", name+" "+key, "creds AWS_ACCESS_KEY_ID")
		if kind, _, _ := projectedFile(t, m, "backup/cipher-pass"); kind != "" {
			t.Error("a passphrase is projected without backup.cipherPassSecret")
		}
		cfg := agentConfig(t, m)
		if at(cfg, "backup", "cipher_pass_file") != nil || at(cfg, "backup_schedule") != nil {
			t.Errorf("cipher_pass_file or backup_schedule rendered unset: %v", cfg["backup"])
		}
		want(t, "tls_skip_verify", at(cfg, "backup", "s3", "tls_skip_verify"), any(true))
		c := loadRendered(t, m)
		want(t, "agent stanza", c.BackupStanza(), "orders-2")
		want(t, "agent retention_full", c.Backup.RetentionFull, 2)
	})
}

func TestBackupPOSIX(t *testing.T) {
	for _, tc := range []struct {
		sets []string
		repo string
	}{
		{[]string{"backup.posix.existingClaim=pg-backups"}, "/var/lib/holdfast-backup"},
		{[]string{"backup.posix.existingClaim=pg-backups", "backup.repository=/var/lib/holdfast-backup/orders/"}, "/var/lib/holdfast-backup/orders"},
	} {
		t.Run(strings.Join(tc.sets, ","), func(t *testing.T) {
			t.Parallel()
			m := render(t, namespace, append([]string{"backup.enabled=true", "backup.cipherPassSecret=pass"}, tc.sets...)...)
			cfg := agentConfig(t, m)
			want(t, "backup.repository", str(cfg, "backup", "repository"), tc.repo)
			if at(cfg, "backup", "s3") != nil {
				t.Error("backup.s3 rendered for a directory repository")
			}
			wantClaimMounted(t, m, "backup-repo", "/var/lib/holdfast-backup", "pg-backups")
			// One shared claim, never a per-pod volumeClaimTemplate.
			for _, tmpl := range list(m.get(t, "StatefulSet", release), "spec", "volumeClaimTemplates") {
				if n := str(tmpl, "metadata", "name"); n != "data" {
					t.Errorf("volumeClaimTemplate %s rendered", n)
				}
			}
			if kind, _, _ := projectedFile(t, m, "backup/s3-access-key-id"); kind != "" {
				t.Error("S3 credentials projected for a directory repository")
			}
			c := loadRendered(t, m)
			want(t, "agent backup.repository", c.Backup.Repository, tc.repo)
			want(t, "agent cipher_pass_file", c.Backup.CipherPassFile, "/etc/holdfast/backup/cipher-pass")
		})
	}
}

func TestBackupLint(t *testing.T) {
	for _, sets := range [][]string{s3Values, {"backup.enabled=true", "backup.posix.existingClaim=pg-backups"}} {
		args := []string{"lint", chartDir(t), "--strict"}
		for _, s := range sets {
			args = append(args, "--set", s)
		}
		if out, errOut, err := runHelm(t, args...); err != nil {
			t.Errorf("helm %v: %v\n%s%s", args, err, out, errOut)
		}
	}
}

// TestBackupBadValues: refused, with an error naming the value to set.
func TestBackupBadValues(t *testing.T) {
	s3 := func(more ...string) []string {
		base := []string{"backup.enabled=true", "backup.repository=s3://pg-backups/x", "backup.s3.endpoint=minio:9000",
			"backup.s3.region=us-east-1", "backup.s3.existingSecret=creds"}
		return append(base, more...)
	}
	without := func(key string) []string {
		var r []string
		for _, s := range s3() {
			if !strings.HasPrefix(s, key+"=") {
				r = append(r, s)
			}
		}
		return r
	}
	for _, tc := range []struct {
		sets  []string
		names []string // each must appear in stderr
	}{
		{[]string{"backup.enabled=true"}, []string{"backup.repository is required", "backup.posix.existingClaim"}},
		{without("backup.s3.endpoint"), []string{"backup.s3.endpoint is required"}},
		{without("backup.s3.region"), []string{"backup.s3.region is required"}},
		{without("backup.s3.existingSecret"), []string{"backup.s3.existingSecret is required", "access-key-id", "secret-access-key"}},
		{s3("backup.s3.endpoint=https://minio:9000"), []string{"endpoint"}},
		{s3("backup.repository=s3://Bad_Bucket/x"), []string{"backup.repository", "Bad_Bucket", "bucket name"}},
		{s3("backup.posix.existingClaim=shared"), []string{"backup.posix.existingClaim", "S3"}},
		{s3("backup.s3.caSecret=a", "backup.s3.caConfigMap=b"), []string{"backup.s3.caSecret", "backup.s3.caConfigMap"}},
		{s3("backup.s3.uriStyle=virtual"), []string{"uriStyle"}},
		{s3("backup.retentionFull=0"), []string{"retentionFull"}},
		{s3("backup.schedule=weekly"), []string{"schedule"}},
		{s3("backup.schedule=full=30s"), []string{"backup.schedule", "shorter than 1m"}},
		{s3("backup.schedule=full=1h\\,full=2h"), []string{"backup.schedule", "full twice"}},
		{s3("backup.s3.key=AKIA"), []string{"key"}},
		{[]string{"backup.enabled=true", "backup.repository=/var/lib/holdfast-backup"}, []string{"backup.posix.existingClaim is not set", "ReadWriteMany"}},
		{[]string{"backup.enabled=true", "backup.posix.existingClaim=shared", "backup.repository=/backups"}, []string{"backup.repository", "not on the shared volume", "/var/lib/holdfast-backup"}},
		{[]string{"backup.enabled=true", "backup.posix.existingClaim=shared", "backup.repository=/var/lib/holdfast-backup/../holdfast"}, []string{"not on the shared volume"}},
		{[]string{"backup.enabled=true", "backup.posix.existingClaim=shared", "backup.s3.existingSecret=creds"}, []string{"backup.s3", "not an s3:// bucket"}},
		{[]string{"backup.enabled=true", "backup.repository=relative/dir"}, []string{"repository"}},
		{[]string{"backup.enabled=true", "backup.posix.existingClaim=shared", "backup.stanza=-bad"}, []string{"stanza"}},
	} {
		t.Run(strings.Join(tc.sets, ","), func(t *testing.T) {
			t.Parallel()
			wantRefused(t, tc.sets, tc.names...)
		})
	}
}

// wantClaimMounted checks that the agent container mounts the pod volume
// named volume at path, and that the volume is the shared claim claim.
func wantClaimMounted(t *testing.T, m manifest, volume, path, claim string) {
	t.Helper()
	mounted := false
	for _, vm := range list(agentContainer(t, m), "volumeMounts") {
		if str(vm, "name") == volume {
			want(t, volume+" mountPath", str(vm, "mountPath"), path)
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("the %s volume is not mounted", volume)
	}
	got := ""
	for _, v := range list(m.get(t, "StatefulSet", release), "spec", "template", "spec", "volumes") {
		if str(v, "name") == volume {
			got = str(v, "persistentVolumeClaim", "claimName")
		}
	}
	want(t, volume+" claim", got, claim)
}

// TestBackupTLSServer: with backups and TLS on (the defaults for TLS), the
// agents run pgBackRest's TLS server with the chart's certificate and
// expose its port, so replicas take the backups; off with tls.enabled
// false or backup.tlsServer.enabled false (then backups run on the
// primary).
func TestBackupTLSServer(t *testing.T) {
	m := render(t, namespace, s3Values...)
	cfg := agentConfig(t, m)
	want(t, "backup.tls.cert_file", str(cfg, "backup", "tls", "cert_file"), "/etc/holdfast/tls/tls.crt")
	want(t, "backup.tls.key_file", str(cfg, "backup", "tls", "key_file"), "/etc/holdfast/tls/tls.key")
	want(t, "backup.tls.ca_file", str(cfg, "backup", "tls", "ca_file"), "/etc/holdfast/tls/ca.crt")
	want(t, "backup.tls.port", at(cfg, "backup", "tls", "port"), any(8432))
	if !slices.Contains(containerPorts(agentContainer(t, m)), 8432) {
		t.Errorf("container ports %v: no 8432 for pgBackRest's TLS server", containerPorts(agentContainer(t, m)))
	}
	m = render(t, namespace, append(slices.Clone(s3Values), "backup.tlsServer.port=9432")...)
	want(t, "backup.tls.port", at(agentConfig(t, m), "backup", "tls", "port"), any(9432))
	for _, off := range []string{"tls.enabled=false", "backup.tlsServer.enabled=false"} {
		m := render(t, namespace, append(slices.Clone(s3Values), off)...)
		if at(agentConfig(t, m), "backup", "tls") != nil {
			t.Errorf("%s: backup.tls rendered", off)
		}
		if slices.Contains(containerPorts(agentContainer(t, m)), 8432) {
			t.Errorf("%s: port 8432 exposed", off)
		}
	}
}
