//go:build linux

package kubeenv

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const smokeImage = "docker.io/library/kubesmoke:dev"

// smokeManifest: a headless and a ClusterIP Service and a 3-pod StatefulSet,
// one pod per node (required anti-affinity), a local PVC each.
const smokeManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: smoke}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: smoke}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-svc, namespace: smoke}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: smoke}
spec:
  serviceName: web
  replicas: 3
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: web}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: web
        image: ` + smokeImage + `
        imagePullPolicy: Never
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: local
      resources: {requests: {storage: 64Mi}}
`

type smokePod struct {
	Metadata struct {
		Name string `json:"name"`
		UID  string `json:"uid"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		PodIP      string `json:"podIP"`
		Conditions []struct {
			Type   string `json:"type"`
			Status string `json:"status"`
		} `json:"conditions"`
	} `json:"status"`
}

func (p smokePod) ready() bool {
	for _, c := range p.Status.Conditions {
		if c.Type == "Ready" {
			return c.Status == "True"
		}
	}
	return false
}

func smokePods(t *testing.T, c *Cluster) map[string]smokePod {
	t.Helper()
	out := c.MustKubectl("-n", "smoke", "get", "pods", "-l", "app=web", "-o", "json")
	var list struct {
		Items []smokePod `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("decode pods: %v", err)
	}
	pods := map[string]smokePod{}
	for _, p := range list.Items {
		pods[p.Metadata.Name] = p
	}
	return pods
}

// smokeWaitReady waits until web-0..web-2 are Ready and, when not "", pod
// name's UID differs from notUID.
func smokeWaitReady(t *testing.T, c *Cluster, timeout time.Duration, name, notUID string) map[string]smokePod {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		pods := smokePods(t, c)
		ok := len(pods) == 3
		for _, p := range pods {
			ok = ok && p.ready()
		}
		if ok && name != "" && pods[name].Metadata.UID == notUID {
			ok = false
		}
		if ok {
			return pods
		}
		if time.Now().After(deadline) {
			out, _ := c.Kubectl("-n", "smoke", "get", "pods,pvc,events", "-o", "wide")
			t.Fatalf("pods not Ready after %v:\n%s", timeout, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// smokeExec runs the kubesmoke client in pod (kubectl exec).
func smokeExec(c *Cluster, pod string, args ...string) (string, error) {
	return c.Kubectl(append([]string{"-n", "smoke", "exec", pod, "--", "/kubesmoke"}, args...)...)
}

// smokeEventually retries f for up to timeout (DNS and Service rules can
// trail a pod's readiness by a moment).
func smokeEventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(time.Second)
	}
}

// buildSmokeImage builds test/kubesmoke (static) into an OCI archive.
func buildSmokeImage(t *testing.T, dir string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "kubesmoke")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./test/kubesmoke")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build kubesmoke: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "kubesmoke.tar")
	if err := WriteImage(archive, smokeImage, map[string]ImageFile{"kubesmoke": {Data: data, Mode: 0o755}},
		[]string{"data", "tmp"}, []string{"/kubesmoke"}); err != nil {
		t.Fatalf("write the kubesmoke image: %v", err)
	}
	return archive
}

func TestClusterSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("a real 3-node cluster: not in -short")
	}
	// A stopped kubelet's node turns Ready=Unknown after 20 s instead of
	// Kubernetes' default ~45-50 s.
	t.Setenv("HOLDFAST_KUBE_NODE_GRACE", "20s")
	testStart := time.Now()
	c := Start(t, 3)
	step := func(format string, args ...any) {
		t.Logf("[%6.1fs] %s", time.Since(testStart).Seconds(), fmt.Sprintf(format, args...))
	}
	step("cluster up: nodes %v, apiserver %s", c.Nodes, c.APIServer)

	zones := c.MustKubectl("get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.topology\.kubernetes\.io/zone} {end}`)
	for i, n := range c.Nodes {
		want := fmt.Sprintf("%s=zone-%c", n, 'a'+i%3)
		if !strings.Contains(zones, want) {
			t.Errorf("node zones %q: want %s", zones, want)
		}
	}

	c.LoadImage(buildSmokeImage(t, t.TempDir()))
	step("image loaded")
	c.Apply(smokeManifest)
	pods := smokeWaitReady(t, c, 3*time.Minute, "", "")
	step("statefulset Ready")

	// One pod per node.
	nodes := map[string]string{}
	for name, p := range pods {
		if other, dup := nodes[p.Spec.NodeName]; dup {
			t.Fatalf("%s and %s both on %s", name, other, p.Spec.NodeName)
		}
		nodes[p.Spec.NodeName] = name
	}
	// Every PVC bound.
	pvcs := c.MustKubectl("-n", "smoke", "get", "pvc", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.phase}:{.spec.volumeName} {end}`)
	for i := 0; i < 3; i++ {
		if !strings.Contains(pvcs, fmt.Sprintf("data-web-%d=Bound:", i)) {
			t.Fatalf("PVCs %q: data-web-%d not Bound", pvcs, i)
		}
	}
	step("one pod per node %v; PVCs %s", nodes, pvcs)

	// Pod DNS names resolve in a pod, to the pods' IPs.
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("web-%d", i)
		fqdn := name + ".web.smoke.svc.cluster.local"
		smokeEventually(t, 30*time.Second, "resolve "+fqdn, func() error {
			out, err := smokeExec(c, "web-0", "resolve", fqdn)
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) != pods[name].Status.PodIP {
				return fmt.Errorf("%s resolves to %q, want %s", fqdn, out, pods[name].Status.PodIP)
			}
			return nil
		})
	}
	step("pod DNS names resolve")

	// Pod to pod across nodes, by DNS name.
	for _, from := range []string{"web-0", "web-1"} {
		for i := 0; i < 3; i++ {
			to := fmt.Sprintf("web-%d", i)
			url := "http://" + to + ".web.smoke.svc.cluster.local:8080/whoami"
			smokeEventually(t, 20*time.Second, from+" -> "+to, func() error {
				out, err := smokeExec(c, from, "get", url)
				if err == nil && strings.TrimSpace(out) != to {
					err = fmt.Errorf("%s answered %q", url, out)
				}
				return err
			})
		}
	}
	step("pod-to-pod across nodes")

	// The ClusterIP Service, by short and full name, from two nodes.
	for _, from := range []string{"web-0", "web-2"} {
		for _, url := range []string{"http://web-svc/whoami", "http://web-svc.smoke.svc.cluster.local/whoami"} {
			smokeEventually(t, 30*time.Second, from+" -> "+url, func() error {
				out, err := smokeExec(c, from, "get", url)
				if err == nil && !strings.HasPrefix(strings.TrimSpace(out), "web-") {
					err = fmt.Errorf("%s answered %q", url, out)
				}
				return err
			})
		}
	}
	// The kubernetes Service (the API server) from a pod, by name.
	smokeEventually(t, 30*time.Second, "dial kubernetes.default", func() error {
		_, err := smokeExec(c, "web-1", "dial", "kubernetes.default.svc.cluster.local:443")
		return err
	})
	step("ClusterIP Service works")

	// The test process reaches pod IPs directly.
	for name, p := range pods {
		body, err := smokeHTTP("http://" + p.Status.PodIP + ":8080/whoami")
		if err != nil || strings.TrimSpace(body) != name {
			t.Fatalf("GET %s from the test process: %q, %v", p.Status.PodIP, body, err)
		}
	}
	step("pod IPs reachable from the test process")

	// kubectl logs.
	logs := c.MustKubectl("-n", "smoke", "logs", "web-0")
	if !strings.Contains(logs, "kubesmoke listening pod=web-0") {
		t.Fatalf("kubectl logs web-0: %q", logs)
	}
	step("kubectl exec and logs work")

	// A force-deleted pod comes back on its PVC (and so its node).
	old := pods["web-1"]
	c.MustKubectl("-n", "smoke", "delete", "pod", "web-1", "--grace-period=0", "--force", "--wait=false")
	pods = smokeWaitReady(t, c, 2*time.Minute, "web-1", old.Metadata.UID)
	if pods["web-1"].Spec.NodeName != old.Spec.NodeName {
		t.Fatalf("web-1 came back on %s, was on %s", pods["web-1"].Spec.NodeName, old.Spec.NodeName)
	}
	smokeEventually(t, 30*time.Second, "web-1 boots", func() error {
		out, err := smokeExec(c, "web-1", "cat", "/data/boots")
		if err == nil && strings.Count(out, "web-1 ") != 2 {
			err = fmt.Errorf("/data/boots of web-1: %q, want two boots", out)
		}
		return err
	})
	step("force-deleted web-1 back on %s with its data", old.Spec.NodeName)

	// Partition: the node's pods are cut off, then back.
	victim := pods["web-2"].Spec.NodeName
	c.Partition(victim)
	if out, err := smokeExec(c, "web-0", "get", "http://"+pods["web-2"].Status.PodIP+":8080/whoami"); err == nil {
		t.Fatalf("web-2 on partitioned %s still answered: %q", victim, out)
	}
	c.Heal(victim)
	smokeEventually(t, 30*time.Second, "web-2 after heal", func() error {
		_, err := smokeExec(c, "web-0", "get", "http://"+pods["web-2"].Status.PodIP+":8080/whoami")
		return err
	})
	step("partition and heal of %s", victim)

	// Freeze: the node's pods hang, then answer again.
	c.Freeze(victim)
	if out, err := smokeHTTP("http://" + pods["web-2"].Status.PodIP + ":8080/whoami"); err == nil {
		t.Fatalf("web-2 on frozen %s still answered: %q", victim, out)
	}
	c.Thaw(victim)
	if _, err := smokeHTTP("http://" + pods["web-2"].Status.PodIP + ":8080/whoami"); err != nil {
		t.Fatalf("web-2 after thaw: %v", err)
	}
	step("freeze and thaw of %s", victim)

	// A containerd restart ("node upgrade"): its containers keep serving,
	// and the restarted runtime serves exec again.
	rnode := pods["web-0"].Spec.NodeName
	c.StopRuntime(rnode)
	if _, err := smokeHTTP("http://" + pods["web-0"].Status.PodIP + ":8080/whoami"); err != nil {
		t.Fatalf("web-0 with containerd of %s stopped: %v", rnode, err)
	}
	c.StartRuntime(rnode)
	smokeEventually(t, 30*time.Second, "exec in web-0 after the containerd restart", func() error {
		_, err := smokeExec(c, "web-0", "cat", "/data/boots")
		return err
	})
	step("containerd of %s stopped and started", rnode)

	// A stopped kubelet turns its node NotReady; started, Ready again.
	c.StopKubelet(victim)
	took := c.WaitNodeReady(victim, "!True", 100*time.Second)
	step("kubelet of %s stopped: node not Ready after %v", victim, took.Round(time.Second))
	c.StartKubelet(victim)
	took = c.WaitNodeReady(victim, "True", 60*time.Second)
	step("kubelet of %s started: Ready after %v", victim, took.Round(time.Second))
}

func smokeHTTP(url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s: %s", url, resp.Status)
	}
	return string(b), err
}
