package backup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/config"
)

func s3Config(t *testing.T) config.Backup {
	t.Helper()
	dir := t.TempDir()
	key, secret, pass := filepath.Join(dir, "key"), filepath.Join(dir, "secret"), filepath.Join(dir, "pass")
	for f, v := range map[string]string{key: "AKIAEXAMPLE\n", secret: "s3cr3t-value\n", pass: "pass phrase"} {
		if err := os.WriteFile(f, []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return config.Backup{Repository: "s3://my-bucket/backups/pg", RetentionFull: 2, CipherPassFile: pass,
		S3: config.BackupS3{Endpoint: "minio.internal:9000", Region: "us-east-1", URIStyle: "path",
			CAFile: "/etc/ca.pem", KeyFile: key, SecretFile: secret}}
}

func TestNewRepoS3RendersNoSecret(t *testing.T) {
	b := s3Config(t)
	if errs := b.Problems("backup."); len(errs) > 0 {
		t.Fatal(errs)
	}
	r, err := NewRepo(b)
	if err != nil {
		t.Fatal(err)
	}
	if !r.IsS3() || !r.Encrypted || r.S3.Bucket != "my-bucket" || r.S3.Path != "/backups/pg" || r.S3.Host != "minio.internal" || r.S3.Port != 9000 {
		t.Fatalf("repo %+v s3 %+v", r, r.S3)
	}
	if r.Secrets != (Secrets{S3Key: "AKIAEXAMPLE", S3Secret: "s3cr3t-value", CipherPass: "pass phrase"}) {
		t.Fatal("secrets not read from their files (one line, the line break dropped)")
	}
	conf, err := RenderConf(Settings{Repo: r, Stanza: "s", RetentionFull: 2, WorkDir: "/w",
		PG: []PGCluster{{Path: "/d", Port: 5432, User: "postgres"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"repo1-type=s3\n", "repo1-path=/backups/pg\n", "repo1-s3-bucket=my-bucket\n",
		"repo1-s3-endpoint=minio.internal\n", "repo1-storage-port=9000\n", "repo1-s3-region=us-east-1\n",
		"repo1-s3-uri-style=path\n", "repo1-storage-ca-file=/etc/ca.pem\n", "repo1-cipher-type=aes-256-cbc\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("missing %q in\n%s", want, conf)
		}
	}
	for _, secret := range []string{"AKIAEXAMPLE", "s3cr3t-value", "pass phrase"} {
		if strings.Contains(conf, secret) {
			t.Errorf("pgbackrest.conf holds a secret:\n%s", conf)
		}
		var logged strings.Builder
		slog.New(slog.NewTextHandler(&logged, nil)).Info("repo", "repo", r, "secrets", r.Secrets)
		for _, s := range []string{fmt.Sprintf("%v %+v %#v %s", r, r, r, r), fmt.Sprint(r.Secrets), logged.String()} {
			if strings.Contains(s, secret) {
				t.Errorf("a secret shows: %s", s)
			}
		}
	}
	env := strings.Join(r.Secrets.Env(), " ")
	for _, want := range []string{"PGBACKREST_REPO1_S3_KEY=AKIAEXAMPLE", "PGBACKREST_REPO1_S3_KEY_SECRET=s3cr3t-value", "PGBACKREST_REPO1_CIPHER_PASS=pass phrase"} {
		if !strings.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	f := filepath.Join(t.TempDir(), "secrets")
	if err := os.WriteFile(f, []byte(encodeSecrets(r.Secrets)), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := ReadSecretsFile(f); err != nil || got != r.Secrets {
		t.Fatalf("secrets file round trip: %v", err)
	}
}

func TestNewRepoRefusesUnreadableSecret(t *testing.T) {
	b := s3Config(t)
	b.S3.SecretFile = "/nonexistent/secret"
	if _, err := NewRepo(b); err == nil || !strings.Contains(err.Error(), "backup.s3.secret_file: read /nonexistent/secret") {
		t.Fatalf("got %v", err)
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	b = s3Config(t)
	b.CipherPassFile = empty
	if _, err := NewRepo(b); err == nil || !strings.Contains(err.Error(), "backup.cipher_pass_file "+empty+" is empty") {
		t.Fatalf("got %v", err)
	}
	r, err := NewRepo(config.Backup{Repository: "/repo", RetentionFull: 1})
	if err != nil || r.IsS3() || r.Encrypted || !r.Secrets.Empty() {
		t.Fatalf("posix repo %+v: %v", r, err)
	}
}

func TestExplainRepoError(t *testing.T) {
	r := Repo{Location: "s3://b/p", S3: &S3{Bucket: "b", Host: "localhost", Port: 7070}}
	for _, c := range []struct{ msg, want string }{
		{"[HostConnectError] unable to connect to 'localhost:7070': [111] Connection refused", "the S3 endpoint localhost:7070 cannot be reached"},
		{"[HostConnectError] unable to get address for 'nowhere': [-2] Name or service not known", "cannot be reached"},
		{"[CryptoError] unable to verify certificate presented by 'localhost:7070': [20] unable to get local issuer certificate", "give the CA that signed its certificate in backup.s3.ca_file"},
		{"[ProtocolError] HTTP request failed with 403 (Forbidden):\n<Error><Code>SignatureDoesNotMatch</Code></Error>", "refused the credentials (SignatureDoesNotMatch)"},
		{"[ProtocolError] HTTP request failed with 403 (Forbidden):\n*** no body", "refused the credentials (403 Forbidden)"},
		{"[ProtocolError] HTTP request failed with 404 (Not Found):\n<Error><Code>NoSuchBucket</Code></Error>", "bucket b does not exist at localhost:7070: create it"},
		{"[CryptoError] cipher header invalid", "cannot be decrypted"},
		{"[FormatError] something new\nsecond line", "[FormatError] something new"},
	} {
		got := ExplainRepoError(r, c.msg)
		if !strings.Contains(got, c.want) || strings.Contains(got, "second line") {
			t.Errorf("%q:\n got %s\nwant %s", c.msg, got, c.want)
		}
	}
}

func TestParseInfoRepoError(t *testing.T) {
	out := `[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"x","repo":[{"cipher":"none","key":1,"status":{"code":99,"message":"[HostConnectError] unable to connect to 'localhost:1': [111] Connection refused"}}],"status":{"code":99,"lock":{"backup":{"held":false}},"message":"other"}}]`
	sts, err := ParseInfo([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || !strings.HasPrefix(sts[0].RepoError, "[HostConnectError]") || sts[0].Cipher != "none" {
		t.Fatalf("%+v", sts)
	}
	err = explainRead(Repo{Location: "s3://b", S3: &S3{Bucket: "b", Host: "localhost", Port: 1}}, "x", &RepoError{Message: sts[0].RepoError})
	var re *RepoError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "repository s3://b cannot be used: the S3 endpoint localhost:1 cannot be reached") {
		t.Fatalf("got %v", err)
	}
}

func TestUnreadableRepoMessage(t *testing.T) {
	out := []byte("[{\"archive\":[],\"name\":\"s\",\"repo\":[{\"status\":{\"code\":99,\"message\":\"[FormatError] invalid format in '/r/backup.info', line 1: Salted__\x11\x99\"}}],\"status\":{\"code\":99,\"message\":\"other\"}}]")
	if _, err := ParseInfo(out); err == nil {
		t.Fatal("the sample parses: it should not")
	}
	msg, ok := unreadableRepoMessage(out)
	if !ok || !strings.HasPrefix(msg, "[FormatError] invalid format in '/r/backup.info', line 1: Salted__") || strings.ContainsAny(msg, "\x11\x99") {
		t.Fatalf("got %q %v", msg, ok)
	}
	if got := ExplainRepoError(Repo{Location: "/r"}, msg); !strings.Contains(got, "give the passphrase") {
		t.Errorf("got %s", got)
	}
	if _, ok := unreadableRepoMessage([]byte("garbage")); ok {
		t.Error("garbage read as a repository error")
	}
}

// TestReadSecretsFileRefuses: secrets in a file others may read or write,
// another account's file, or not a regular file are not used.
func TestReadSecretsFileRefuses(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "secrets")
	if err := os.WriteFile(f, []byte(encodeSecrets(Secrets{CipherPass: "p"})), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := ReadSecretsFile(f); err != nil || s.CipherPass != "p" {
		t.Fatalf("a 0600 file of this account: %v", err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		if err := os.Chmod(f, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadSecretsFile(f); err == nil || !strings.Contains(err.Error(), "want 0600") {
			t.Errorf("mode %#o: %v", mode, err)
		}
	}
	if err := os.Chmod(f, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadSecretsFile(f); err != nil {
		t.Errorf("mode 0400: %v", err)
	}
	if _, err := ReadSecretsFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory: %v", err)
	}
	fi, err := os.Stat(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkSecretsFile(f, fi, os.Geteuid()+1); err == nil || !strings.Contains(err.Error(), "is owned by uid") {
		t.Errorf("another account's file: %v", err)
	}
}
