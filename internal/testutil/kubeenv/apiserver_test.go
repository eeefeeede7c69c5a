//go:build linux

package kubeenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// requestTimeout bounds one request of the test; frozenTimeout is how long
// a request to a frozen API server waits before it counts as unanswered.
const (
	requestTimeout = 10 * time.Second
	frozenTimeout  = time.Second
)

const configMapPath = "/api/v1/namespaces/default/configmaps"

func TestAPIServer(t *testing.T) {
	start := time.Now()
	env := APIServer(t)
	t.Logf("etcd and kube-apiserver ready in %v at %s", time.Since(start).Round(time.Millisecond), env.Host)

	admin := client(t, env, env.CertData, env.KeyData)
	do(t, admin, http.MethodPost, env.Host+configMapPath,
		`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"kubeenv-test"},"data":{"k":"v"}}`, http.StatusCreated)

	certPEM, keyPEM := env.ClientCert("alice", "holdfast-testers")
	alice := client(t, env, certPEM, keyPEM)
	body := do(t, alice, http.MethodGet, env.Host+configMapPath+"/kubeenv-test", "", http.StatusForbidden)
	if !strings.Contains(body, `"reason":"Forbidden"`) || !strings.Contains(body, `User \"alice\"`) {
		t.Errorf("forbidden answer does not name the user: %s", body)
	}

	t.Run("RBAC grants", func(t *testing.T) {
		do(t, admin, http.MethodPost, env.Host+"/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
			`{"metadata":{"name":"read-configmaps"},"rules":[{"apiGroups":[""],"resources":["configmaps"],"verbs":["get"]}]}`,
			http.StatusCreated)
		do(t, admin, http.MethodPost, env.Host+"/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
			`{"metadata":{"name":"testers-read-configmaps"},"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"Role","name":"read-configmaps"},`+
				`"subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"Group","name":"holdfast-testers"}]}`,
			http.StatusCreated)
		// RBAC's authorizer cache follows the binding within a moment.
		deadline := time.Now().Add(requestTimeout)
		for status(t, alice, env.Host+configMapPath+"/kubeenv-test") != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatal("alice still cannot read the ConfigMap after the RoleBinding")
			}
			time.Sleep(100 * time.Millisecond)
		}
		do(t, alice, http.MethodDelete, env.Host+configMapPath+"/kubeenv-test", "", http.StatusForbidden)
	})

	t.Run("kubeconfig", func(t *testing.T) {
		kubectl := filepath.Join(env.bin, "kubectl")
		if _, err := os.Stat(kubectl); err != nil {
			t.Skipf("no kubectl beside kube-apiserver: %v", err)
		}
		out, err := exec.Command(kubectl, "--kubeconfig="+env.Kubeconfig, "get", "configmap", "kubeenv-test",
			"-n", "default", "-o", "jsonpath={.data.k}").CombinedOutput()
		if err != nil || string(out) != "v" {
			t.Fatalf("kubectl with the admin kubeconfig: %v: %s", err, out)
		}
		out, err = exec.Command(kubectl, "--kubeconfig="+env.KubeconfigFor("bob"), "get", "configmaps", "-n", "default").CombinedOutput()
		if err == nil || !strings.Contains(string(out), `User "bob" cannot list resource "configmaps"`) {
			t.Fatalf("kubectl as bob: want forbidden, got %v: %s", err, out)
		}
	})

	t.Run("stop and start", func(t *testing.T) {
		env.StopAPIServer()
		if _, err := admin.Get(env.Host + "/readyz"); err == nil {
			t.Fatal("the stopped API server answered")
		}
		restart := time.Now()
		env.StartAPIServer()
		t.Logf("kube-apiserver restarted in %v", time.Since(restart).Round(time.Millisecond))
		admin.CloseIdleConnections()
		body := do(t, admin, http.MethodGet, env.Host+configMapPath+"/kubeenv-test", "", http.StatusOK)
		if !strings.Contains(body, `"k":"v"`) {
			t.Errorf("ConfigMap lost across the restart: %s", body)
		}
	})

	t.Run("freeze and thaw", func(t *testing.T) {
		env.Freeze()
		ctx, cancel := context.WithTimeout(context.Background(), frozenTimeout)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, env.Host+"/readyz", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := admin.Do(req); err == nil {
			resp.Body.Close()
			env.Thaw()
			t.Fatalf("the frozen API server answered: %s", resp.Status)
		}
		env.Thaw()
		do(t, admin, http.MethodGet, env.Host+"/readyz", "", http.StatusOK)
	})
}

// client is an HTTPS client with the given client certificate that trusts
// the env's CA.
func client(t *testing.T, env *APIServerEnv, certPEM, keyPEM []byte) *http.Client {
	t.Helper()
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("load client certificate: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(env.CAData) {
		t.Fatal("CAData holds no certificate")
	}
	c := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// do sends a JSON request and wants the status; it returns the body.
func do(t *testing.T, c *http.Client, method, url, body string, want int) string {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s, want %d: %s", method, url, resp.Status, want, data)
	}
	return string(data)
}

// status GETs url and returns the status code.
func status(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
