//go:build linux

// Package release installs holdfast with its chart and image on a real
// multi-node test Kubernetes (package kubeenv) and gives end-to-end tests
// and benchmarks what they need to look at and break it: members and
// their role labels, psql in a pod, writes through the proxy, the pods'
// processes.
package release

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/kubeenv"
)

// The release under test.
const (
	NS      = "db"
	Release = "pg"
	Proxy   = Release + "-proxy"
	ns      = NS
	release = Release
	proxy   = Proxy
)

// Timeouts of the end-to-end steps, generous for a loaded 2-core machine
// running three nodes.
const (
	installTimeout = 6 * time.Minute
	// HealthyTimeout bounds the return to three healthy members.
	HealthyTimeout = 4 * time.Minute
	// FailoverTimeout bounds a failover under test.
	FailoverTimeout = 90 * time.Second
	execTimeout     = 30 * time.Second
)

// memberRe matches the StatefulSet's pods (not the proxy's).
var memberRe = regexp.MustCompile(`^` + release + `-[0-9]+$`)

// Env is a release of the chart on a running test cluster.
type Env struct {
	// T is the test the helpers report to; a sequence of subtests sets it
	// to the running subtest.
	T    *testing.T
	C    *kubeenv.Cluster
	Root string
	helm string
	logs *podLogs
}

// tool runs one of the repository's scripts and returns the last line it
// printed (the path of what it built or found).
func tool(t *testing.T, root string, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(root, script)}, args...)...)
	cmd.Dir = root
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", script, args, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// setup starts a three-node cluster, loads the image built by the recipe
// and installs the chart with values.
func Setup(t *testing.T, values ...string) *Env {
	root := testutil.RepoRoot(t)
	c := kubeenv.Start(t, 3) // skips (or fails under HOLDFAST_KUBE_REQUIRED=1) without the binaries
	helm := os.Getenv("HOLDFAST_HELM")
	if helm == "" {
		cmd := exec.Command("bash", filepath.Join(root, "scripts/kube/helm.sh"), "--no-install")
		out, err := cmd.Output()
		if err != nil {
			if os.Getenv("HOLDFAST_KUBE_REQUIRED") == "1" {
				t.Fatalf("helm is not installed: run scripts/kube/helm.sh")
			}
			t.Skip("helm is not installed: run scripts/kube/helm.sh")
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		helm = lines[len(lines)-1]
	}
	image := tool(t, root, "scripts/image/build.sh")
	c.LoadImage(image)
	e := &Env{T: t, C: c, Root: root, helm: helm, logs: followPodLogs(t.TempDir(), c.KubectlBin, c.Kubeconfig)}
	t.Cleanup(e.logs.stop)
	args := []string{"install", release, filepath.Join(root, "deploy/helm/holdfast"), "-n", ns, "--create-namespace",
		"--kubeconfig", c.Kubeconfig, "--set", "image.pullPolicy=Never", "--set", "image.tag=dev",
		"--set", "persistence.size=1Gi", "--set", "persistence.storageClass=local"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	cmd := exec.Command(helm, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.DumpState()
		}
	})
	e.WaitHealthy(installTimeout)
	return e
}

// Upgrade runs helm upgrade of the release with the values it has plus
// values.
func (e *Env) Upgrade(values ...string) {
	e.T.Helper()
	args := []string{"upgrade", release, filepath.Join(e.Root, "deploy/helm/holdfast"), "-n", ns, "--kubeconfig", e.C.Kubeconfig, "--reuse-values"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	if out, err := exec.Command(e.helm, args...).CombinedOutput(); err != nil {
		e.T.Fatalf("helm upgrade: %v\n%s", err, out)
	}
}

// dumpState logs what a person would look at after a failure.
func (e *Env) DumpState() {
	for _, args := range [][]string{
		{"get", "pods", "-n", ns, "-o", "wide", "--show-labels"},
		{"get", "events", "-n", ns, "--sort-by=.lastTimestamp"},
		{"get", "lease,configmap", "-n", ns, "-o", "yaml"},
	} {
		out, _ := e.C.Kubectl(args...)
		e.T.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	current := map[string]bool{}
	for _, p := range e.Members() {
		current[containerKey(p.Name, p.UID, p.Restarts)] = true
	}
	if gone := e.logs.gone(current); gone != "" {
		e.T.Logf("%s", gone)
	}
	for _, p := range e.Members() {
		out, _ := e.C.Kubectl("logs", "-n", ns, p.Name, "-c", "holdfast", "--tail", "80")
		e.T.Logf("logs of %s:\n%s", p.Name, out)
		out, _ = e.C.Kubectl("logs", "-n", ns, p.Name, "-c", "holdfast", "--previous", "--tail", "40")
		e.T.Logf("previous logs of %s:\n%s", p.Name, out)
		// PostgreSQL's own log is on the member's volume, where a
		// container that keeps restarting cannot hide it.
		if dir, err := e.VolumePath(p.Claim); err != nil {
			e.T.Logf("PostgreSQL log of %s: %v", p.Name, err)
		} else {
			e.T.Logf("PostgreSQL log of %s (%s):\n%s", p.Name, pgLogOnVolume, testutil.TailFile(filepath.Join(dir, pgLogOnVolume), pgLogTail))
		}
	}
}

// pgLogOnVolume is where a member's PostgreSQL log lies, relative to its
// volume (postgresql.log in the agent's data_dir).
const pgLogOnVolume = "data/postgresql.log"

// pgLogTail is how many lines of a member's PostgreSQL log a failure shows.
const pgLogTail = 40

// VolumePath is the host directory of the local PersistentVolume bound to
// claim.
func (e *Env) VolumePath(claim string) (string, error) {
	out, err := e.C.Kubectl("get", "pvc", "-n", ns, claim, "-o", "jsonpath={.spec.volumeName}")
	if err != nil {
		return "", fmt.Errorf("volume of claim %s: %w", claim, err)
	}
	pv := strings.TrimSpace(out)
	out, err = e.C.Kubectl("get", "pv", pv, "-o", "jsonpath={.spec.local.path}{.spec.hostPath.path}")
	if err != nil {
		return "", fmt.Errorf("path of volume %s: %w", pv, err)
	}
	if p := strings.TrimSpace(out); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("persistent volume %s (claim %s) has no local path", pv, claim)
}

type Member struct {
	Name, Node, Role, UID, Phase string
	// Revision is the StatefulSet revision the pod was made from.
	Revision string
	Created  time.Time
	Ready    bool
	Restarts int
	Claim    string
}

// members lists the StatefulSet's pods, sorted by name.
func (e *Env) Members() []Member {
	out, err := e.C.Kubectl("get", "pods", "-n", ns, "-o", "json")
	if err != nil {
		e.T.Logf("list pods: %v", err)
		return nil
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name    string            `json:"name"`
				UID     string            `json:"uid"`
				Labels  map[string]string `json:"labels"`
				Created time.Time         `json:"creationTimestamp"`
			} `json:"metadata"`
			Spec struct {
				NodeName string `json:"nodeName"`
				Volumes  []struct {
					Name string `json:"name"`
					PVC  *struct {
						ClaimName string `json:"claimName"`
					} `json:"persistentVolumeClaim"`
				} `json:"volumes"`
			} `json:"spec"`
			Status struct {
				Phase      string `json:"phase"`
				Conditions []struct {
					Type, Status string
				} `json:"conditions"`
				ContainerStatuses []struct {
					Name         string `json:"name"`
					RestartCount int    `json:"restartCount"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		e.T.Logf("parse pods: %v", err)
		return nil
	}
	var ms []Member
	for _, it := range list.Items {
		if !memberRe.MatchString(it.Metadata.Name) {
			continue
		}
		m := Member{Name: it.Metadata.Name, Node: it.Spec.NodeName, Role: it.Metadata.Labels["holdfast.io/role"],
			UID: it.Metadata.UID, Phase: it.Status.Phase, Revision: it.Metadata.Labels["controller-revision-hash"], Created: it.Metadata.Created}
		for _, c := range it.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				m.Ready = true
			}
		}
		for _, cs := range it.Status.ContainerStatuses {
			if cs.Name == "holdfast" {
				m.Restarts = cs.RestartCount
			}
		}
		for _, v := range it.Spec.Volumes {
			if v.PVC != nil && v.Name == "data" {
				m.Claim = v.PVC.ClaimName
			}
		}
		ms = append(ms, m)
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	return ms
}

// eventually retries fn until it succeeds or timeout passes.
func (e *Env) Eventually(what string, timeout time.Duration, fn func() error) time.Duration {
	e.T.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = fn(); err == nil {
			return time.Since(start)
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.T.Fatalf("%s: not within %v: %v", what, timeout, err)
	return 0
}

// healthy: three running, ready members, one labelled primary and two replica.
func (e *Env) HealthyErr() error {
	ms := e.Members()
	if len(ms) != 3 {
		return fmt.Errorf("%d members", len(ms))
	}
	roles := map[string]int{}
	for _, m := range ms {
		if m.Phase != "Running" || !m.Ready {
			return fmt.Errorf("%s is %s, ready=%v (role %q)", m.Name, m.Phase, m.Ready, m.Role)
		}
		roles[m.Role]++
	}
	if roles["primary"] != 1 || roles["replica"] != 2 {
		return fmt.Errorf("role labels %v, want 1 primary and 2 replicas", roles)
	}
	return nil
}

// UpdateRevision is the StatefulSet's update revision: the one every pod
// is on once a rollout is done.
func (e *Env) UpdateRevision() string {
	e.T.Helper()
	return strings.TrimSpace(e.C.MustKubectl("get", "statefulset", "-n", NS, Release, "-o", "jsonpath={.status.updateRevision}"))
}

// WaitRolledOut waits until the cluster is healthy with every member on
// revision want, and returns the members then.
func (e *Env) WaitRolledOut(what, want string, timeout time.Duration) []Member {
	e.T.Helper()
	var final []Member
	e.Eventually(what, timeout, func() error {
		if err := e.HealthyErr(); err != nil {
			return err
		}
		final = e.Members()
		for _, m := range final {
			if m.Revision != want {
				return fmt.Errorf("%s at revision %s, want %s", m.Name, m.Revision, want)
			}
		}
		return nil
	})
	return final
}

func (e *Env) WaitHealthy(timeout time.Duration) {
	e.T.Helper()
	e.Eventually("cluster healthy", timeout, e.HealthyErr)
}

func (e *Env) Primary() Member {
	e.T.Helper()
	m, ok := e.CurrentPrimary()
	if !ok {
		e.T.Fatal("no member labelled primary")
	}
	return m
}

// CurrentPrimary is the member labelled primary, if one is (for polling:
// between two primaries there is a moment with none).
func (e *Env) CurrentPrimary() (Member, bool) {
	for _, m := range e.Members() {
		if m.Role == "primary" {
			return m, true
		}
	}
	return Member{}, false
}

// psql runs one statement in pod (its holdfast container) against host:port
// as the superuser and returns the output.
func (e *Env) Psql(pod, host string, port int, sql string) (string, error) {
	script := fmt.Sprintf(`PGPASSWORD="$HOLDFAST_POSTGRESQL_SUPERUSER_PASSWORD" PGCONNECT_TIMEOUT=5 psql -XAtq -v ON_ERROR_STOP=1 -h %s -p %d -U postgres -d postgres -c %q`, host, port, sql)
	done := make(chan struct{})
	var out string
	var err error
	go func() {
		defer close(done)
		out, err = e.C.Kubectl("exec", "-n", ns, pod, "-c", "holdfast", "--", "sh", "-c", script)
	}()
	select {
	case <-done:
		return strings.TrimSpace(out), err
	case <-time.After(execTimeout):
		return "", fmt.Errorf("psql in %s against %s:%d: no answer in %v", pod, host, port, execTimeout)
	}
}

// anyLive returns a member pod other than skip that is running, to run a
// client from.
func (e *Env) AnyLive(skip ...string) string {
	for _, m := range e.Members() {
		if m.Phase == "Running" && m.Ready && !contains(skip, m.Name) && !contains(skip, m.Node) {
			return m.Name
		}
	}
	return ""
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// write inserts v through the proxy's read-write port, from a pod other
// than those in skip.
func (e *Env) Write(v string, skip ...string) error {
	from := e.AnyLive(skip...)
	if from == "" {
		return fmt.Errorf("no live pod to write from")
	}
	_, err := e.Psql(from, proxy, 5432, "insert into t(v) values ('"+v+"')")
	return err
}

// count counts rows with value v in member pod's own PostgreSQL.
func (e *Env) Count(pod, v string) (int, error) {
	out, err := e.Psql(pod, "127.0.0.1", 5432, "select count(*) from t where v = '"+v+"'")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(out)
}

// labelSampler records the most pods ever labelled primary at once.
type LabelSampler struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	max  int
	seen string
}

func (e *Env) SampleLabels() *LabelSampler {
	s := &LabelSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			select {
			case <-s.stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			out, err := e.C.Kubectl("get", "pods", "-n", ns, "-l", "holdfast.io/role=primary", "-o", "name")
			if err != nil {
				continue
			}
			n := len(strings.Fields(out))
			s.mu.Lock()
			if n > s.max {
				s.max, s.seen = n, out
			}
			s.mu.Unlock()
		}
	}()
	return s
}

// finish stops the sampler and fails the test if two pods were ever
// labelled primary at once.
func (s *LabelSampler) Finish(t *testing.T) {
	t.Helper()
	close(s.stop)
	<-s.done
	if s.max > 1 {
		t.Errorf("%d pods labelled primary at once: %s", s.max, s.seen)
	}
}

// podProcesses lists the host PIDs of a pod's container processes: those
// whose cgroup path names the pod's UID (never found by process name) and
// that run as the image's user (uid 999), which leaves out the pod's
// sandbox (pause) process.
func PodProcesses(uid string) []int {
	want := []string{uid, strings.ReplaceAll(uid, "-", "_")}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", en.Name(), "cgroup"))
		if err != nil {
			continue
		}
		cg := string(b)
		st, err := os.ReadFile(filepath.Join("/proc", en.Name(), "status"))
		if err != nil || !regexp.MustCompile(`(?m)^Uid:\s+999\s`).Match(st) {
			continue
		}
		for _, w := range want {
			if strings.Contains(cg, "pod"+w) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// writerScript inserts a row into host (WRITE_HOST) in a loop, a new
// connection each time, and prints one line per attempt:
// "ok <start ms> <end ms> <server address> <row id> <server ms>" or
// "err <start ms> <end ms>". The server's time is clock_timestamp() at the
// insert: the pods and the members share the host's clock, so it orders
// the writes of several writers as the servers saw them, and compares with
// the test's times.
const writerScript = `while :; do
  s=$(date +%s%3N)
  if a=$(psql -XAtq -F ' ' -h "$WRITE_HOST" -p 5432 -U postgres -d postgres -c "insert into writes default values returning inet_server_addr(), id, (extract(epoch from clock_timestamp())*1000)::bigint" 2>/dev/null); then
    echo "ok $s $(date +%s%3N) $a"
  else
    echo "err $s $(date +%s%3N)"
  fi
  sleep 0.02
done`

// writerEnv is the writer container's environment (host, release), its
// lines indented as the container's keys are.
func writerEnv(indent, host string) string {
	lines := []string{
		"env:",
		"- {name: WRITE_HOST, value: " + host + "}",
		`- {name: PGCONNECT_TIMEOUT, value: "2"}`,
		"- name: PGPASSWORD",
		"  valueFrom: {secretKeyRef: {name: " + Release + "-auth, key: superuser-password}}",
	}
	return indent + strings.Join(lines, "\n"+indent) + "\n"
}

// createWrites creates the table the writers insert into.
func (e *Env) createWrites() {
	e.T.Helper()
	if _, err := e.Psql(e.AnyLive(), Proxy, 5432, "create table if not exists writes(id bigserial primary key, at timestamptz default now())"); err != nil {
		e.T.Fatal(err)
	}
}

// StartWriter runs a pod (named name) that writes to host (a Service,
// e.g. Proxy) in a loop (writerScript), into a table writes it creates.
func (e *Env) StartWriter(name, host string) {
	e.T.Helper()
	e.createWrites()
	script, err := json.Marshal(writerScript)
	if err != nil {
		e.T.Fatal(err)
	}
	e.C.Apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
  enableServiceLinks: false
  securityContext: {runAsNonRoot: true, runAsUser: 999, runAsGroup: 999}
  containers:
  - name: writer
    image: holdfast:dev
    imagePullPolicy: Never
    command: ["sh", "-c", %s]
`+writerEnv("    ", host), name, NS, script))
	e.Eventually("writer pod running", 2*time.Minute, func() error {
		out, err := e.C.Kubectl("get", "pod", "-n", NS, name, "-o", "jsonpath={.status.phase}")
		if err == nil && out != "Running" {
			err = fmt.Errorf("phase %s", out)
		}
		return err
	})
}

// StartWriters runs writerScript on every node, as a DaemonSet named name
// writing to host: kubectl drain leaves DaemonSet pods alone, so the load
// goes on through a rolling drain of every node.
func (e *Env) StartWriters(name, host string) {
	e.T.Helper()
	e.createWrites()
	script, err := json.Marshal(writerScript)
	if err != nil {
		e.T.Fatal(err)
	}
	e.C.Apply(fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata: {name: %[1]s, namespace: %[2]s}
spec:
  selector: {matchLabels: {writer: %[1]s}}
  template:
    metadata: {labels: {writer: %[1]s}}
    spec:
      enableServiceLinks: false
      terminationGracePeriodSeconds: 1
      securityContext: {runAsNonRoot: true, runAsUser: 999, runAsGroup: 999}
      containers:
      - name: writer
        image: holdfast:dev
        imagePullPolicy: Never
        command: ["sh", "-c", %[3]s]
`+writerEnv("        ", host), name, NS, script))
	e.Eventually("a writer running on every node", 2*time.Minute, func() error {
		out, err := e.C.Kubectl("get", "daemonset", "-n", NS, name, "-o", "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}")
		if err == nil && (out == "0/0" || strings.Split(out, "/")[0] != strings.Split(out, "/")[1]) {
			err = fmt.Errorf("ready/scheduled %s", out)
		}
		return err
	})
}

// Attempt is one write of a writer pod.
type Attempt struct {
	OK         bool
	Start, End time.Time
	Server     string    // the address of the PostgreSQL that acknowledged it
	ID         int64     // the row acknowledged
	At         time.Time // the server's clock at the insert
}

// WriterLog returns the writer pod's attempts of the last window.
func (e *Env) WriterLog(name string, window time.Duration) ([]Attempt, error) {
	out, err := e.C.Kubectl("logs", "-n", NS, name, "--since", window.String())
	if err != nil {
		return nil, err
	}
	return parseAttempts(out), nil
}

// WritersLog returns the attempts of every pod of the writer DaemonSet
// name (each container's log, and its previous one after a restart), in
// no particular order.
func (e *Env) WritersLog(name string) ([]Attempt, error) {
	out, err := e.C.Kubectl("get", "pods", "-n", NS, "-l", "writer="+name, "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[0].restartCount}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	var as []Attempt
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		logs, err := e.C.Kubectl("logs", "-n", NS, f[0], "--tail=-1")
		if err != nil {
			return nil, err
		}
		as = append(as, parseAttempts(logs)...)
		if f[1] != "0" {
			if prev, err := e.C.Kubectl("logs", "-n", NS, f[0], "--previous", "--tail=-1"); err == nil {
				as = append(as, parseAttempts(prev)...)
			}
		}
	}
	return as, nil
}

// parseAttempts reads writerScript's lines.
func parseAttempts(out string) []Attempt {
	var as []Attempt
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		s, err1 := strconv.ParseInt(f[1], 10, 64)
		en, err2 := strconv.ParseInt(f[2], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		a := Attempt{OK: f[0] == "ok", Start: time.UnixMilli(s), End: time.UnixMilli(en)}
		if len(f) > 3 {
			a.Server = f[3]
		}
		if len(f) > 5 {
			a.ID, _ = strconv.ParseInt(f[4], 10, 64)
			if ms, err := strconv.ParseInt(f[5], 10, 64); err == nil {
				a.At = time.UnixMilli(ms)
			}
		}
		as = append(as, a)
	}
	return as
}

// LongestGap is the longest time without an acknowledged write among as
// (by the servers' clock, Attempt.At) within [from, to], the window's
// edges included: the write pause a client saw, and when it began.
func LongestGap(as []Attempt, from, to time.Time) (time.Duration, time.Time) {
	var at []time.Time
	for _, a := range as {
		if a.OK && !a.At.Before(from) && !a.At.After(to) {
			at = append(at, a.At)
		}
	}
	slices.SortFunc(at, time.Time.Compare)
	last, gap, began := from, time.Duration(0), from
	for _, t := range append(at, to) {
		if t.Sub(last) > gap {
			gap, began = t.Sub(last), last
		}
		last = t
	}
	return gap, began
}

// Ctl runs holdfast ctl with args in pod's agent container, against the
// Kubernetes store.
func (e *Env) Ctl(pod string, args ...string) (string, error) {
	full := append([]string{"exec", "-n", NS, pod, "-c", "holdfast", "--", "holdfast", "ctl"}, args...)
	full = append(full, "--kube", "--cluster", Release, "--cacert", "/etc/holdfast/tls/ca.crt")
	return e.C.Kubectl(full...)
}

// PodIP is a pod's IP address.
func (e *Env) PodIP(pod string) string {
	e.T.Helper()
	return strings.TrimSpace(e.C.MustKubectl("get", "pod", "-n", NS, pod, "-o", "jsonpath={.status.podIP}"))
}

// InstallOther installs another release of the chart, name, in namespace
// NS, with the test image and storage values plus values. It does not
// wait for the pods: the caller waits for what its release must reach
// (the Env's own helpers look only at the release under test).
func (e *Env) InstallOther(name string, values ...string) error {
	args := []string{"install", name, filepath.Join(e.Root, "deploy/helm/holdfast"), "-n", ns,
		"--kubeconfig", e.C.Kubeconfig, "--set", "image.pullPolicy=Never", "--set", "image.tag=dev",
		"--set", "persistence.size=1Gi", "--set", "persistence.storageClass=local"}
	for _, v := range values {
		args = append(args, "--set", v)
	}
	if out, err := exec.Command(e.helm, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("helm install %s: %w\n%s", name, err, out)
	}
	return nil
}

// UninstallOther uninstalls a release made by InstallOther and waits for
// its resources to go (the claims of its StatefulSet stay: helm does not
// own them).
func (e *Env) UninstallOther(name string) error {
	out, err := exec.Command(e.helm, "uninstall", name, "-n", ns, "--kubeconfig", e.C.Kubeconfig, "--wait", "--timeout", "5m").CombinedOutput()
	if err != nil {
		return fmt.Errorf("helm uninstall %s: %w\n%s", name, err, out)
	}
	return nil
}
