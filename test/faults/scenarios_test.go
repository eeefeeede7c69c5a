package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/workload"
)

// Cluster kinds: scenarios of one kind share a cluster.
const (
	kindEmbedded = "embedded" // embedded etcd in every agent
	kindEtcd     = "etcd"     // external three-member etcd on hosts of its own
	kindVolume   = "volume"   // embedded etcd, data_dir on a small tmpfs
)

// volumeBytes is the size of each member's data volume in kindVolume.
const volumeBytes = 512 << 20

// Scenario is one fault: Do injects it, holds it, and heals it (a
// supervisor's restart of a killed process counts as the heal; nothing
// else a human would do is allowed).
type Scenario struct {
	Name string
	What string // for docs/faults.md and the report
	Kind string
	CI   bool // in the CI subset
	Do   func(r *Run) error
}

// scenarios is the whole matrix, in report order.
func scenarios() []Scenario {
	return []Scenario{
		{Name: "kill -9 primary", Kind: kindEmbedded, CI: true, Do: killPrimary,
			What: "SIGKILL the primary's agent and postmaster together; restart the agent after 3×TTL (as systemd would)"},
		{Name: "kill primary agent", Kind: kindEmbedded, Do: killPrimaryAgent,
			What: "SIGKILL the primary's agent only (its PostgreSQL must die with it); restart the agent after 3×TTL"},
		{Name: "SIGSTOP primary agent", Kind: kindEmbedded, CI: true, Do: stopPrimaryAgent,
			What: "freeze the primary's agent (SIGSTOP) for 2×TTL, then SIGCONT"},
		{Name: "SIGSTOP primary agent (external etcd)", Kind: kindEtcd, Do: stopPrimaryAgent,
			What: "as SIGSTOP primary agent, with the members on an external etcd: the frozen agent takes no etcd member down with it, so the failover proceeds while its PostgreSQL still runs (holdfast's answer is the watchdog, which this machine may lack)"},
		{Name: "SIGSTOP primary postmaster", Kind: kindEmbedded, Do: stopPrimaryPostmaster,
			What: "freeze the primary's postmaster process (SIGSTOP; its backends keep running) for primary_start_timeout + 2×TTL, then SIGCONT"},
		{Name: "primary partitioned", Kind: kindEmbedded, CI: true, Do: partitionPrimary,
			What: "cut the primary's host off the network (veth down: from the other members, the store, the proxy and the clients) for 4×TTL"},
		{Name: "replica partitioned", Kind: kindEmbedded, CI: true, Do: partitionReplica,
			What: "cut one replica's host off the network for 4×TTL: in a synchronous mode the synchronous standby, else the replica whose embedded etcd member is the raft leader"},
		{Name: "store quorum cut", Kind: kindEtcd, CI: true, Do: quorumCut,
			What: "external three-member etcd: cut two of its hosts off for 4×TTL; the third stays reachable without quorum, the members still reach each other; asserts no promotion and (the failsafe) that the primary keeps serving"},
		{Name: "all members restarted", Kind: kindEmbedded, CI: true, Do: restartAll,
			What: "SIGKILL every agent at once (their PostgreSQL dies with them), start them all again at once"},
		{Name: "rolling restart", Kind: kindEmbedded, Do: rollingRestart,
			What: "under load, SIGTERM and restart each member's agent in turn, replicas first, waiting for health in between"},
		{Name: "flapping network", Kind: kindEmbedded, Do: flappingNetwork,
			What: "for 30 s every member's link flaps (down 0.3–1.5 s, up 1–4 s, independently), with 10% packet loss on its network interface (netem when the kernel has it, else iptables statistic match)"},
		{Name: "primary data volume full", Kind: kindVolume, Do: fillPrimaryVolume,
			What: "fill the primary's data volume (a 512 MiB tmpfs data_dir) to the last byte for 5×TTL, then delete the filler"},
	}
}

// killPrimary: kill -9 of the agent and the postmaster together.
func killPrimary(r *Run) error {
	p := r.Primary
	pm, err := r.C.PostmasterPID(p)
	if err != nil {
		return err
	}
	r.HoldDown(p)
	r.Undo(func() { _ = r.Restart(p) })
	r.Begin()
	_ = syscall.Kill(pm, syscall.SIGKILL)
	p.Agent().Kill()
	if !pidGone(pm, 20*time.Second) {
		return fmt.Errorf("postmaster %d of %s survived SIGKILL", pm, p.Name)
	}
	r.Hold(3 * r.TTL)
	r.End()
	return r.Restart(p)
}

// killPrimaryAgent: kill -9 of the agent only; PostgreSQL must not
// outlive it (PDEATHSIG).
func killPrimaryAgent(r *Run) error {
	p := r.Primary
	pm, err := r.C.PostmasterPID(p)
	if err != nil {
		return err
	}
	r.HoldDown(p)
	r.Undo(func() { _ = r.Restart(p) })
	r.Begin()
	p.Agent().Kill()
	if !pidGone(pm, 10*time.Second) {
		r.Violation("the postmaster (pid %d) of %s outlived its killed agent by 10 s: an unsupervised primary", pm, p.Name)
	} else {
		r.Note("the postmaster died with its agent")
	}
	r.Hold(3 * r.TTL)
	r.End()
	return r.Restart(p)
}

// stopPrimaryAgent: SIGSTOP of the primary's agent for 2×TTL. Its
// PostgreSQL keeps running, unsupervised, while the lease expires.
func stopPrimaryAgent(r *Run) error {
	p := r.Primary
	a := p.Agent()
	if _, err := os.Stat("/dev/watchdog"); err != nil {
		r.Note("no /dev/watchdog here")
	}
	r.Undo(func() { _ = a.Signal(syscall.SIGCONT) })
	r.Begin()
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	r.Hold(2 * r.TTL)
	r.End()
	return a.Signal(syscall.SIGCONT)
}

// stopPrimaryPostmaster: SIGSTOP of the postmaster (not its backends):
// no new connection is accepted, open sessions keep working.
func stopPrimaryPostmaster(r *Run) error {
	p := r.Primary
	pm, err := r.C.PostmasterPID(p)
	if err != nil {
		return err
	}
	r.Undo(func() { _ = syscall.Kill(pm, syscall.SIGCONT) })
	r.Begin()
	if err := syscall.Kill(pm, syscall.SIGSTOP); err != nil {
		return err
	}
	// A client without a connect timeout of its own, through the proxy:
	// it must hear within 2×TTL (issue 11), not hang while the postmaster
	// is frozen. Asserted with half a TTL of slack for a loaded machine.
	freeze := r.Start + 2*r.TTL
	waited := make(chan string, 1)
	go func() {
		time.Sleep(r.TTL / 4) // the freeze has settled
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), freeze+10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, strings.Replace(r.C.ProxyDSN(), "connect_timeout=2", "connect_timeout=0", 1))
		took := time.Since(start)
		if err == nil {
			_ = conn.Close(context.Background())
		}
		what := "connected"
		if err != nil {
			what = "refused"
		}
		if took > 2*r.TTL+r.TTL/2 {
			r.Violation("a new connection through the proxy waited %s for an answer while the postmaster was frozen (%s; bound 2×TTL)", took.Round(100*time.Millisecond), what)
		}
		waited <- fmt.Sprintf("a new connection through the proxy during the freeze was %s after %s", what, took.Round(100*time.Millisecond))
	}()
	r.Hold(freeze)
	r.End()
	err = syscall.Kill(pm, syscall.SIGCONT)
	if errors.Is(err, syscall.ESRCH) {
		// The agent saw no new connection accepted for
		// primary_start_timeout, fenced (its last resort kills the
		// process group, frozen or not) and gave up the key.
		r.Note("the agent fenced the frozen postmaster after primary_start_timeout and a replica took over")
		err = nil
	}
	r.Note("%s", <-waited)
	return err
}

// partition cuts a host for d.
func partition(r *Run, nd *Node, d time.Duration) error {
	r.Undo(func() { _ = r.C.Net.Heal(nd.Host) })
	r.Begin()
	if err := r.C.Net.Cut(nd.Host); err != nil {
		return err
	}
	r.Hold(d)
	r.End()
	return r.C.Net.Heal(nd.Host)
}

func partitionPrimary(r *Run) error { return partition(r, r.Primary, 4*r.TTL) }

// partitionReplica cuts the replica whose loss matters most: in a
// synchronous mode the synchronous standby, else the one whose embedded
// etcd is the raft leader (holdfast moves raft leadership away from the
// primary), else the last one.
func partitionReplica(r *Run) error {
	others := r.C.Others(r.Primary)
	target, why := others[len(others)-1], "the last replica"
	if r.Mode != cluster.SyncOff {
		if n := r.C.Node(r.C.SyncStandby(r.Primary)); n != nil {
			target, why = n, "the synchronous standby"
		}
	} else if n := r.C.Node(r.C.RaftLeader()); n != nil && n != r.Primary {
		target, why = n, "the etcd raft leader"
	}
	r.Note("partitioned %s (%s)", target.Name, why)
	return partition(r, target, 4*r.TTL)
}

// quorumCut cuts two of the three etcd hosts. Asserted: no member other
// than the primary is promoted while the store has no quorum, and (the
// failsafe) the primary, which still reaches every member, keeps
// acknowledging writes through the cut.
func quorumCut(r *Run) error {
	if len(r.C.Etcd) != 3 {
		return errors.New("quorum cut needs the external etcd cluster")
	}
	cut := r.C.Etcd[1:]
	for _, e := range cut {
		r.Undo(func() { _ = r.C.Net.Heal(e.Host) })
	}
	r.Begin()
	for _, e := range cut {
		if err := r.C.Net.Cut(e.Host); err != nil {
			return err
		}
	}
	r.Hold(4 * r.TTL)
	r.End()
	if w := r.sampler.WritableDuring(r.FaultFrom, r.FaultTo, r.Primary.Name); len(w) > 0 {
		r.Violation("promoted while the store had no quorum: %s", strings.Join(w, ", "))
	} else {
		r.Note("no promotion during the cut")
	}
	// The failsafe (docs/architecture.md, "Consensus loss") is always on:
	// every member reachable, the primary keeps serving without the store.
	from, to, primary, ttl := r.FaultFrom, r.FaultTo, r.Primary.Name, r.TTL
	r.AfterCheck(func(_ workload.Result, writes []workload.Write) {
		var direct []workload.Write
		for _, w := range writes {
			if w.Target == primary {
				direct = append(direct, w)
			}
		}
		gap, _ := ackGap(direct, from.Add(2*ttl), to)
		if gap > ttl {
			r.Violation("failsafe: %s stopped acknowledging its direct clients' writes during the cut (%s without an acknowledged write between %s and %s)",
				primary, gap.Round(time.Millisecond), from.Add(2*ttl).Format("15:04:05.000"), to.Format("15:04:05.000"))
		} else {
			r.Note("failsafe: the primary kept acknowledging its direct clients through the cut (longest gap %s)", gap.Round(time.Millisecond))
		}
		// The proxy routes to the primary on its own word while the
		// store is out of reach (docs/architecture.md, "The proxy"): its
		// clients see no more than 2×TTL without an acknowledged write.
		var proxied []workload.Write
		for _, w := range writes {
			if w.Target == "proxy" {
				proxied = append(proxied, w)
			}
		}
		if pgap, _ := ackGap(proxied, from, to); pgap > 2*ttl {
			r.Violation("the proxy's clients had no acknowledged write for %s during the cut while the primary served under the failsafe (bound 2×TTL)", pgap.Round(time.Millisecond))
		}
	})
	for _, e := range cut {
		if err := r.C.Net.Heal(e.Host); err != nil {
			return err
		}
	}
	return nil
}

// restartAll kills every agent at once and starts them all again.
func restartAll(r *Run) error {
	var pms []int
	for _, nd := range r.C.Nodes {
		r.HoldDown(nd)
		r.Undo(func() { _ = r.Restart(nd) })
		if pm, err := r.C.PostmasterPID(nd); err == nil {
			pms = append(pms, pm)
		}
	}
	r.Begin()
	var wg sync.WaitGroup
	for _, nd := range r.C.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); nd.Agent().Kill() }()
	}
	wg.Wait()
	for _, pm := range pms {
		if !pidGone(pm, 20*time.Second) {
			r.Violation("postmaster %d outlived its killed agent by 20 s", pm)
		}
	}
	r.End()
	var errs []error
	for _, nd := range r.C.Nodes {
		errs = append(errs, r.Restart(nd))
	}
	return errors.Join(errs...)
}

// rollingRestart restarts every agent in turn (SIGTERM: a clean stop),
// replicas first, waiting for the cluster to be healthy in between.
func rollingRestart(r *Run) error {
	order := append(r.C.Others(r.Primary), r.Primary)
	for _, nd := range order {
		r.HoldDown(nd)
		r.Undo(func() { _ = r.Restart(nd) })
		start := time.Now()
		if nd.Agent().Stop(90 * time.Second) {
			r.Violation("the agent of %s did not stop within 90 s of SIGTERM (killed)", nd.Name)
		}
		r.Note("%s stopped in %s", nd.Name, time.Since(start).Round(100*time.Millisecond))
		if err := r.Restart(nd); err != nil {
			return err
		}
		if _, err := r.C.WaitHealthy(healTimeout); err != nil {
			return fmt.Errorf("after restarting %s: %w", nd.Name, err)
		}
	}
	return nil
}

// flappingNetwork: every member's link flaps independently for 30 s, with
// packet loss on top: netem (loss and delay) when the kernel has it, else
// iptables' statistic match (loss only).
func flappingNetwork(r *Run) error {
	var how []string
	for _, nd := range r.C.Nodes {
		h := nd.Host
		if err := netem(h, 0.1, 50*time.Millisecond); err == nil {
			r.Undo(func() { _ = tcClear(h) })
			how = append(how, h.Name+": netem loss 10% delay 50±25ms")
			continue
		} else if nd == r.C.Nodes[0] {
			r.T.Logf("netem is not available (%v); falling back to iptables", err)
		}
		if err := iptablesLoss(h, 0.1); err == nil {
			r.Undo(func() { _ = iptablesClear(h) })
			how = append(how, h.Name+": iptables statistic 10% loss")
		} else if nd == r.C.Nodes[0] {
			r.T.Logf("iptables loss is not available either (%v): link flaps only", err)
		}
	}
	if len(how) == 0 {
		r.Note("flaps: link down/up only (neither netem nor iptables available)")
	} else if strings.Contains(how[0], "netem") {
		r.Note("flaps: link down/up + netem loss 10%% delay 50±25ms")
	} else {
		r.Note("flaps: link down/up + iptables statistic-match 10%% loss (no netem in this kernel)")
	}
	r.Begin()
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	flaps := 0
	for i, nd := range r.C.Nodes {
		h := nd.Host
		r.Undo(func() { _ = r.C.Net.Heal(h) })
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
		wg.Add(1)
		go func() {
			defer wg.Done()
			between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
			for time.Now().Before(deadline) {
				time.Sleep(between(time.Second, 4*time.Second))
				if time.Now().After(deadline) {
					break
				}
				_ = r.C.Net.Cut(h)
				mu.Lock()
				flaps++
				mu.Unlock()
				time.Sleep(between(300*time.Millisecond, 1500*time.Millisecond))
				_ = r.C.Net.Heal(h)
			}
		}()
	}
	wg.Wait()
	r.End()
	r.Note("%d link flaps", flaps)
	var errs []error
	for _, nd := range r.C.Nodes {
		errs = append(errs, r.C.Net.Heal(nd.Host))
		if len(how) > 0 {
			if strings.Contains(how[0], "netem") {
				errs = append(errs, tcClear(nd.Host))
			} else {
				errs = append(errs, iptablesClear(nd.Host))
			}
		}
	}
	return errors.Join(errs...)
}

// fillPrimaryVolume fills the primary's data volume with a file for 5×TTL,
// then deletes it.
func fillPrimaryVolume(r *Run) error {
	if r.C.Opts.VolumeBytes == 0 {
		return errors.New("the data volume scenario needs a cluster with volumes")
	}
	filler := filepath.Join(r.Primary.DataDir, "holdfast-faults-filler")
	r.Undo(func() { os.Remove(filler) })
	r.Begin()
	n, err := fill(filler)
	if err != nil {
		return err
	}
	var st syscall.Statfs_t
	_ = syscall.Statfs(r.Primary.DataDir, &st)
	r.Note("filler of %d MiB; %d bytes left", n>>20, st.Bavail*uint64(st.Bsize))
	r.Hold(5 * r.TTL)
	r.End()
	return os.Remove(filler)
}

// fill writes zeros to path until the file system is full and returns how
// many bytes it wrote.
func fill(path string) (int64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var n int64
	for len(buf) > 0 {
		k, err := f.Write(buf)
		n += int64(k)
		if errors.Is(err, syscall.ENOSPC) {
			// Fill the last partial megabyte too.
			buf = buf[:len(buf)/2]
			continue
		}
		if err != nil {
			return n, err
		}
	}
	return n, f.Sync()
}
