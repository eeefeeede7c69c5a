// Package chart_test checks the Helm chart deploy/helm/holdfast against
// docs/kubernetes.md without a Kubernetes cluster: helm lint --strict, and
// helm template with the defaults, with each store mode and with the values
// that change the shape of what is rendered; bad values must be refused
// with an error naming the value.
//
// helm comes from scripts/kube/helm.sh, which installs it once per machine.
// The test never installs it: without it the test is skipped, or fails when
// HOLDFAST_KUBE_REQUIRED=1.
package chart_test

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/internal/config"
)

const (
	release   = "pg"
	namespace = "db"
)

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// repoRoot is the repository's top directory (this file is test/chart/).
func repoRoot(t *testing.T) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

func chartDir(t *testing.T) string { return filepath.Join(repoRoot(t), "deploy", "helm", "holdfast") }

// helm returns the path of the helm binary scripts/kube/helm.sh installed,
// skipping the test (or failing it with HOLDFAST_KUBE_REQUIRED=1) when there
// is none.
func helm(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		cmd := exec.Command("bash", filepath.Join(repoRoot(t), "scripts", "kube", "helm.sh"), "--no-install")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			helmErr = fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
			return
		}
		lines := strings.Split(strings.TrimSpace(out.String()), "\n")
		helmPath = strings.TrimSpace(lines[len(lines)-1])
		if _, err := os.Stat(helmPath); err != nil {
			helmErr = err
		}
	})
	if helmErr != nil {
		msg := fmt.Sprintf("helm is not installed (%v); install it with `bash scripts/kube/helm.sh` (a few minutes, once per machine)", helmErr)
		if os.Getenv("HOLDFAST_KUBE_REQUIRED") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return helmPath
}

// runHelm runs helm with its own empty configuration and cache, so the
// test neither reads nor writes the user's.
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	bin := helm(t)
	home := t.TempDir()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"HELM_NAMESPACE=",
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// object is one rendered Kubernetes object.
type object map[string]any

func (o object) kind() string { return str(o, "kind") }
func (o object) name() string { return str(o, "metadata", "name") }

// manifest is what helm template rendered, by kind and name.
type manifest struct {
	objects []object
}

func (m manifest) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range m.objects {
		if o.kind() == kind && o.name() == name {
			return o
		}
	}
	var have []string
	for _, o := range m.objects {
		have = append(have, o.kind()+"/"+o.name())
	}
	t.Fatalf("no %s %q rendered; have %v", kind, name, have)
	return nil
}

func (m manifest) all(kind string) []object {
	var r []object
	for _, o := range m.objects {
		if o.kind() == kind {
			r = append(r, o)
		}
	}
	return r
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// render runs helm template with the given --set values and parses the
// documents.
func render(t *testing.T, ns string, sets ...string) manifest {
	t.Helper()
	args := []string{"template", release, chartDir(t), "--namespace", ns}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, errOut, err := runHelm(t, args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	var m manifest
	for _, doc := range docSep.Split(out, -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		// Into a plain map: yaml.v3 would give nested maps the named type.
		var raw map[string]any
		if err := yaml.Unmarshal([]byte(doc), &raw); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		if raw == nil {
			continue // only comments
		}
		m.objects = append(m.objects, object(raw))
	}
	if len(m.objects) == 0 {
		t.Fatal("helm template rendered nothing")
	}
	return m
}

// at walks maps (string keys) and lists (int keys).
func at(v any, path ...any) any {
	if o, ok := v.(object); ok {
		v = map[string]any(o)
	}
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	s, _ := at(v, path...).(string)
	return s
}

func list(v any, path ...any) []any {
	l, _ := at(v, path...).([]any)
	return l
}

func want[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// agentConfig parses holdfast.yaml from the agents' ConfigMap.
func agentConfig(t *testing.T, m manifest) map[string]any {
	t.Helper()
	cm := m.get(t, "ConfigMap", release+"-agent")
	text := str(cm, "data", "holdfast.yaml")
	var c map[string]any
	if err := yaml.Unmarshal([]byte(text), &c); err != nil {
		t.Fatalf("holdfast.yaml does not parse: %v\n%s", err, text)
	}
	return c
}

func agentContainer(t *testing.T, m manifest) object {
	t.Helper()
	c, _ := at(m.get(t, "StatefulSet", release), "spec", "template", "spec", "containers", 0).(map[string]any)
	if c == nil {
		t.Fatal("the StatefulSet has no container")
	}
	return c
}

func containerPorts(c object) []int {
	var ports []int
	for _, p := range list(c, "ports") {
		if n, ok := at(p, "containerPort").(int); ok {
			ports = append(ports, n)
		}
	}
	return ports
}

func TestLint(t *testing.T) {
	for _, args := range [][]string{
		{"lint", "--strict"},
		{"lint", "--strict", "--set", "store.mode=embedded"},
		{"lint", "--strict", "--set", "store.mode=etcd", "--set", "store.etcd.endpoints={http://etcd-0.etcd:2379}"},
	} {
		out, errOut, err := runHelm(t, append(args[:1:1], append([]string{chartDir(t)}, args[1:]...)...)...)
		if err != nil {
			t.Errorf("helm %v: %v\n%s%s", args, err, out, errOut)
		}
	}
}

func TestDefaults(t *testing.T) {
	m := render(t, namespace)

	sts := m.get(t, "StatefulSet", release)
	spec := sts["spec"]
	want(t, "replicas", at(spec, "replicas"), any(3))
	want(t, "podManagementPolicy", str(spec, "podManagementPolicy"), "Parallel")
	want(t, "updateStrategy.type", str(spec, "updateStrategy", "type"), "OnDelete")
	want(t, "serviceName", str(spec, "serviceName"), release+"-headless")
	want(t, "persistentVolumeClaimRetentionPolicy.whenDeleted", str(spec, "persistentVolumeClaimRetentionPolicy", "whenDeleted"), "Retain")
	want(t, "persistentVolumeClaimRetentionPolicy.whenScaled", str(spec, "persistentVolumeClaimRetentionPolicy", "whenScaled"), "Retain")

	pod := at(spec, "template", "spec")
	labels := at(spec, "template", "metadata", "labels")
	want(t, "pod label app.kubernetes.io/name", str(labels, "app.kubernetes.io/name"), "holdfast")
	want(t, "pod label app.kubernetes.io/instance", str(labels, "app.kubernetes.io/instance"), release)
	want(t, "pod label holdfast.io/cluster", str(labels, "holdfast.io/cluster"), release)
	want(t, "terminationGracePeriodSeconds", at(pod, "terminationGracePeriodSeconds"), any(60))
	want(t, "enableServiceLinks", at(pod, "enableServiceLinks"), any(false))
	want(t, "pod runAsNonRoot", at(pod, "securityContext", "runAsNonRoot"), any(true))
	want(t, "pod runAsUser", at(pod, "securityContext", "runAsUser"), any(999))
	want(t, "pod runAsGroup", at(pod, "securityContext", "runAsGroup"), any(999))
	want(t, "pod fsGroup", at(pod, "securityContext", "fsGroup"), any(999))
	want(t, "pod seccompProfile", str(pod, "securityContext", "seccompProfile", "type"), "RuntimeDefault")

	// Anti-affinity: preferred by default, never required.
	if at(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") == nil {
		t.Error("no preferred pod anti-affinity by default")
	}
	if at(pod, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution") != nil {
		t.Error("required pod anti-affinity by default")
	}
	want(t, "anti-affinity topologyKey", str(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution", 0, "podAffinityTerm", "topologyKey"), "kubernetes.io/hostname")
	if at(pod, "topologySpreadConstraints") != nil {
		t.Error("topologySpreadConstraints rendered by default")
	}

	c := agentContainer(t, m)
	want(t, "image", str(c, "image"), "holdfast:dev")
	cmd := append(list(c, "command"), list(c, "args")...)
	want(t, "command", fmt.Sprint(cmd), "[holdfast agent --config /etc/holdfast/holdfast.yaml]")
	want(t, "allowPrivilegeEscalation", at(c, "securityContext", "allowPrivilegeEscalation"), any(false))
	want(t, "capabilities.drop", fmt.Sprint(at(c, "securityContext", "capabilities", "drop")), "[ALL]")
	want(t, "ports", fmt.Sprint(containerPorts(c)), "[5432 8008]")
	want(t, "liveness path", str(c, "livenessProbe", "httpGet", "path"), "/liveness")
	want(t, "readiness path", str(c, "readinessProbe", "httpGet", "path"), "/readiness")
	want(t, "startup path", str(c, "startupProbe", "httpGet", "path"), "/liveness")
	want(t, "probe scheme (TLS on)", str(c, "livenessProbe", "httpGet", "scheme"), "HTTPS")
	if n, _ := at(c, "startupProbe", "failureThreshold").(int); n < 100 {
		t.Errorf("startupProbe.failureThreshold = %d: not generous", n)
	}

	env := map[string]any{}
	for _, e := range list(c, "env") {
		env[str(e, "name")] = e
	}
	want(t, "HOLDFAST_KUBERNETES_POD_NAME", str(env["HOLDFAST_KUBERNETES_POD_NAME"], "valueFrom", "fieldRef", "fieldPath"), "metadata.name")
	want(t, "HOLDFAST_KUBERNETES_NAMESPACE", str(env["HOLDFAST_KUBERNETES_NAMESPACE"], "valueFrom", "fieldRef", "fieldPath"), "metadata.namespace")
	for _, name := range []string{"HOLDFAST_POSTGRESQL_SUPERUSER_PASSWORD", "HOLDFAST_POSTGRESQL_REPLICATION_PASSWORD", "HOLDFAST_API_AUTH_TOKEN"} {
		want(t, name+" secret", str(env[name], "valueFrom", "secretKeyRef", "name"), release+"-auth")
	}
	auth := m.get(t, "Secret", release+"-auth")
	for _, k := range []string{"superuser-password", "replication-password", "api-token", "proxy-auth-password", "proxy-mock-secret"} {
		b, err := base64.StdEncoding.DecodeString(str(auth, "data", k))
		if err != nil || len(b) != 32 {
			t.Errorf("auth Secret key %s: %d bytes (%v), want 32 random characters", k, len(b), err)
		}
	}

	// Mounts: data at /var/lib/holdfast, the config file and certificate
	// under /etc/holdfast, the key readable by group 999 only.
	mounts := map[string]string{}
	for _, vm := range list(c, "volumeMounts") {
		mounts[str(vm, "mountPath")] = str(vm, "name")
	}
	want(t, "mount /var/lib/holdfast", mounts["/var/lib/holdfast"], "data")
	want(t, "mount /etc/holdfast", mounts["/etc/holdfast"], "config")
	var keyMode any
	var sawConfig bool
	for _, v := range list(pod, "volumes") {
		for _, src := range list(v, "projected", "sources") {
			if str(src, "configMap", "name") == release+"-agent" {
				sawConfig = true
			}
			for _, it := range list(src, "secret", "items") {
				if str(it, "path") == "tls/tls.key" {
					keyMode = at(it, "mode")
					want(t, "TLS secret", str(src, "secret", "name"), release+"-tls")
				}
			}
		}
	}
	if !sawConfig {
		t.Error("the config ConfigMap is not mounted")
	}
	want(t, "tls.key mode", keyMode, any(0o640))

	tmpl := list(spec, "volumeClaimTemplates")
	if len(tmpl) != 1 || str(tmpl[0], "metadata", "name") != "data" {
		t.Errorf("volumeClaimTemplates = %v, want only data", tmpl)
	}
	want(t, "data size", str(tmpl[0], "spec", "resources", "requests", "storage"), "10Gi")

	// PodDisruptionBudgets: the primary (minAvailable 1) and the cluster
	// (maxUnavailable 1).
	primary := m.get(t, "PodDisruptionBudget", release+"-primary")
	want(t, "primary PDB role", str(primary, "spec", "selector", "matchLabels", "holdfast.io/role"), "primary")
	want(t, "primary PDB minAvailable", at(primary, "spec", "minAvailable"), any(1))
	clusterPDB := m.get(t, "PodDisruptionBudget", release)
	// At most one member down: of the two that are not primary, one must
	// stay (minAvailable over them: with maxUnavailable the disruption
	// controller would count the primary in and never allow an eviction).
	want(t, "cluster PDB minAvailable", at(clusterPDB, "spec", "minAvailable"), any(1))
	if at(clusterPDB, "spec", "selector", "matchLabels", "holdfast.io/role") != nil {
		t.Error("the cluster PDB selects a role")
	}
	// The two select disjoint pods: the eviction API refuses a pod two
	// budgets select, which would make every drain fail.
	if exprs, _ := at(clusterPDB, "spec", "selector", "matchExpressions").([]any); len(exprs) != 1 ||
		str(exprs[0], "key") != "holdfast.io/role" || str(exprs[0], "operator") != "NotIn" {
		t.Errorf("the cluster PDB does not leave out the primary: %v", at(clusterPDB, "spec", "selector"))
	}

	// Services.
	headless := m.get(t, "Service", release+"-headless")
	want(t, "headless clusterIP", str(headless, "spec", "clusterIP"), "None")
	want(t, "headless publishNotReadyAddresses", at(headless, "spec", "publishNotReadyAddresses"), any(true))
	var hp []int
	for _, p := range list(headless, "spec", "ports") {
		hp = append(hp, at(p, "port").(int))
	}
	want(t, "headless ports", fmt.Sprint(hp), "[5432 8008 2379 2380]")
	for svc, role := range map[string]string{"-rw": "primary", "-ro": "replica", "-r": ""} {
		s := m.get(t, "Service", release+svc)
		want(t, svc+" role selector", str(s, "spec", "selector", "holdfast.io/role"), role)
		want(t, svc+" component selector", str(s, "spec", "selector", "app.kubernetes.io/component"), "database")
		want(t, svc+" port", at(s, "spec", "ports", 0, "port"), any(5432))
	}
	proxySvc := m.get(t, "Service", release+"-proxy")
	want(t, "proxy service rw port", at(proxySvc, "spec", "ports", 0, "port"), any(5432))
	want(t, "proxy service ro port", at(proxySvc, "spec", "ports", 1, "port"), any(5433))
	want(t, "proxy service selector", str(proxySvc, "spec", "selector", "app.kubernetes.io/component"), "proxy")

	// The proxy.
	proxy := m.get(t, "Deployment", release+"-proxy")
	want(t, "proxy replicas", at(proxy, "spec", "replicas"), any(2))
	ppod := at(proxy, "spec", "template", "spec")
	want(t, "proxy serviceAccount", str(ppod, "serviceAccountName"), release+"-proxy")
	if at(ppod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") == nil {
		t.Error("the proxy has no preferred pod anti-affinity")
	}
	pargs := fmt.Sprint(append(list(ppod, "containers", 0, "command"), list(ppod, "containers", 0, "args")...))
	for _, w := range []string{"holdfast proxy --kube --namespace $(POD_NAMESPACE) --cluster pg", "--rw-listen :5432", "--ro-listen :5433", "--metrics-listen :8009"} {
		if !strings.Contains(pargs, w) {
			t.Errorf("proxy command %s lacks %q", pargs, w)
		}
	}
	want(t, "proxy liveness path", str(ppod, "containers", 0, "livenessProbe", "httpGet", "path"), "/metrics")

	checkRBAC(t, m, namespace, 3)
	checkSANs(t, m, namespace)

	// The agent's configuration, as docs/kubernetes.md says.
	cfg := agentConfig(t, m)
	want(t, "cluster", str(cfg, "cluster"), release)
	want(t, "data_dir", str(cfg, "data_dir"), "/var/lib/holdfast/data")
	want(t, "store.mode", str(cfg, "store", "mode"), "kubernetes")
	want(t, "kubernetes.headless_service", str(cfg, "kubernetes", "headless_service"), release+"-headless")
	want(t, "kubernetes.cluster_domain", str(cfg, "kubernetes", "cluster_domain"), "cluster.local")
	want(t, "kubernetes.role_label", str(cfg, "kubernetes", "role_label"), "holdfast.io/role")
	want(t, "kubernetes.labels instance", str(cfg, "kubernetes", "labels", "app.kubernetes.io/instance"), release)
	if at(cfg, "kubernetes", "pod_name") != nil || at(cfg, "kubernetes", "namespace") != nil {
		t.Error("kubernetes.pod_name/namespace are in the file; they come from the downward API")
	}
	want(t, "postgresql.listen", str(cfg, "postgresql", "listen"), "0.0.0.0:5432")
	want(t, "api.listen", str(cfg, "api", "listen"), "0.0.0.0:8008")
	want(t, "synchronous_mode", str(cfg, "synchronous_mode"), "off")
	want(t, "synchronous_node_count", at(cfg, "synchronous_node_count"), any(1))
	for _, k := range []string{"ttl", "loop_interval", "maximum_lag_on_failover"} {
		if str(cfg, k) == "" {
			t.Errorf("%s is not set", k)
		}
	}
	want(t, "api.tls.cert_file", str(cfg, "api", "tls", "cert_file"), "/etc/holdfast/tls/tls.crt")
	want(t, "api.tls.key_file", str(cfg, "api", "tls", "key_file"), "/etc/holdfast/tls/tls.key")
	params := at(cfg, "postgresql", "parameters")
	want(t, "ssl", str(params, "ssl"), "on")
	want(t, "ssl_cert_file", str(params, "ssl_cert_file"), "/etc/holdfast/tls/tls.crt")
	want(t, "ssl_key_file", str(params, "ssl_key_file"), "/etc/holdfast/tls/tls.key")
	want(t, "ssl_ca_file", str(params, "ssl_ca_file"), "/etc/holdfast/tls/ca.crt")
	if at(cfg, "store", "embedded") != nil || at(cfg, "store", "endpoints") != nil {
		t.Error("store.embedded or store.endpoints rendered with store.mode kubernetes")
	}
	// No secret in the ConfigMap.
	for _, k := range []string{"password", "auth_token"} {
		if strings.Contains(str(m.get(t, "ConfigMap", release+"-agent"), "data", "holdfast.yaml"), k+":") {
			t.Errorf("the ConfigMap carries %s", k)
		}
	}
}

// checkRBAC: the agents' Role as docs/kubernetes.md lists it, pods patched
// only by name, and a node-reading ClusterRole named per namespace and
// release.
func checkRBAC(t *testing.T, m manifest, ns string, replicas int) {
	t.Helper()
	role := m.get(t, "Role", release)
	var patchNames []string
	verbs := map[string][]string{}
	for _, r := range list(role, "rules") {
		var vs []string
		for _, v := range list(r, "verbs") {
			vs = append(vs, v.(string))
		}
		for _, res := range list(r, "resources") {
			key := str(r, "apiGroups", 0) + "/" + res.(string)
			if names := list(r, "resourceNames"); names != nil && key == "apps/statefulsets" {
				// ctl rollout --approve annotates the StatefulSet.
				if fmt.Sprint(vs) != "[patch]" || fmt.Sprint(names) != "["+release+"]" {
					t.Errorf("statefulsets rule %v on %v, want patch on %s only", vs, names, release)
				}
				continue
			}
			if names := list(r, "resourceNames"); names != nil {
				if key != "/pods" || fmt.Sprint(vs) != "[patch delete]" {
					t.Errorf("resourceNames on %s %v", key, vs)
				}
				for _, n := range names {
					patchNames = append(patchNames, n.(string))
				}
				continue
			}
			verbs[key] = append(verbs[key], vs...)
		}
	}
	var wantNames []string
	for i := range replicas {
		wantNames = append(wantNames, fmt.Sprintf("%s-%d", release, i))
	}
	want(t, "pods patch resourceNames", fmt.Sprint(patchNames), fmt.Sprint(wantNames))
	all := "[get list watch create update patch delete]"
	want(t, "leases verbs", fmt.Sprint(verbs["coordination.k8s.io/leases"]), all)
	want(t, "configmaps verbs", fmt.Sprint(verbs["/configmaps"]), all)
	want(t, "pods verbs (unrestricted)", fmt.Sprint(verbs["/pods"]), "[get list watch]")
	want(t, "events verbs", fmt.Sprint(verbs["/events"]), "[get list watch create patch]")
	want(t, "statefulsets verbs", fmt.Sprint(verbs["apps/statefulsets"]), "[get list watch]")
	if len(verbs) != 5 {
		t.Errorf("the agents' Role grants %v: more than docs/kubernetes.md lists", verbs)
	}
	rb := m.get(t, "RoleBinding", release)
	want(t, "RoleBinding subject", str(rb, "subjects", 0, "name"), release)

	crs := m.all("ClusterRole")
	if len(crs) != 1 {
		t.Fatalf("%d ClusterRoles, want 1", len(crs))
	}
	cr := crs[0]
	if !strings.Contains(cr.name(), ns) || !strings.Contains(cr.name(), release) {
		t.Errorf("ClusterRole %q is not named with the namespace and the release", cr.name())
	}
	want(t, "ClusterRole rule", fmt.Sprint(at(cr, "rules", 0, "resources"), at(cr, "rules", 0, "verbs")), "[nodes] [get list watch]")
	crb := m.get(t, "ClusterRoleBinding", cr.name())
	want(t, "ClusterRoleBinding subject namespace", str(crb, "subjects", 0, "namespace"), ns)

	proxyRole := m.get(t, "Role", release+"-proxy")
	for _, r := range list(proxyRole, "rules") {
		if v := fmt.Sprint(at(r, "verbs")); v != "[get list watch]" {
			t.Errorf("the proxy's Role grants %v on %v", v, at(r, "resources"))
		}
	}
}

// checkSANs: the generated certificate names every Service and pod DNS name
// and no IP, and the CA in the Secret signed it.
func checkSANs(t *testing.T, m manifest, ns string) {
	t.Helper()
	sec := m.get(t, "Secret", release+"-tls")
	cert := parseCert(t, str(sec, "data", "tls.crt"))
	ca := parseCert(t, str(sec, "data", "ca.crt"))
	if len(cert.IPAddresses) != 0 {
		t.Errorf("the certificate has IP SANs %v", cert.IPAddresses)
	}
	var names []string
	for _, svc := range []string{"headless", "rw", "ro", "r", "proxy"} {
		s := release + "-" + svc
		names = append(names, s, s+"."+ns, s+"."+ns+".svc", s+"."+ns+".svc.cluster.local")
	}
	for i := range 3 {
		p := fmt.Sprintf("%s-%d.%s-headless.%s.svc", release, i, release, ns)
		names = append(names, p, p+".cluster.local")
	}
	names = append(names, "*."+release+"-headless."+ns+".svc", "*."+release+"-headless."+ns+".svc.cluster.local")
	for _, n := range names {
		if !slices.Contains(cert.DNSNames, n) {
			t.Errorf("the certificate lacks SAN %s (has %v)", n, cert.DNSNames)
		}
	}
	for _, n := range cert.DNSNames {
		if net.ParseIP(n) != nil {
			t.Errorf("the certificate has an IP %s as a DNS SAN", n)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: release + "-3." + release + "-headless." + ns + ".svc.cluster.local"}); err != nil {
		t.Errorf("the certificate does not verify against the CA for a scaled-up pod's name: %v", err)
	}
}

func parseCert(t *testing.T, b64 string) *x509.Certificate {
	t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("certificate is not base64: %v", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		t.Fatalf("certificate is not PEM: %q", raw)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStoreModes(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "store.mode=embedded", "replicas=5")
		cfg := agentConfig(t, m)
		want(t, "store.mode", str(cfg, "store", "mode"), "embedded")
		want(t, "listen_peer", str(cfg, "store", "embedded", "listen_peer"), "0.0.0.0:2380")
		want(t, "listen_client", str(cfg, "store", "embedded", "listen_client"), "0.0.0.0:2379")
		peers, _ := at(cfg, "store", "embedded", "peers").(map[string]any)
		clients, _ := at(cfg, "store", "embedded", "clients").(map[string]any)
		if len(peers) != 5 || len(clients) != 5 {
			t.Fatalf("peers %v clients %v: want 5 each", peers, clients)
		}
		for i := range 5 {
			name := fmt.Sprintf("pg-%d", i)
			host := fmt.Sprintf("pg-%d.pg-headless.db.svc.cluster.local", i)
			want(t, "peer "+name, peers[name], any("http://"+host+":2380"))
			want(t, "client "+name, clients[name], any("http://"+host+":2379"))
		}
		// Every member advertises its own DNS name.
		c := agentContainer(t, m)
		env := map[string]string{}
		for _, e := range list(c, "env") {
			env[str(e, "name")] = str(e, "value")
		}
		want(t, "advertise_peer", env["HOLDFAST_STORE_EMBEDDED_ADVERTISE_PEER"], "$(HOLDFAST_KUBERNETES_POD_NAME).pg-headless.db.svc.cluster.local:2380")
		want(t, "ports", fmt.Sprint(containerPorts(c)), "[5432 8008 2379 2380]")
		// The kubernetes section stays: the agents label their pods.
		want(t, "kubernetes.headless_service", str(cfg, "kubernetes", "headless_service"), "pg-headless")
		pargs := fmt.Sprint(list(m.get(t, "Deployment", "pg-proxy"), "spec", "template", "spec", "containers", 0, "args"))
		if !strings.Contains(pargs, "--endpoints http://pg-0.pg-headless.db.svc.cluster.local:2379,") || strings.Contains(pargs, "--kube") {
			t.Errorf("proxy args %s", pargs)
		}
		// No store objects to manage: no leases or configmaps for anyone.
		role := m.get(t, "Role", release)
		for _, r := range list(role, "rules") {
			if res := fmt.Sprint(at(r, "resources")); res == "[leases]" || res == "[configmaps]" {
				t.Errorf("the agents' Role grants %s with store.mode embedded", res)
			}
		}
		for _, o := range m.all("Role") {
			if o.name() == release+"-proxy" {
				t.Error("a proxy Role is rendered with store.mode embedded")
			}
		}
		checkRoleNames(t, m, 5)
	})
	t.Run("etcd", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "store.mode=etcd", "store.etcd.endpoints={http://etcd-0.etcd:2379,http://etcd-1.etcd:2379}")
		cfg := agentConfig(t, m)
		want(t, "store.mode", str(cfg, "store", "mode"), "etcd")
		want(t, "store.endpoints", fmt.Sprint(at(cfg, "store", "endpoints")), "[http://etcd-0.etcd:2379 http://etcd-1.etcd:2379]")
		if at(cfg, "store", "embedded") != nil {
			t.Error("store.embedded rendered with store.mode etcd")
		}
		want(t, "ports", fmt.Sprint(containerPorts(agentContainer(t, m))), "[5432 8008]")
		pargs := fmt.Sprint(list(m.get(t, "Deployment", "pg-proxy"), "spec", "template", "spec", "containers", 0, "args"))
		if !strings.Contains(pargs, "--endpoints http://etcd-0.etcd:2379,http://etcd-1.etcd:2379") {
			t.Errorf("proxy args %s", pargs)
		}
	})
	t.Run("kubernetes", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "store.mode=kubernetes", "replicas=2", "clusterName=orders", "clusterDomain=example.internal")
		cfg := agentConfig(t, m)
		want(t, "cluster", str(cfg, "cluster"), "orders")
		want(t, "kubernetes.cluster_domain", str(cfg, "kubernetes", "cluster_domain"), "example.internal")
		labels := at(m.get(t, "StatefulSet", release), "spec", "template", "metadata", "labels")
		want(t, "holdfast.io/cluster", str(labels, "holdfast.io/cluster"), "orders")
		checkRBAC(t, m, namespace, 2)
	})
}

func checkRoleNames(t *testing.T, m manifest, replicas int) {
	t.Helper()
	var got []string
	for _, r := range list(m.get(t, "Role", release), "rules") {
		if fmt.Sprint(at(r, "resources")) != "[pods]" {
			continue
		}
		for _, n := range list(r, "resourceNames") {
			got = append(got, n.(string))
		}
	}
	if len(got) != replicas {
		t.Errorf("pods patch resourceNames %v, want %d", got, replicas)
	}
}

func TestValues(t *testing.T) {
	t.Run("antiAffinity=hard", func(t *testing.T) {
		t.Parallel()
		pod := at(render(t, namespace, "antiAffinity=hard").get(t, "StatefulSet", release), "spec", "template", "spec")
		if at(pod, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution") == nil {
			t.Error("no required anti-affinity with antiAffinity=hard")
		}
		if at(pod, "affinity", "podAntiAffinity", "preferredDuringSchedulingIgnoredDuringExecution") != nil {
			t.Error("preferred anti-affinity with antiAffinity=hard")
		}
		want(t, "topologyKey", str(pod, "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution", 0, "topologyKey"), "kubernetes.io/hostname")
	})
	t.Run("antiAffinity=none", func(t *testing.T) {
		t.Parallel()
		pod := at(render(t, namespace, "antiAffinity=none").get(t, "StatefulSet", release), "spec", "template", "spec")
		if at(pod, "affinity", "podAntiAffinity") != nil {
			t.Error("anti-affinity with antiAffinity=none")
		}
	})
	t.Run("topologySpread", func(t *testing.T) {
		t.Parallel()
		pod := at(render(t, namespace, "topologySpread.enabled=true").get(t, "StatefulSet", release), "spec", "template", "spec")
		want(t, "topologyKey", str(pod, "topologySpreadConstraints", 0, "topologyKey"), "topology.kubernetes.io/zone")
	})
	t.Run("wal", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "wal.enabled=true", "wal.size=20Gi")
		tmpl := list(m.get(t, "StatefulSet", release), "spec", "volumeClaimTemplates")
		if len(tmpl) != 2 || str(tmpl[1], "metadata", "name") != "wal" {
			t.Fatalf("volumeClaimTemplates %v: want data and wal", tmpl)
		}
		want(t, "wal size", str(tmpl[1], "spec", "resources", "requests", "storage"), "20Gi")
		mounted := false
		for _, vm := range list(agentContainer(t, m), "volumeMounts") {
			if str(vm, "name") == "wal" && str(vm, "mountPath") == "/var/lib/holdfast/wal" {
				mounted = true
			}
		}
		if !mounted {
			t.Error("the wal volume is not mounted at /var/lib/holdfast/wal")
		}
		args := fmt.Sprint(at(agentConfig(t, m), "postgresql", "initdb_args"))
		if !strings.Contains(args, "--waldir=/var/lib/holdfast/wal/") {
			t.Errorf("initdb_args %s: no --waldir on the wal volume", args)
		}
	})
	t.Run("tls=off", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "tls.enabled=false")
		for _, o := range m.all("Secret") {
			if o.name() == release+"-tls" {
				t.Error("a TLS Secret is rendered with tls.enabled=false")
			}
		}
		cfg := agentConfig(t, m)
		if at(cfg, "api", "tls") != nil || at(cfg, "postgresql", "parameters", "ssl") != nil {
			t.Error("TLS settings in the config with tls.enabled=false")
		}
		want(t, "probe scheme", str(agentContainer(t, m), "livenessProbe", "httpGet", "scheme"), "HTTP")
	})
	t.Run("existing secrets", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "tls.existingSecret=my-tls", "auth.existingSecret=my-auth")
		for _, o := range m.all("Secret") {
			t.Errorf("Secret %s rendered with existing secrets", o.name())
		}
		c := agentContainer(t, m)
		for _, e := range list(c, "env") {
			if ref := str(e, "valueFrom", "secretKeyRef", "name"); ref != "" && ref != "my-auth" {
				t.Errorf("%s from Secret %s", str(e, "name"), ref)
			}
		}
		if !strings.Contains(fmt.Sprint(at(m.get(t, "StatefulSet", release), "spec", "template", "spec", "volumes")), "my-tls") {
			t.Error("the existing TLS Secret is not mounted")
		}
	})
	t.Run("proxy=off", func(t *testing.T) {
		t.Parallel()
		m := render(t, namespace, "proxy.enabled=false")
		for _, o := range m.objects {
			if strings.HasSuffix(o.name(), "-proxy") {
				t.Errorf("%s %s rendered with proxy.enabled=false", o.kind(), o.name())
			}
		}
	})
	t.Run("two releases", func(t *testing.T) {
		t.Parallel()
		a := render(t, "team-a").all("ClusterRole")
		b := render(t, "team-b").all("ClusterRole")
		if len(a) != 1 || len(b) != 1 || a[0].name() == b[0].name() {
			t.Errorf("the ClusterRoles of one release name in two namespaces clash: %v %v", a, b)
		}
	})
	t.Run("proxy shutdown delay", func(t *testing.T) {
		t.Parallel()
		c := func(sets ...string) any {
			return at(render(t, namespace, sets...).get(t, "Deployment", release+"-proxy"), "spec", "template", "spec", "containers", 0)
		}
		want(t, "preStop sleep", at(c(), "lifecycle", "preStop", "sleep", "seconds"), any(5))
		if at(c("proxy.shutdownDelaySeconds=0"), "lifecycle") != nil {
			t.Error("a preStop hook with proxy.shutdownDelaySeconds=0")
		}
	})
	t.Run("synchronous quorum", func(t *testing.T) {
		t.Parallel()
		cfg := agentConfig(t, render(t, namespace, "synchronousMode=quorum", "synchronousNodeCount=2", "replicas=3"))
		want(t, "synchronous_mode", str(cfg, "synchronous_mode"), "quorum")
		want(t, "synchronous_node_count", at(cfg, "synchronous_node_count"), any(2))
	})
}

// TestAgentLoadsConfig: the agent's own loader accepts what the chart
// renders, in each store mode, with the environment the pod gives it (the
// agent refuses unknown HOLDFAST_* variables), and a member comes out as
// docs/kubernetes.md says: named after its pod, reached at its DNS name.
func TestAgentLoadsConfig(t *testing.T) {
	for _, sets := range [][]string{
		nil,
		{"store.mode=embedded"},
		{"store.mode=etcd", "store.etcd.endpoints={http://etcd-0.etcd:2379}"},
		{"tls.enabled=false", "synchronousMode=strict", "wal.enabled=true", "tags.nofailover=true", "postgresql.parameters.max_connections=200",
			"failoverPriority.1=3", "failoverPriority.2=0", "preferPrimaryZone=false"},
	} {
		t.Run(strings.Join(sets, ","), func(t *testing.T) {
			t.Parallel()
			c := loadRendered(t, render(t, namespace, sets...))
			host := release + "-1." + release + "-headless." + namespace + ".svc.cluster.local"
			want(t, "name", c.Name, release+"-1")
			want(t, "cluster", c.Cluster, release)
			want(t, "postgresql.connect_address", c.PostgreSQL.ConnectAddress, host+":5432")
			want(t, "api.connect_address", c.API.ConnectAddress, host+":8008")
			want(t, "superuser password", c.PostgreSQL.Superuser.Password, "from-secret-superuser-password")
			want(t, "api.auth_token", c.API.AuthToken, "from-secret-api-token")
			if c.Store.Mode == config.StoreEmbedded {
				want(t, "store.embedded.advertise_peer", c.Store.Embedded.AdvertisePeer, host+":2380")
			}
			if slices.Contains(sets, "failoverPriority.1=3") {
				want(t, "failover_priority", c.MemberTags()["failover_priority"], "3")
				want(t, "kubernetes.zone_from_node", c.Kubernetes.ZoneFromNode, false)
			} else {
				want(t, "failover_priority", c.MemberTags()["failover_priority"], "")
				want(t, "kubernetes.zone_from_node", c.Kubernetes.ZoneFromNode, true)
			}
		})
	}
}

// loadRendered loads the rendered holdfast.yaml with the agent's own loader
// and the environment pod pg-1 gets (Secret references become
// "from-secret-<key>"), failing the test if the agent refuses it.
func loadRendered(t *testing.T, m manifest) config.Config {
	t.Helper()
	file := filepath.Join(t.TempDir(), "holdfast.yaml")
	if err := os.WriteFile(file, []byte(str(m.get(t, "ConfigMap", release+"-agent"), "data", "holdfast.yaml")), 0o600); err != nil {
		t.Fatal(err)
	}
	// The pod pg-1's environment, as the kubelet builds it.
	vars := map[string]string{}
	var env []string
	for _, e := range list(agentContainer(t, m), "env") {
		name, value := str(e, "name"), str(e, "value")
		switch {
		case str(e, "valueFrom", "fieldRef", "fieldPath") == "metadata.name":
			value = release + "-1"
		case str(e, "valueFrom", "fieldRef", "fieldPath") == "metadata.namespace":
			value = namespace
		case at(e, "valueFrom", "secretKeyRef") != nil:
			value = "from-secret-" + str(e, "valueFrom", "secretKeyRef", "key")
		}
		for k, v := range vars {
			value = strings.ReplaceAll(value, "$("+k+")", v)
		}
		vars[name] = value
		env = append(env, name+"="+value)
	}
	c, err := config.Load(config.LoadOptions{File: file, Env: env, Hostname: func() (string, error) { return "not-the-pod", nil }})
	if err != nil {
		t.Fatalf("the agent refuses the rendered configuration: %v", err)
	}
	return c
}

// TestBadValues: every bad value is refused, by the schema or by the
// chart's own checks, with an error that names it.
func TestBadValues(t *testing.T) {
	for _, tc := range []struct {
		sets  []string
		names []string // each must appear in stderr
	}{
		{[]string{"replicas=0"}, []string{"replicas"}},
		{[]string{"replicas=-3"}, []string{"replicas"}},
		{[]string{"persistence.size=-1Gi"}, []string{"persistence", "size"}},
		{[]string{"wal.enabled=true", "wal.size=lots"}, []string{"wal", "size"}},
		{[]string{"synchronousMode=sometimes"}, []string{"synchronousMode"}},
		{[]string{"store.mode=zookeeper"}, []string{"store", "mode"}},
		{[]string{"antiAffinity=always"}, []string{"antiAffinity"}},
		{[]string{"ttl=soon"}, []string{"ttl"}},
		{[]string{"loopInterval=-1s"}, []string{"loopInterval"}},
		{[]string{"synchronousMode=on", "synchronousNodeCount=3"}, []string{"synchronousNodeCount", "replicas"}},
		{[]string{"synchronousMode=strict", "synchronousNodeCount=5", "replicas=5"}, []string{"synchronousNodeCount", "replicas"}},
		{[]string{"store.mode=etcd"}, []string{"store.etcd.endpoints"}},
		{[]string{"ttl=4s", "loopInterval=2s"}, []string{"ttl", "loopInterval"}},
		{[]string{"store.mode=embedded", "replicas=2"}, []string{"replicas", "embedded"}},
		{[]string{"persistentVolumeClaimRetentionPolicy.whenDeleted=Keep"}, []string{"whenDeleted"}},
		{[]string{"clusterName=Bad_Name"}, []string{"clusterName"}},
		{[]string{"replica=3"}, []string{"replica"}},
		{[]string{"failoverPriority.1=-1"}, []string{"failoverPriority"}},
		{[]string{"failoverPriority.first=2"}, []string{"failoverPriority", "first", "ordinal"}},
		{[]string{"failoverPriority.3=2"}, []string{"failoverPriority.3", "0 to 2"}},
		{[]string{"preferPrimaryZone=maybe"}, []string{"preferPrimaryZone"}},
	} {
		t.Run(strings.Join(tc.sets, ","), func(t *testing.T) {
			t.Parallel()
			wantRefused(t, tc.sets, tc.names...)
		})
	}
}

// wantRefused renders the chart with sets and wants helm to refuse it,
// naming each of names on stderr.
func wantRefused(t *testing.T, sets []string, names ...string) {
	t.Helper()
	args := []string{"template", release, chartDir(t), "--namespace", namespace}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	out, errOut, err := runHelm(t, args...)
	if err == nil {
		t.Fatalf("helm template --set %v succeeded; want it refused\n%.400s", sets, out)
	}
	for _, n := range names {
		if !strings.Contains(errOut, n) {
			t.Errorf("stderr does not name %q:\n%s", n, errOut)
		}
	}
}
