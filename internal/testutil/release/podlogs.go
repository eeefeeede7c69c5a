//go:build linux

package release

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/internal/testutil"
)

// Following member logs.
const (
	// podLogsPoll is how often the follower looks for new containers.
	podLogsPoll = 2 * time.Second
	// goneLogTail is how many lines of a replaced container's log a
	// failure shows, and goneLogMax how many such containers (the latest).
	goneLogTail = 60
	goneLogMax  = 6
	// podLogsWaitDelay bounds how long stop waits for a stream's output
	// once its kubectl was killed.
	podLogsWaitDelay = time.Second
)

// podLogs follows the holdfast container of every member pod into a file
// of its own, so that after a failure the logs of containers the test
// replaced (a rollout, a deleted or killed pod) can still be read: kubectl
// keeps only a pod's current and previous container, and nothing once the
// pod is deleted. It runs its own kubectl processes, never the test's T,
// so it may outlive a subtest. A stream that ends while its container
// still runs (the API server or the kubelet was unreachable: some tests
// cut them on purpose) is resumed at the next poll from where it ended,
// so a failure after such a cut still shows what the agents said.
type podLogs struct {
	dir         string
	bin, config string
	cancel      context.CancelFunc
	wg          sync.WaitGroup
	mu          sync.Mutex
	following   map[string]bool      // container keys (containerKey) followed now
	ended       map[string]time.Time // when a container's last stream ended
}

// containerKey names one container run of a member pod.
func containerKey(pod, uid string, restarts int) string {
	return fmt.Sprintf("%s_%s_%d", pod, uid, restarts)
}

// followPodLogs starts following; stop ends it.
func followPodLogs(dir, bin, config string) *podLogs {
	ctx, cancel := context.WithCancel(context.Background())
	p := &podLogs{dir: dir, bin: bin, config: config, cancel: cancel, following: map[string]bool{}, ended: map[string]time.Time{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(podLogsPoll)
		defer t.Stop()
		for {
			p.poll(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return p
}

func (p *podLogs) stop() {
	p.cancel()
	p.wg.Wait()
}

// poll starts following each running member container not yet followed.
func (p *podLogs) poll(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, execTimeout)
	defer cancel()
	out, err := exec.CommandContext(c, p.bin, "--kubeconfig", p.config, "get", "pods", "-n", ns, "-o", "json").Output()
	if err != nil {
		return // the apiserver may be down on purpose; try again
	}
	var list struct {
		Items []struct {
			Metadata struct{ Name, UID string } `json:"metadata"`
			Status   struct {
				ContainerStatuses []struct {
					Name         string          `json:"name"`
					RestartCount int             `json:"restartCount"`
					State        json.RawMessage `json:"state"`
				} `json:"containerStatuses"`
			} `json:"status"`
		} `json:"items"`
	}
	if json.Unmarshal(out, &list) != nil {
		return
	}
	for _, it := range list.Items {
		if !memberRe.MatchString(it.Metadata.Name) {
			continue
		}
		for _, cs := range it.Status.ContainerStatuses {
			if cs.Name != "holdfast" || !strings.Contains(string(cs.State), `"running"`) {
				continue
			}
			key := containerKey(it.Metadata.Name, it.Metadata.UID, cs.RestartCount)
			p.mu.Lock()
			busy, since := p.following[key], p.ended[key]
			p.following[key] = true
			p.mu.Unlock()
			if !busy {
				p.follow(ctx, it.Metadata.Name, key, since)
			}
		}
	}
}

// follow streams the pod's current holdfast container into dir/key.log
// until the container ends, the stream breaks or ctx is cancelled. since:
// when the last bytes of an earlier stream of this container came (zero:
// nothing came yet); the log is then appended from that moment on, after a
// line saying so (lines around the break may appear twice: kubectl's since
// is at a second's precision). While the container cannot be reached each
// attempt fails at once: its errors are not kept, and the next attempt
// starts from the same moment.
func (p *podLogs) follow(ctx context.Context, pod, key string, since time.Time) {
	args := []string{"--kubeconfig", p.config, "logs", "-f", "-n", ns, pod, "-c", "holdfast"}
	if !since.IsZero() {
		args = append(args, "--since-time", since.Add(-time.Second).UTC().Format(time.RFC3339))
	}
	out := &streamWriter{}
	ended := func() {
		p.mu.Lock()
		delete(p.following, key)
		if !out.last.IsZero() {
			p.ended[key] = out.last
		}
		p.mu.Unlock()
	}
	f, err := os.OpenFile(filepath.Join(p.dir, key+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		ended()
		return
	}
	out.w = f
	cmd := exec.CommandContext(ctx, p.bin, args...)
	cmd.WaitDelay = podLogsWaitDelay
	cmd.Stdout, cmd.Stderr = out, f
	if !since.IsZero() {
		out.mark = fmt.Sprintf("--- holdfast test harness: the log stream broke after %s; resumed ---\n", since.UTC().Format(time.StampMilli))
		cmd.Stderr = nil
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		ended()
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		_ = cmd.Wait()
		f.Close()
		ended()
	}()
}

// gone returns the tails of the followed containers that are no longer
// current (not in current, keys by containerKey), latest last.
func (p *podLogs) gone(current map[string]bool) string {
	files, _ := filepath.Glob(filepath.Join(p.dir, "*.log"))
	type log struct {
		key string
		mod time.Time
	}
	var logs []log
	for _, f := range files {
		key := strings.TrimSuffix(filepath.Base(f), ".log")
		if current[key] {
			continue
		}
		if fi, err := os.Stat(f); err == nil {
			logs = append(logs, log{key, fi.ModTime()})
		}
	}
	sort.Slice(logs, func(i, j int) bool { return logs[i].mod.Before(logs[j].mod) })
	logs = logs[max(0, len(logs)-goneLogMax):]
	var b strings.Builder
	for _, l := range logs {
		fmt.Fprintf(&b, "logs of replaced container %s (last written %s):\n%s\n", l.key, l.mod.UTC().Format(time.StampMilli),
			testutil.TailFile(filepath.Join(p.dir, l.key+".log"), goneLogTail))
	}
	return b.String()
}

// streamWriter passes one stream's bytes to w, after mark (if any) before
// the first of them, and notes when the last came. Used by one stream's
// copying goroutine; read once the command has been waited for.
type streamWriter struct {
	w    io.Writer
	mark string
	last time.Time
}

func (s *streamWriter) Write(b []byte) (int, error) {
	if s.mark != "" {
		if _, err := io.WriteString(s.w, s.mark); err != nil {
			return 0, err
		}
		s.mark = ""
	}
	s.last = time.Now()
	return s.w.Write(b)
}
