package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakePgBackRest puts a pgbackrest stand-in first on PATH: it records its
// arguments and the repository secrets in its environment into
// $dir/called, writes "WAL" into its last argument, and exits with exit.
func fakePgBackRest(t *testing.T, exit string) string {
	t.Helper()
	dir := t.TempDir()
	script := `#!/bin/sh
echo "$@" > "` + dir + `/called"
echo "pass=$PGBACKREST_REPO1_CIPHER_PASS key=$PGBACKREST_REPO1_S3_KEY" >> "` + dir + `/called"
for last in "$@"; do :; done
[ ` + exit + ` = 0 ] || { echo "ERROR: [073]: failed on purpose" >&2; exit ` + exit + `; }
echo WAL > "$last"
`
	if err := os.WriteFile(filepath.Join(dir, "pgbackrest"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return dir
}

// TestArchiveGet: holdfast archive-get runs pgBackRest's archive-get
// (never asynchronously) with the secrets file's content in its
// environment; a secrets file others may read is refused before
// pgBackRest runs; every failure exits 1, the code PostgreSQL reads as
// "not available" (above 125 it would abort recovery).
func TestArchiveGet(t *testing.T) {
	fake := fakePgBackRest(t, "0")
	dir := t.TempDir()
	secrets := filepath.Join(dir, "pgbackrest.secrets")
	if err := os.WriteFile(secrets, []byte("PGBACKREST_REPO1_S3_KEY=AK\nPGBACKREST_REPO1_CIPHER_PASS=pass phrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "RECOVERYXLOG")
	args := []string{"archive-get", "--pgbackrest-config", "/c/pgbackrest.conf", "--stanza", "s1", "--secrets", secrets, "000000010000000000000003", dest}
	var out, errb bytes.Buffer
	if code := Main(args, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	called, _ := os.ReadFile(filepath.Join(fake, "called"))
	for _, want := range []string{"--config=/c/pgbackrest.conf --stanza=s1 archive-get --no-archive-async 000000010000000000000003 " + dest, "pass=pass phrase key=AK"} {
		if !strings.Contains(string(called), want) {
			t.Errorf("pgbackrest was called with %q; want %q", called, want)
		}
	}
	if b, err := os.ReadFile(dest); err != nil || string(b) != "WAL\n" {
		t.Errorf("destination: %q %v", b, err)
	}

	// A secrets file the group may read: refused, pgbackrest not run.
	os.Remove(filepath.Join(fake, "called"))
	if err := os.Chmod(secrets, 0o640); err != nil {
		t.Fatal(err)
	}
	errb.Reset()
	if code := Main(args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "want 0600") {
		t.Errorf("a 0640 secrets file: exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(fake, "called")); err == nil {
		t.Error("pgbackrest ran with a secrets file others may read")
	}

	// pgBackRest's own failure (code 73) exits 1, with its message.
	fakePgBackRest(t, "73")
	errb.Reset()
	noSecrets := []string{"archive-get", "--pgbackrest-config", "/c", "--stanza", "s1", "000000010000000000000004", dest}
	if code := Main(noSecrets, &out, &errb); code != 1 || !strings.Contains(errb.String(), "failed on purpose") {
		t.Errorf("a failed archive-get: exit %d: %s", code, errb.String())
	}
}
