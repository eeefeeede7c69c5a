package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/ctl"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/s3test"
	"github.com/holdfast/holdfast/internal/testutil/testca"
)

// Timeouts of the S3 tests.
const (
	// refusalTimeout bounds one refused holdfast up (an unreachable
	// endpoint takes pgBackRest about 40 s to give up on).
	refusalTimeout = 3 * time.Minute
)

// s3Bucket is the bucket the tests' repository lives in.
const s3Bucket = "holdfast-e2e"

// s3Server is a local S3-compatible server (versitygw's POSIX backend,
// built by scripts/s3/build.sh) speaking TLS with a throwaway CA.
type s3Server struct {
	// Root is the backend directory: Root/<bucket>/<object key>.
	Root string
	// Endpoint is localhost:port (a name the certificate holds).
	Endpoint string
	// CAFile verifies the server; KeyFile and SecretFile hold the root
	// credentials.
	CAFile, KeyFile, SecretFile string
}

// s3ServerBinary finds the S3 server (s3test.Binary), or skips the test
// when pgBackRest is missing too — fails it with HOLDFAST_S3_REQUIRED=1.
func s3ServerBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/pgbackrest"); err != nil {
		why := "pgbackrest is not installed (scripts/install-deps.sh installs it)"
		if os.Getenv("HOLDFAST_S3_REQUIRED") == "1" {
			t.Fatalf("%s (HOLDFAST_S3_REQUIRED=1)", why)
		}
		t.Skip(why)
	}
	return s3test.Binary(t)
}

// startS3 starts the S3 server with TLS on a free loopback port, with one
// bucket, s3Bucket; it stops when the test ends.
func startS3(t *testing.T) *s3Server {
	t.Helper()
	bin := s3ServerBinary(t)
	dir := filepath.Join(testutil.Dir(t), "s3")
	s := &s3Server{Root: filepath.Join(dir, "root"), CAFile: filepath.Join(dir, "ca.pem"),
		KeyFile: filepath.Join(dir, "access-key"), SecretFile: filepath.Join(dir, "secret-key")}
	if err := os.MkdirAll(filepath.Join(s.Root, s3Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := writeTestCerts(t, dir, s.CAFile)
	const access, secret = "e2e-access-key", "e2e-secret-0123456789"
	writeFile(t, s.KeyFile, access+"\n", 0o600)
	writeFile(t, s.SecretFile, secret+"\n", 0o600)

	ca, err := os.ReadFile(s.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	port := s3test.Start(t, s3test.Options{Bin: bin, Host: "127.0.0.1", ServerName: "localhost",
		CertFile: certFile, KeyFile: keyFile, CAPEM: ca, Root: s.Root, LogFile: filepath.Join(dir, "server.log"),
		AccessKey: access, SecretKey: secret})
	s.Endpoint = "localhost:" + strconv.Itoa(port)
	return s
}

// writeTestCerts writes a throwaway CA (caFile) and a server certificate
// for localhost and 127.0.0.1 signed by it into dir, and returns the
// server's certificate and key files.
func writeTestCerts(t *testing.T, dir, caFile string) (string, string) {
	t.Helper()
	ca, err := testca.New("holdfast e2e S3 CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("localhost", nil, []string{"localhost", "127.0.0.1"},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	writeFile(t, caFile, string(ca.CertPEM), 0o644)
	writeFile(t, certFile, string(certPEM), 0o644)
	writeFile(t, keyFile, string(keyPEM), 0o600)
	return certFile, keyFile
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// s3Repo describes a repository in the test server for a backup section.
type s3Repo struct {
	Repository, Endpoint, CAFile, KeyFile, SecretFile, CipherPassFile, Stanza string
}

// yaml renders the file holdfast up --backup-config and --restore-from
// read.
func (r s3Repo) yaml() string {
	var b strings.Builder
	b.WriteString("backup:\n  repository: " + r.Repository + "\n")
	if r.Stanza != "" {
		b.WriteString("  stanza: " + r.Stanza + "\n")
	}
	b.WriteString("  s3:\n    endpoint: " + r.Endpoint + "\n    region: us-east-1\n    uri_style: path\n")
	if r.CAFile != "" {
		b.WriteString("    ca_file: " + r.CAFile + "\n")
	}
	b.WriteString("    key_file: " + r.KeyFile + "\n    secret_file: " + r.SecretFile + "\n")
	if r.CipherPassFile != "" {
		b.WriteString("  cipher_pass_file: " + r.CipherPassFile + "\n")
	}
	return b.String()
}

// TestBackupS3Encrypted: a cluster archiving into an encrypted repository
// in a real S3-compatible server over TLS; a full backup from the replica;
// row A, a noted time, row B; `ctl reinit` of the replica restores it from
// the backup (reinitFromEncryptedS3); a restore to that time holds A and
// not B, a restore to the latest point both. The repository's files in the bucket
// are ciphertext, and no credential is in pgbackrest.conf. An unreachable
// endpoint, refused credentials, a missing bucket, an unknown CA and a
// wrong passphrase are refused up front with a message saying what to do,
// and change nothing: no cluster, no stanza, the bucket as it was.
func TestBackupS3Encrypted(t *testing.T) {
	s3 := startS3(t)
	dir := testutil.Dir(t)
	pass := filepath.Join(dir, "passphrase")
	writeFile(t, pass, "correct horse battery staple e2e\n", 0o600)
	good := s3Repo{Repository: "s3://" + s3Bucket + "/cluster", Endpoint: s3.Endpoint, CAFile: s3.CAFile,
		KeyFile: s3.KeyFile, SecretFile: s3.SecretFile, CipherPassFile: pass}
	goodFile := filepath.Join(dir, "backup.yaml")
	writeFile(t, goodFile, good.yaml(), 0o644)

	// Refusals before anything exists: nothing may be created, in the
	// bucket or on disk.
	wrongSecret := filepath.Join(dir, "wrong-secret")
	writeFile(t, wrongSecret, "not-the-secret\n", 0o600)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	before := bucketSnapshot(t, s3.Root)
	for _, c := range []struct {
		name string
		repo func(r *s3Repo)
		want string
	}{
		{"unreachable endpoint", func(r *s3Repo) { r.Endpoint = "localhost:" + strconv.Itoa(closedPort) }, "cannot be reached"},
		{"wrong credentials", func(r *s3Repo) { r.SecretFile = wrongSecret }, "refused the credentials"},
		{"missing bucket", func(r *s3Repo) { r.Repository = "s3://no-such-bucket/cluster" }, "bucket no-such-bucket does not exist"},
		{"unknown CA", func(r *s3Repo) { r.CAFile = "" }, "give the CA"},
	} {
		r := good
		c.repo(&r)
		f := filepath.Join(dir, "bad.yaml")
		writeFile(t, f, r.yaml(), 0o644)
		refusedUp(t, c.name, c.want, "--backup-config", f)
	}
	if after := bucketSnapshot(t, s3.Root); !slices.Equal(before, after) {
		t.Fatalf("refusals changed the bucket: before %v, after %v", before, after)
	}

	c := StartCluster(t, 2, "--backup-config", goodFile)
	stanza := c.Layout.Backup.Stanza
	primary := c.Primary()
	conf := filepath.Join(local.MemberDir(c.Dir, primary), "pgbackrest", "pgbackrest.conf")
	confText, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"e2e-access-key", "e2e-secret", "correct horse"} {
		if bytes.Contains(confText, []byte(s)) {
			t.Errorf("pgbackrest.conf holds a secret (%q):\n%s", s, confText)
		}
	}
	if !bytes.Contains(confText, []byte("repo1-type=s3")) || !bytes.Contains(confText, []byte("repo1-cipher-type=aes-256-cbc")) {
		t.Errorf("pgbackrest.conf does not configure an encrypted S3 repository:\n%s", confText)
	}
	for _, f := range []string{conf, filepath.Join(filepath.Dir(conf), "pgbackrest.secrets")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, mode %v; want 0600", f, err, fi)
		}
	}

	logReplicationCommands(c, primary)
	c.Exec(primary, "CREATE TABLE pitr (v text)")
	c.Exec(primary, "INSERT INTO pitr VALUES ('A')")
	target := c.backupThenTarget(primary)

	// The repository in the bucket is ciphertext: pgBackRest's info files
	// and the archived WAL start with OpenSSL's "Salted__" header, and no
	// info file's plain text shows.
	stanzaRoot := filepath.Join(s3.Root, s3Bucket, "cluster")
	var files, wal int
	err = filepath.WalkDir(stanzaRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stanzaRoot, p)
		files++
		if strings.HasPrefix(rel, "archive/") && strings.Contains(filepath.Base(p), "-") && !strings.HasSuffix(p, ".info") {
			wal++
		}
		if len(b) > 0 && !bytes.HasPrefix(b, []byte("Salted__")) {
			t.Errorf("%s is not encrypted (starts %q)", rel, b[:min(len(b), 16)])
		}
		if bytes.Contains(b, []byte("[backrest]")) || bytes.Contains(b, []byte("backrest-format")) {
			t.Errorf("%s holds plain text", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 || wal == 0 {
		t.Fatalf("the bucket holds %d files of stanza %s, %d of them WAL: want the repository's files and its archive", files, stanza, wal)
	}
	t.Logf("%d files in the bucket, %d WAL segments, all encrypted", files, wal)

	reinitFromEncryptedS3(t, c, primary)

	srcConfig := local.ConfigFile(c.Dir, primary)
	// A wrong passphrase is refused against the existing encrypted stanza.
	wrongPass := filepath.Join(dir, "wrong-passphrase")
	writeFile(t, wrongPass, "not the passphrase\n", 0o600)
	bad := good
	bad.Stanza, bad.CipherPassFile = stanza, wrongPass
	badFile := filepath.Join(dir, "wrong-pass.yaml")
	writeFile(t, badFile, bad.yaml(), 0o644)
	before = bucketSnapshot(t, s3.Root)
	refusedUp(t, "wrong passphrase", "cannot be decrypted", "--restore-from", badFile)
	bad.CipherPassFile = ""
	writeFile(t, badFile, bad.yaml(), 0o644)
	refusedUp(t, "no passphrase", "cannot be decrypted", "--restore-from", badFile)
	if after := bucketSnapshot(t, s3.Root); !slices.Equal(before, after) {
		t.Fatalf("refusals changed the bucket: before %v, after %v", before, after)
	}

	pitr := restore(t, srcConfig, "--target-time", target.Format(time.RFC3339Nano))
	if got := rows(t, pitr); !slices.Equal(got, []string{"A"}) {
		t.Fatalf("restore to %s: rows %v, want [A]", target.Format(time.RFC3339Nano), got)
	}
	if pitr.Layout.Backup == nil || pitr.Layout.Backup.Stanza == stanza || pitr.Layout.Backup.Repository != good.Repository {
		t.Fatalf("the restored cluster archives into %+v; want a stanza of its own in %s (the source's is %s)", pitr.Layout.Backup, good.Repository, stanza)
	}
	pitr.Down()
	latest := restore(t, srcConfig)
	if got := rows(t, latest); !slices.Equal(got, []string{"A", "B"}) {
		t.Fatalf("restore to the latest point: rows %v, want [A B]", got)
	}

	// No secret in any file of either cluster — configuration, logs,
	// pgBackRest's logs, the restore's — but the 0600 secrets files.
	for _, d := range []string{c.Dir, latest.Dir, pitr.Dir} {
		noSecrets(t, d, "e2e-access-key", "e2e-secret-0123456789", "correct horse battery staple")
	}
}

// reinitFromEncryptedS3 re-initialises the replica of c (primary leads)
// with `ctl reinit`, while rows are written, from the encrypted S3
// repository: it is restored from the backup — no fallback to
// pg_basebackup, no BASE_BACKUP in the primary's log (replication
// commands logged since before the backup) — replays WAL from the archive
// through holdfast archive-get (which alone can read the credentials and
// the passphrase), streams again and holds the primary's rows.
func reinitFromEncryptedS3(t *testing.T, c *Cluster, primary string) {
	t.Helper()
	replica := otherThan(c, primary)
	pgLog, agentLog, replicaLog := logSize(pgLogFile(c, primary)), logSize(local.LogFile(c.Dir, replica)), logSize(pgLogFile(c, replica))
	c.Exec(primary, "CREATE TABLE load (id bigint PRIMARY KEY)")
	w := startLoad(t, c, primary, 1)
	out, err := c.ctlRun(time.Minute, "reinit", replica)
	if err != nil || !strings.Contains(out, "restored from the newest backup") {
		t.Fatalf("ctl reinit %s: %v\n%s", replica, err, out)
	}
	line := c.waitLogAfter(replica, agentLog, logRestoredFromBackup, reinitWait)
	t.Logf("%s: %s", replica, line)
	c.WaitFor(replica+" streaming again", reinitWait, func(l ctl.ClusterList) bool {
		return Healthy(2)(l) && l.Leader == primary
	})
	time.Sleep(loadAfterStreaming)
	acked := w.stop()
	want := ids(t, c, primary)
	c.WaitCount(replica, "load", int64(len(want)), time.Minute)
	if got := ids(t, c, replica); !slices.Equal(got, want) {
		t.Fatalf("%s holds %d rows, the primary %d; missing %v", replica, len(got), len(want), missingIDs(want, got))
	} else if m := missingIDs(acked, got); len(m) > 0 {
		t.Fatalf("%s lacks acknowledged rows: %v", replica, m)
	}
	c.WaitCount(replica, "pitr", 2, time.Minute)
	if a := readFrom(local.LogFile(c.Dir, replica), agentLog); strings.Contains(a, logFallback) {
		t.Fatalf("%s fell back to pg_basebackup:\n%s", replica, grepLines(a, logFallback))
	}
	served := readFrom(pgLogFile(c, primary), pgLog)
	if strings.Contains(served, "BASE_BACKUP") {
		t.Fatalf("the primary %s served a base backup during the reinit:\n%s", primary, grepLines(served, "BASE_BACKUP"))
	}
	if slot := `START_REPLICATION SLOT "` + cluster.SlotName(replica) + `"`; !strings.Contains(served, slot) {
		t.Fatalf("the primary's log has no %s since the reinit:\n%s", slot, grepLines(served, "replication command"))
	}
	if r := readFrom(pgLogFile(c, replica), replicaLog); !strings.Contains(r, "from archive") {
		t.Fatalf("%s's PostgreSQL log shows no WAL restored from the archive:\n%s", replica, grepLines(r, "LOG"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx, replica)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rc string
	if err := conn.QueryRow(ctx, "SHOW restore_command").Scan(&rc); err != nil || !strings.Contains(rc, " archive-get ") || !strings.Contains(rc, "--secrets ") {
		t.Fatalf("%s's restore_command is %q (%v), want holdfast archive-get with the secrets file", replica, rc, err)
	}
	t.Logf("%s restored from the encrypted S3 backup, replayed the archive and streams: %d rows (%d acknowledged during the reinit), no BASE_BACKUP on %s", replica, len(want), len(acked), primary)
}

// noSecrets fails the test when a file under dir other than a member's
// pgbackrest.secrets holds one of secrets.
func noSecrets(t *testing.T, dir string, secrets ...string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() || d.Name() == "pgbackrest.secrets" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // a file that went away (WAL recycling)
		}
		n++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds a secret", p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("no secret in the %d files under %s", n, dir)
}

// refusedUp runs holdfast up for a new one-member cluster with args and
// requires it to fail with want in its message, creating no cluster.
func refusedUp(t *testing.T, name, want string, args ...string) {
	t.Helper()
	dir := filepath.Join(testutil.Dir(t), "refused")
	start := time.Now()
	out, err := run(t, refusalTimeout, append([]string{"up", "--detach", "--dir", dir, "--members", "1", "--wait", "90s"}, args...)...)
	if err == nil {
		run(t, 3*time.Minute, "down", "--dir", dir)
		t.Fatalf("%s: holdfast up %v accepted:\n%s", name, args, out)
	}
	if !strings.Contains(out, want) || !strings.Contains(out, "nothing was created") {
		t.Errorf("%s: the refusal does not say %q and that nothing was created:\n%s", name, want, out)
	}
	if _, err := os.Stat(local.LayoutFile(dir)); err == nil {
		t.Errorf("%s: refused but created a cluster in %s", name, dir)
	}
	if ms, _ := filepath.Glob(filepath.Join(dir, "*", "pgdata")); len(ms) > 0 {
		t.Errorf("%s: refused but created data directories %v", name, ms)
	}
	t.Logf("%s: refused in %s: %s", name, time.Since(start).Round(time.Second), strings.TrimSpace(out))
}

// bucketSnapshot lists every file in the server's buckets with its size.
func bucketSnapshot(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if !d.IsDir() {
			rel += ":" + strconv.FormatInt(fi.Size(), 10)
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
