//go:build linux

package kube_test

import (
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil/release"
	"github.com/holdfast/holdfast/internal/testutil/s3test"
	"github.com/holdfast/holdfast/internal/testutil/testca"
)

// The S3 server of the BackupsS3 step.
const (
	// s3Bucket is the bucket the release's repository is in.
	s3Bucket = "pg-backups"
	// s3Service is the selector-less Service whose EndpointSlice points at
	// the server on the host: pods reach it by a DNS name its certificate
	// holds.
	s3Service = "s3"
	// s3ServicePort is the Service's port (backup.s3.endpoint's).
	s3ServicePort = 9000
	s3Access      = "kube-access-key"
	s3Secret      = "kube-secret-0123456789"
)

// s3Endpoint is the name pods reach the server by.
var s3Endpoint = s3Service + "." + release.NS + ".svc.cluster.local"

// testBackupsS3: the chart's S3 values on a real cluster, with encryption.
// An S3 server (versitygw's POSIX backend, scripts/s3/build.sh) runs on
// this machine with a certificate from a throwaway CA, reached from the
// pods through a Service without selector; the credentials come from a
// Secret, the CA from a ConfigMap, the passphrase from a Secret. After
// helm upgrade to that repository (a rollout), the agents create the
// stanza in the bucket, the schedule left by testBackups has them take a
// full backup there (none exists in this repository), the primary's
// switched segment lands in the bucket, and ctl backups lists the backup
// of the encrypted stanza.
func testBackupsS3(t *testing.T, e *release.Env) {
	bin := s3test.Binary(t)
	link, ok := e.C.Env["HOLDFAST_KUBE_HOST_LINK"]
	if !ok {
		t.Fatal("the cluster's env has no HOLDFAST_KUBE_HOST_LINK")
	}
	hostIP := hostLinkIP(t, link)
	root := filepath.Join(e.C.Dir, "s3")
	if err := os.MkdirAll(filepath.Join(root, "data", s3Bucket), 0o700); err != nil {
		t.Fatal(err)
	}
	ca, err := testca.New("holdfast kube S3 CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(s3Endpoint, nil, []string{s3Endpoint}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(root, "server.pem"), filepath.Join(root, "server-key.pem")
	for f, b := range map[string][]byte{certFile: certPEM, keyFile: keyPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := s3test.Start(t, s3test.Options{Bin: bin, Host: hostIP, ServerName: s3Endpoint,
		CertFile: certFile, KeyFile: keyFile, CAPEM: ca.CertPEM, Root: filepath.Join(root, "data"),
		LogFile: filepath.Join(root, "server.log"), AccessKey: s3Access, SecretKey: s3Secret})

	e.C.Apply(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  ports: [{name: https, port: %[3]d, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: %[1]s-host
  namespace: %[2]s
  labels: {kubernetes.io/service-name: %[1]s}
addressType: IPv4
ports: [{name: https, port: %[4]d, protocol: TCP}]
endpoints: [{addresses: ["%[5]s"]}]
`, s3Service, release.NS, s3ServicePort, port, hostIP))
	e.C.MustKubectl("create", "secret", "generic", "pg-s3", "-n", release.NS,
		"--from-literal=access-key-id="+s3Access, "--from-literal=secret-access-key="+s3Secret)
	e.C.MustKubectl("create", "secret", "generic", "pg-backup-pass", "-n", release.NS,
		"--from-literal=passphrase=kube-test-passphrase-0123456789")
	caFile := filepath.Join(root, "ca.crt")
	if err := os.WriteFile(caFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	e.C.MustKubectl("create", "configmap", "pg-s3-ca", "-n", release.NS, "--from-file=ca.crt="+caFile)

	e.Upgrade("backup.enabled=true", "backup.posix.existingClaim=", "backup.repository=s3://"+s3Bucket+"/k8s",
		"backup.s3.endpoint="+s3Endpoint+":"+strconv.Itoa(s3ServicePort), "backup.s3.region=us-east-1",
		"backup.s3.uriStyle=path", "backup.s3.existingSecret=pg-s3", "backup.s3.caConfigMap=pg-s3-ca",
		"backup.cipherPassSecret=pg-backup-pass", "rollout.supervised=false")
	want := e.UpdateRevision()
	start := time.Now()
	e.WaitRolledOut("every member on the revision with the S3 repository", want, backupRolloutTimeout)
	t.Logf("rollout to the S3 repository took %v", time.Since(start).Round(time.Second))

	// The schedule (full=168h, set by testBackups) finds no backup in
	// this repository: a full one is due at once.
	var first string
	e.Eventually("a scheduled full backup in the bucket", scheduledBackupTimeout, func() error {
		l, err := backups(e)
		if err != nil {
			return err
		}
		if l.Stanza.Cipher != "aes-256-cbc" {
			return fmt.Errorf("stanza %s: cipher %q, status %s", l.Stanza.Name, l.Stanza.Cipher, l.Stanza.Status)
		}
		for _, b := range l.Stanza.Backups {
			if b.Type == "full" && !b.Error {
				checkSet(t, b)
				first = b.Label
				return nil
			}
		}
		return fmt.Errorf("no full backup yet (stanza %s: %s)", l.Stanza.Name, l.Stanza.Status)
	})
	repo := filepath.Join(root, "data", s3Bucket, "k8s")
	if _, err := os.Stat(filepath.Join(repo, "backup", release.Release, first, "backup.manifest")); err != nil {
		t.Errorf("the backup %s is not in the bucket on the host: %v", first, err)
	}
	seg := switchWAL(t, e, e.Primary().Name, "backup-s3-archived")
	waitArchived(t, e, repo, seg)

	// Encrypted: the passphrase is nowhere in the bucket's files in clear;
	// the manifest is not readable text.
	b, err := os.ReadFile(filepath.Join(repo, "backup", release.Release, first, "backup.manifest"))
	if err == nil && strings.Contains(string(b), "[backup]") {
		t.Errorf("the backup manifest in the bucket is in clear: the repository is not encrypted")
	}
	table, err := ctl(e, e.AnyLive(), "backups")
	if err != nil || !strings.Contains(table, first) || !strings.Contains(table, "archive check on the primary "+e.Primary().Name) {
		t.Errorf("ctl backups: %v\n%s", err, table)
	}
	t.Logf("ctl backups (S3, encrypted):\n%s", table)

	restoreFromS3(t, e, seg)
}

// restoredS3 is the release bootstrapped from the bucket.
const restoredS3 = "pgfroms3"

// restoreFromS3: the chart's bootstrap.restore from an S3 source. A
// second release (one member) starts from the encrypted stanza in the
// bucket — the same endpoint, credentials Secret, CA ConfigMap and
// passphrase Secret, under bootstrap.restore — to the end of the archive:
// it becomes a healthy primary holding the row whose segment seg was
// archived. The step removes its release and its claim.
func restoreFromS3(t *testing.T, e *release.Env, seg string) {
	pod := restoredS3 + "-0"
	claim := "data-" + pod
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := e.C.Kubectl("logs", "-n", release.NS, pod, "-c", "holdfast", "--tail", "60")
			t.Logf("logs of %s:\n%s", pod, out)
		}
		if err := e.UninstallOther(restoredS3); err != nil {
			t.Logf("%v", err)
		}
		if out, err := e.C.Kubectl("delete", "pvc", "-n", release.NS, claim, "--ignore-not-found", "--wait=false"); err != nil {
			t.Logf("delete claim %s: %v\n%s", claim, err, out)
		}
	})
	t.Logf("restoring stanza %s from s3://%s/k8s (through segment %s)", release.Release, s3Bucket, seg)
	if err := e.InstallOther(restoredS3, append(testValues,
		"replicas=1", "proxy.enabled=false", "resources.requests.cpu=100m", "resources.requests.memory=256Mi",
		"bootstrap.restore.enabled=true",
		"bootstrap.restore.repository=s3://"+s3Bucket+"/k8s",
		"bootstrap.restore.stanza="+release.Release,
		"bootstrap.restore.s3.endpoint="+s3Endpoint+":"+strconv.Itoa(s3ServicePort),
		"bootstrap.restore.s3.region=us-east-1",
		"bootstrap.restore.s3.uriStyle=path",
		"bootstrap.restore.s3.existingSecret=pg-s3",
		"bootstrap.restore.s3.caConfigMap=pg-s3-ca",
		"bootstrap.restore.cipherPassSecret=pg-backup-pass")...); err != nil {
		t.Fatal(err)
	}
	e.Eventually(pod+" restored from the bucket, ready and labelled primary", restoreTimeout, func() error {
		out, err := e.C.Kubectl("get", "pod", "-n", release.NS, pod, "-o",
			`jsonpath={.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.metadata.labels.holdfast\.io/role}`)
		if err == nil && strings.TrimSpace(out) != "Running True primary" {
			err = fmt.Errorf("phase, ready, role: %q", out)
		}
		return err
	})
	cfg := e.C.MustKubectl("exec", "-n", release.NS, pod, "-c", "holdfast", "--", "cat", "/etc/holdfast/holdfast.yaml")
	if !strings.Contains(cfg, "repository: \"s3://"+s3Bucket+"/k8s\"") {
		t.Errorf("%s's bootstrap.restore does not name the bucket:\n%s", pod, cfg)
	}
	for v, want := range map[string]int{"backup-s3-archived": 1, "up": 1} {
		if n, err := e.Count(pod, v); err != nil || n != want {
			t.Errorf("%s holds %d rows %q (%v), want %d", pod, n, v, err, want)
		}
	}
}

// hostLinkIP is the host's IPv4 address on the cluster's link, which
// pods reach.
func hostLinkIP(t *testing.T, link string) string {
	t.Helper()
	ifc, err := net.InterfaceByName(link)
	if err != nil {
		t.Fatalf("the cluster's host link %s: %v", link, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		t.Fatalf("the addresses of %s: %v", link, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	t.Fatalf("%s has no IPv4 address", link)
	return ""
}
