package chart_test

import (
	"fmt"
	"strings"
	"testing"
)

// TestProxySessionMode: proxy.mode=session gives the members the auth
// role's password (the primary keeps the role) and the proxy the same
// secret as a file, with the shared mock secret and the members' CA; the
// default renders neither.
func TestProxySessionMode(t *testing.T) {
	proxyArgs := func(m manifest) string {
		return fmt.Sprint(list(m.get(t, "Deployment", release+"-proxy"), "spec", "template", "spec", "containers", 0, "args"))
	}
	agentEnv := func(m manifest) map[string]any {
		env := map[string]any{}
		for _, e := range list(agentContainer(t, m), "env") {
			env[str(e, "name")] = e
		}
		return env
	}

	def := render(t, namespace)
	if a := proxyArgs(def); strings.Contains(a, "--mode") || strings.Contains(a, "auth-password") {
		t.Errorf("the default proxy runs in another mode: %s", a)
	}
	if _, ok := agentEnv(def)["HOLDFAST_POSTGRESQL_PROXY_AUTH_PASSWORD"]; ok {
		t.Error("the default render gives the members the proxy's auth password")
	}

	m := render(t, namespace, "proxy.mode=session")
	a := proxyArgs(m)
	for _, w := range []string{"--mode session", "--auth-password-file /etc/holdfast-proxy/auth-password",
		"--mock-secret-file /etc/holdfast-proxy/mock-secret", "--server-sslmode verify-ca", "--server-ca-file /etc/holdfast-proxy/ca.crt"} {
		if !strings.Contains(a, w) {
			t.Errorf("session-mode proxy args %s lack %q", a, w)
		}
	}
	env := agentEnv(m)["HOLDFAST_POSTGRESQL_PROXY_AUTH_PASSWORD"]
	want(t, "members' proxy auth password secret", str(env, "valueFrom", "secretKeyRef", "name"), release+"-auth")
	want(t, "members' proxy auth password key", str(env, "valueFrom", "secretKeyRef", "key"), "proxy-auth-password")

	pod := at(m.get(t, "Deployment", release+"-proxy"), "spec", "template", "spec")
	want(t, "session volume mount", str(pod, "containers", 0, "volumeMounts", 0, "mountPath"), "/etc/holdfast-proxy")
	files := map[string]string{}
	for _, v := range list(pod, "volumes") {
		if str(v, "name") != "session" {
			continue
		}
		want(t, "session volume mode", at(v, "projected", "defaultMode"), any(0o440))
		for _, src := range list(v, "projected", "sources") {
			for _, it := range list(src, "secret", "items") {
				files[str(it, "path")] = str(src, "secret", "name") + " " + str(it, "key")
			}
		}
	}
	for path, src := range map[string]string{
		"auth-password": release + "-auth proxy-auth-password",
		"mock-secret":   release + "-auth proxy-mock-secret",
		"ca.crt":        release + "-tls ca.crt",
	} {
		want(t, "session file "+path, files[path], src)
	}

	// Without TLS on the members, the proxy asks for none and mounts no CA.
	m = render(t, namespace, "proxy.mode=session", "tls.enabled=false")
	if a := proxyArgs(m); strings.Contains(a, "--server-sslmode") || strings.Contains(a, "ca.crt") {
		t.Errorf("session mode without tls.enabled: %s", a)
	}

	wantRefused(t, []string{"proxy.mode=pooled"}, "proxy", "mode")
}
