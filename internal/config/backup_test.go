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
