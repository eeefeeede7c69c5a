// Package localfailover runs a local holdfast cluster (holdfast up) and
// measures how long it refuses writes when its primary dies: the time from
// breaking the primary to the first write another member acknowledges. The
// failover benchmarks share it, so the local figure a Kubernetes figure is
// compared with is measured the same way.
package localfailover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	"github.com/holdfast/holdfast/internal/local"
)

// Timing of a measurement.
const (
	upWait        = "120s"
	healthyWait   = 2 * time.Minute
	settle        = 2 * time.Second
	writeTimeout  = 500 * time.Millisecond
	writeInterval = 20 * time.Millisecond
	giveUp        = 2 * time.Minute
)

// Cluster is a running local cluster under measurement.
type Cluster struct {
	work, bin, dir string
	layout         local.Layout
}

// Start builds holdfast (from the repository root, the working directory)
// and starts a local cluster of members.
func Start(members int) (*Cluster, error) { return StartBinary("", members) }

// StartBinary starts a local cluster of members with the holdfast binary
// bin; "" builds one from the repository root (the working directory).
// Close leaves a given binary in place.
func StartBinary(bin string, members int) (*Cluster, error) {
	work, err := os.MkdirTemp("", "holdfast-bench")
	if err != nil {
		return nil, err
	}
	os.Chmod(work, 0o755)
	c := &Cluster{work: work, bin: bin, dir: filepath.Join(work, "cluster")}
	if bin == "" {
		c.bin = filepath.Join(work, "holdfast")
		if b, err := exec.Command("go", "build", "-o", c.bin, "./cmd/holdfast").CombinedOutput(); err != nil {
			os.RemoveAll(work)
			return nil, fmt.Errorf("build holdfast (run from the repository root): %v\n%s", err, b)
		}
	}
	if err := c.holdfast("up", "--detach", "--dir", c.dir, "--members", strconv.Itoa(members), "--wait", upWait); err != nil {
		c.Close()
		return nil, err
	}
	if c.layout, err = local.ReadLayout(c.dir); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.exec(context.Background(), c.primary(), "CREATE TABLE IF NOT EXISTS bench (id bigserial primary key, at timestamptz default now())"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close stops the cluster and removes its directory.
func (c *Cluster) Close() {
	_ = c.holdfast("down", "--dir", c.dir)
	os.RemoveAll(c.work)
}

// Settings are the cluster's lease settings, for the results.
func (c *Cluster) Settings() map[string]string {
	cfg, _ := os.ReadFile(local.ConfigFile(c.dir, c.layout.Members[0].Name))
	return map[string]string{
		"members":                 strconv.Itoa(len(c.layout.Members)),
		"ttl":                     results.Setting(cfg, "ttl"),
		"loop_interval":           results.Setting(cfg, "loop_interval"),
		"maximum_lag_on_failover": results.Setting(cfg, "maximum_lag_on_failover"),
		"store":                   "embedded etcd",
		"client":                  "new connection per attempt, 20ms between rounds, 500ms connect timeout",
	}
}

func (c *Cluster) holdfast(args ...string) error {
	b, err := exec.Command(c.bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("holdfast %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return nil
}

// KillPrimary measures kill -9 of the primary's agent and postmaster
// together to the first write acknowledged by another member.
func (c *Cluster) KillPrimary() (time.Duration, error) {
	return c.measure(func(p string) error {
		_, _, err := local.KillHard(c.dir, p)
		return err
	})
}

// Handover measures a clean handover (SIGTERM to the primary's agent) to
// the first write acknowledged by another member: the cost of the
// promotion itself, without detecting a dead primary.
func (c *Cluster) Handover() (time.Duration, error) {
	return c.measure(func(p string) error { return syscall.Kill(c.agentPID(p), syscall.SIGTERM) })
}

// Layout is the cluster's layout (ports of the members and of its proxy).
func (c *Cluster) Layout() local.Layout { return c.layout }

// Failover waits for a healthy cluster and lets it settle, calls ready with
// the primary's name (to check the clients work), kills the primary's agent
// and postmaster with SIGKILL, and calls observe with the moment of the
// kill and the killed member; once observe returns, it starts the killed
// member again.
func (c *Cluster) Failover(ready func(primary string) error, observe func(killedAt time.Time, old string) error) error {
	if err := local.WaitHealthy(context.Background(), c.dir, c.layout, healthyWait); err != nil {
		return err
	}
	time.Sleep(settle)
	old := c.primary()
	if old == "" {
		return errors.New("no primary")
	}
	if err := ready(old); err != nil {
		return err
	}
	start := time.Now()
	if _, _, err := local.KillHard(c.dir, old); err != nil {
		return err
	}
	err := observe(start, old)
	if uerr := c.holdfast("up", "--detach", "--dir", c.dir, "--wait", upWait); err == nil {
		err = uerr
	}
	return err
}

// measure waits for a healthy cluster, breaks the primary with brk, and
// returns the time until a write is acknowledged by another member. Then it
// starts the broken member again.
func (c *Cluster) measure(brk func(primary string) error) (time.Duration, error) {
	if err := local.WaitHealthy(context.Background(), c.dir, c.layout, healthyWait); err != nil {
		return 0, err
	}
	// Let the replicas catch up fully and the statuses settle.
	time.Sleep(settle)
	old := c.primary()
	if old == "" {
		return 0, errors.New("no primary")
	}
	agentPID := c.agentPID(old)
	start := time.Now()
	if err := brk(old); err != nil {
		return 0, err
	}
	deadline := start.Add(giveUp)
	for time.Now().Before(deadline) {
		for _, m := range c.layout.Members {
			if m.Name == old || m.Witness {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
			err := c.exec(ctx, m.Name, "INSERT INTO bench DEFAULT VALUES")
			cancel()
			if err == nil {
				d := time.Since(start)
				// A cleanly stopping agent may still be finishing its
				// shutdown; restart it only once it has exited.
				for pid := agentPID; pid != 0 && syscall.Kill(pid, 0) == nil; {
					time.Sleep(50 * time.Millisecond)
				}
				return d, c.holdfast("up", "--detach", "--dir", c.dir, "--wait", upWait)
			}
		}
		time.Sleep(writeInterval)
	}
	return 0, fmt.Errorf("no write acknowledged within %v", giveUp)
}

func (c *Cluster) primary() string {
	v, err := local.View(context.Background(), c.layout)
	if err != nil || v.Leader == nil {
		return ""
	}
	return v.Leader.Name
}

func (c *Cluster) exec(ctx context.Context, member, sql string) error {
	for _, m := range c.layout.Members {
		if m.Name != member {
			continue
		}
		conn, err := pgx.Connect(ctx, c.layout.SuperuserDSN(m.PGPort, 0))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	return fmt.Errorf("no member %s", member)
}

// Dir is the cluster's directory (holdfast up --dir).
func (c *Cluster) Dir() string { return c.dir }

// WaitHealthy waits until every member is healthy.
func (c *Cluster) WaitHealthy() error {
	return local.WaitHealthy(context.Background(), c.dir, c.layout, healthyWait)
}

func (c *Cluster) agentPID(member string) int {
	pid, _ := local.RunningPID(c.dir, member)
	return pid
}
