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
