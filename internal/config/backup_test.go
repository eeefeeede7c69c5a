package config

import (
	"strings"
	"testing"
)

func TestBackupS3Problems(t *testing.T) {
	good := Backup{Repository: "s3://my-bucket/pg", RetentionFull: 2, CipherPassFile: "/run/pass",
		S3: BackupS3{Endpoint: "minio:9000", Region: "us-east-1", URIStyle: "path", KeyFile: "/run/key", Secret: "from-env"}}
	if errs := good.Problems("backup."); len(errs) > 0 {
		t.Fatalf("good S3 section refused: %v", errs)
	}
	for _, c := range []struct {
		change func(*Backup)
		want   string
	}{
		{func(b *Backup) { b.Repository = "s3://My_Bucket/pg" }, "backup.repository: bucket"},
		{func(b *Backup) { b.Repository = "s3://bucket/a//b" }, "not a clean path"},
		{func(b *Backup) { b.S3.Endpoint = "" }, "backup.s3.endpoint: required"},
		{func(b *Backup) { b.S3.Endpoint = "https://minio:9000" }, "without a scheme"},
		{func(b *Backup) { b.S3.Endpoint = "minio:0" }, "port"},
		{func(b *Backup) { b.S3.Region = "" }, "backup.s3.region: required"},
		{func(b *Backup) { b.S3.URIStyle = "virtual" }, "backup.s3.uri_style"},
		{func(b *Backup) { b.S3.CAFile = "ca.pem" }, "backup.s3.ca_file"},
		{func(b *Backup) { b.S3.KeyFile = "" }, "backup.s3.key: required"},
		{func(b *Backup) { b.S3.Key = "AKIA" }, "backup.s3.key: give the access key id once"},
		{func(b *Backup) { b.S3.Secret = "" }, "HOLDFAST_BACKUP_S3_SECRET"},
		{func(b *Backup) { b.S3.Secret = "two words" }, "(not shown)"},
		{func(b *Backup) { b.CipherPass = "x" }, "backup.cipher_pass: give the passphrase once"},
		{func(b *Backup) { b.CipherPassFile = "pass" }, "backup.cipher_pass_file"},
		{func(b *Backup) { b.Repository = "/var/backups" }, "backup.s3: set only for an s3:// repository"},
	} {
		b := good
		c.change(&b)
		errs := b.Problems("backup.")
		var all []string
		for _, e := range errs {
			all = append(all, e.Error())
		}
		joined := strings.Join(all, "\n")
		if !strings.Contains(joined, c.want) {
			t.Errorf("%+v: problems %q, want %q", b, joined, c.want)
		}
		if strings.Contains(joined, "two words") || strings.Contains(joined, "from-env") {
			t.Errorf("a secret shows in %q", joined)
		}
	}
	if errs := (Backup{Repository: "/var/backups", RetentionFull: 1, CipherPass: "p"}).Problems(""); len(errs) > 0 {
		t.Errorf("an encrypted POSIX repository refused: %v", errs)
	}
}

func TestBackupS3FromEnvironment(t *testing.T) {
	c, _, err := loadYAML(t, baseYAML, LoadOptions{Env: []string{
		"HOLDFAST_BACKUP_REPOSITORY=s3://bucket/x", "HOLDFAST_BACKUP_S3_ENDPOINT=s3.example.com",
		"HOLDFAST_BACKUP_S3_REGION=eu-west-1", "HOLDFAST_BACKUP_S3_KEY=AKIA", "HOLDFAST_BACKUP_S3_SECRET=sec",
		"HOLDFAST_BACKUP_CIPHER_PASS=pw",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Backup.S3.Key != "AKIA" || c.Backup.S3.Secret != "sec" || c.Backup.CipherPass != "pw" || !c.Backup.IsS3() {
		t.Fatalf("%+v", c.Backup)
	}
}

// TestBackupTLSProblems: backup.tls needs all three files, absolute, a
// port in range and a repository; Load refuses the rest with the key.
func TestBackupTLSProblems(t *testing.T) {
	good := "backup:\n  repository: /var/backups\n  tls:\n    cert_file: /etc/tls/tls.crt\n    key_file: /etc/tls/tls.key\n    ca_file: /etc/tls/ca.crt\n"
	c, _, err := loadYAML(t, baseYAML+good, LoadOptions{})
	if err != nil {
		t.Fatalf("a good backup.tls refused: %v", err)
	}
	if !c.Backup.TLS.Enabled() || c.Backup.TLS.ServerPort() != DefaultBackupTLSPort {
		t.Fatalf("backup.tls = %+v, want enabled on port %d", c.Backup.TLS, DefaultBackupTLSPort)
	}
	c, _, err = loadYAML(t, baseYAML+good+"    port: 9432\n    client_cn: [a, b]\n", LoadOptions{})
	if err != nil || c.Backup.TLS.ServerPort() != 9432 || len(c.Backup.TLS.ClientCN) != 2 {
		t.Fatalf("backup.tls with port and client_cn: %+v, %v", c.Backup.TLS, err)
	}
	for _, bad := range []struct{ yaml, want string }{
		{"backup:\n  repository: /var/backups\n  tls:\n    cert_file: /etc/tls/tls.crt\n", "backup.tls.key_file: required"},
		{"backup:\n  repository: /var/backups\n  tls:\n    cert_file: tls.crt\n    key_file: /k\n    ca_file: /c\n", "backup.tls.cert_file: \"tls.crt\" is not an absolute path"},
		{strings.Replace(good, "tls:\n", "tls:\n    port: 70000\n", 1), "backup.tls.port"},
		{strings.Replace(good, "tls:\n", "tls:\n    client_cn: [\"a=b\"]\n", 1), "backup.tls.client_cn"},
		{"backup:\n  tls:\n    cert_file: /a\n    key_file: /b\n    ca_file: /c\n", "backup.repository: required when backup.tls is set"},
		{"backup:\n  repository: /var/backups\n  tls:\n    port: 9432\n", "backup.tls.cert_file: required"},
	} {
		if _, _, err := loadYAML(t, baseYAML+bad.yaml, LoadOptions{}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v; want %q", bad.yaml, err, bad.want)
		}
	}
}
