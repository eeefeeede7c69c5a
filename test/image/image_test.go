// Package image tests the container image that scripts/image/build.sh makes
// (docs/kubernetes.md, "The image"). The test builds the archive from the
// cached base layer (seconds) and runs scripts/image/verify.sh on it: the
// layout's digests and diff_ids, the image config (user 999:999, entrypoint,
// default arguments, PATH), holdfast, initdb, PostgreSQL and pgBackRest
// (`pgbackrest version`, a stanza-create) run as 999:999 in the unpacked
// root file system, and, when containerd is installed, the
// import by `ctr -n k8s.io images import` under the name
// docker.io/library/holdfast:dev.
//
// It skips, saying why, when not root or when the base layer is not cached
// (the first build needs root, Debian's mirror and ~2.5 min:
// run scripts/image/build.sh once).
package image

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestImageArchive(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the image is built and checked on Linux only")
	}
	if testing.Short() {
		t.Skip("-short: builds and unpacks the image (under a minute with the base layer cached)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: verify.sh runs chroot and unshare and unpacks files owned by uid 999")
	}
	for _, tool := range []string{"bash", "tar", "gzip", "sha256sum", "flock", "git", "unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	repo, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	build := filepath.Join(repo, "scripts", "image", "build.sh")
	verify := filepath.Join(repo, "scripts", "image", "verify.sh")

	check := exec.Command("bash", build, "--check-cache")
	var checkErr bytes.Buffer
	check.Stderr = &checkErr
	if err := check.Run(); err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == 3 {
			t.Skipf("the image's base layer is not cached (%s); run scripts/image/build.sh once as root (~2.5 min, needs Debian's mirror) and this test takes under a minute",
				strings.TrimSpace(checkErr.String()))
		}
		t.Fatalf("build.sh --check-cache: %v\n%s", err, checkErr.String())
	}

	out := filepath.Join(t.TempDir(), "holdfast.oci.tar")
	cmd := exec.Command("bash", build, "--out", out, "--tag", "holdfast:dev")
	cmd.Dir = repo
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if last := lines[len(lines)-1]; last != out {
		t.Fatalf("build.sh printed %q as its last line, want the archive path %q", last, out)
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() == 0 {
		t.Fatalf("archive %s: %v", out, err)
	}
	if entries, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(entries) != 0 {
		t.Errorf("temporary files left next to the archive: %v", entries)
	}

	args := []string{verify}
	if _, err := exec.LookPath("containerd"); err == nil {
		if _, err := exec.LookPath("ctr"); err == nil {
			args = append(args, "--containerd")
		}
	}
	if len(args) == 1 {
		t.Log("containerd is not installed: the ctr import check is left out")
	}
	args = append(args, out)
	v := exec.Command("bash", args...)
	var vout bytes.Buffer
	v.Stdout, v.Stderr = &vout, &vout
	if err := v.Run(); err != nil {
		t.Fatalf("verify.sh: %v\n%s", err, vout.String())
	}
	if !strings.Contains(vout.String(), "verify: ok (docker.io/library/holdfast:dev)") {
		t.Fatalf("verify.sh did not report the image as docker.io/library/holdfast:dev:\n%s", vout.String())
	}
	// The agents run pgbackrest from PATH as the image's user: it must be
	// there and work (a stanza created against the image's PostgreSQL).
	for _, want := range []string{"pgbackrest version as 999: pgBackRest 2.", "pgbackrest stanza-create as 999: ok"} {
		if !strings.Contains(vout.String(), want) {
			t.Errorf("verify.sh output lacks %q: pgBackRest is missing from the image or does not run as 999:999:\n%s", want, vout.String())
		}
	}
	t.Logf("%s", vout.String())
}
