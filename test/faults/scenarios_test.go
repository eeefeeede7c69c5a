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

	"github.com/holdfast/holdfast/internal/api"
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
	// Exceeds says why the scenario's unavailability may exceed the bound
	// (2×TTL + promotionAllowance), by mode: cluster.SyncOff,
	// anySynchronous for every synchronous mode, or "" for every mode. The
	// report shows it on a row over the bound; a row over the bound
	// without one is marked unexplained.
	Exceeds map[string]string
}

// anySynchronous is the Exceeds key of every synchronous mode.
const anySynchronous = "synchronous"

// exceeds is the stated reason for mode ("" if none).
func (sc Scenario) exceeds(mode string) string {
	if why, ok := sc.Exceeds[mode]; ok {
		return why
	}
	if why, ok := sc.Exceeds[anySynchronous]; ok && mode != cluster.SyncOff {
		return why
	}
	return sc.Exceeds[""]
}

// scenarios is the whole matrix, in report order.
func scenarios() []Scenario {
	// Why the flapping network outlasts the bound, in either mode.
	const flapping = "the fault lasts 30 s, three times the bound, and is not one outage but many: every member loses its link for 0.3–1.5 s every 1.3–5.5 s and 10% of its packets in between. " +
		"The store (etcd embedded in the members) loses its raft leader or its quorum again and again, the primary's failsafe round misses a member whose link is down, and the primary fences on its deadline; "
	return []Scenario{
		{Name: "kill -9 primary", Kind: kindEmbedded, CI: true, Do: killPrimary,
			What: "SIGKILL the primary's agent and postmaster together; restart the agent after 3×TTL (as systemd would)",
			Exceeds: map[string]string{anySynchronous: "in a synchronous mode a replica is promoted only if the store's synchronous record names it as holding every acknowledged commit (decide.syncEligible). " +
				"When the kill comes before the primary has recorded a synchronous standby (it records one once a standby streams from it and has caught up, e.g. seconds after the previous scenario's heal), " +
				"the record names the killed primary alone (\"the last primary … had no synchronous standby\"): no replica may be promoted, and writes resume when its agent is started again at 3×TTL and it leads again"}},
		{Name: "kill primary agent", Kind: kindEmbedded, Do: killPrimaryAgent,
			What: "SIGKILL the primary's agent only (its PostgreSQL must die with it); restart the agent after 3×TTL"},
		{Name: "SIGSTOP primary agent", Kind: kindEmbedded, CI: true, Do: stopPrimaryAgent,
			What: "freeze the primary's agent (SIGSTOP) for 2×TTL, then SIGCONT"},
		{Name: "SIGSTOP primary agent (external etcd)", Kind: kindEtcd, Do: stopPrimaryAgent,
			What: "as SIGSTOP primary agent, with the members on an external etcd: the frozen agent takes no etcd member down with it, so the failover proceeds while its PostgreSQL still runs (holdfast's answer is the watchdog, which this machine may lack)"},
		{Name: "SIGSTOP primary postmaster", Kind: kindEmbedded, Do: stopPrimaryPostmaster,
			What: "freeze the primary's postmaster process (SIGSTOP; its backends keep running) for primary_start_timeout + 2×TTL, then SIGCONT",
			Exceeds: map[string]string{"": "the open sessions keep committing while the postmaster is frozen; the agent gives a primary that accepts no new connection primary_start_timeout (10 s by default, itself longer than the bound) before it fences it, " +
				"which ends those sessions, and a replica is promoted after that"}},
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
			What: "for 30 s every member's link flaps (down 0.3–1.5 s, up 1–4 s, independently), with 10% packet loss on its network interface (netem when the kernel has it, else iptables statistic match)",
			Exceeds: map[string]string{
				"": flapping +
					"it runs again when the store is back, and the next flap may fence it again: an outage that begins during the flapping can last until it stops",
				anySynchronous: flapping +
					"besides, a strict primary acknowledges a commit only once a synchronous standby has flushed it, so a commit waits whenever the standby's link is down, and a failover needs a member the synchronous record names: " +
					"an outage that begins during the flapping can last until it stops"}},
		{Name: "primary data volume full", Kind: kindVolume, Do: fillPrimaryVolume,
			What: "fill the primary's data volume (a 512 MiB tmpfs data_dir) to the last byte for 5×TTL, then delete the filler",
			Exceeds: map[string]string{"": "the volume stays full for 5×TTL (20 s), twice the bound. holdfast has no rule for a full disk: the primary keeps the leader key as long as its PostgreSQL answers the agent, so nothing fails over; " +
				"writes fail (PostgreSQL cannot extend its files) for as long as the volume is full and succeed again as soon as the filler is deleted. A failover would not free the space; a disk-space alert is the operator's signal. " +
				"The note says whether the primary still answered a read near the end of the fill"}},
		{Name: "SIGSTOP replica agent", Kind: kindEmbedded, Do: stopReplicaAgent,
			What: "freeze (SIGSTOP) for 2×TTL the agent of the replica whose embedded etcd member is the raft leader (with it that member), then SIGCONT; the primary should keep serving"},
		{Name: "switchover to a frozen WAL receiver", Kind: kindEmbedded, Do: switchoverToFrozenReceiver,
			What: "freeze (SIGSTOP) the WAL receiver of a replica (in a synchronous mode the synchronous standby), ask the primary's API for a switchover to it, and thaw it once the request has its answer (at most 2 min)",
			Exceeds: map[string]string{
				"": "a switchover stops the primary first; the frozen candidate never confirms the final WAL, so the stop is cut short (3 s after the shutdown checkpoint), escalated, the request cancelled and the old primary started again as the primary: " +
					"writes fail from the start of its shutdown until it runs again, which on a loaded machine can take longer than a promotion",
				anySynchronous: "the frozen WAL receiver is the synchronous standby's, so from the freeze on every commit waits for a flush it does not confirm, until the harness thaws it once the switchover has its answer; " +
					"the switchover stops the primary, its stop is cut short (3 s after the shutdown checkpoint) and escalated, the request cancelled and the old primary started again: " +
					"the writes wait or fail for the whole time from the freeze to the answer plus that restart"}},
		{Name: "replica paused replay", Kind: kindEmbedded, Do: pauseReplicaReplay,
			What: "pause WAL replay on a replica (pg_wal_replay_pause(); in a synchronous mode the synchronous standby) for 4×TTL, then resume it; the replica keeps receiving WAL"},
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
	return freezeAgent(r, a, nil)
}

// freezeAgent is the fault of the agent freezes: a SIGSTOPped for 2×TTL,
// then SIGCONT; beforeThaw, if set, runs once the fault window closed,
// before the thaw.
func freezeAgent(r *Run, a *Proc, beforeThaw func()) error {
	r.Undo(func() { _ = a.Signal(syscall.SIGCONT) })
	r.Begin()
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	r.Hold(2 * r.TTL)
	r.End()
	if beforeThaw != nil {
		beforeThaw()
	}
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
	target, why := pickReplica(r, pickSync|pickRaft)
	r.Note("partitioned %s (%s)", target.Name, why)
	return partition(r, target, 4*r.TTL)
}

// Which replica a replica fault hits (pickReplica).
const (
	pickSync = 1 << iota // in a synchronous mode, the synchronous standby
	pickRaft             // the replica whose embedded etcd member is the raft leader
)

// pickReplica chooses the replica a fault hits, and says why: the first
// of what prefer asks for that applies (pickSync, then pickRaft), else the
// last replica.
func pickReplica(r *Run, prefer int) (*Node, string) {
	others := r.C.Others(r.Primary)
	if prefer&pickSync != 0 && r.Mode != cluster.SyncOff {
		if n := r.C.Node(r.C.SyncStandby(r.Primary)); n != nil {
			return n, "the synchronous standby"
		}
	}
	if prefer&pickRaft != 0 {
		if n := r.C.Node(r.C.RaftLeader()); n != nil && n != r.Primary {
			return n, "the etcd raft leader"
		}
	}
	return others[len(others)-1], "the last replica"
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
	pmBefore, _ := r.C.PostmasterPID(r.Primary)
	r.Hold(5*r.TTL - r.TTL/2)
	// What the full primary still does: answer a read, keep its postmaster.
	read := "answered a read (SELECT 1)"
	ctx, cancel := context.WithTimeout(context.Background(), r.TTL/4)
	if conn, err := pgx.Connect(ctx, r.C.DSN(r.Primary)); err != nil {
		read = "refused a read: " + err.Error()
	} else {
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			read = "refused a read: " + err.Error()
		}
		_ = conn.Close(context.Background())
	}
	cancel()
	r.Hold(r.TTL / 2)
	r.End()
	pmAfter, _ := r.C.PostmasterPID(r.Primary)
	same := "the same postmaster throughout"
	if pmAfter != pmBefore {
		same = fmt.Sprintf("its postmaster changed (pid %d, then %d)", pmBefore, pmAfter)
	}
	r.Note("near the end of the fill %s %s; %s", r.Primary.Name, read, same)
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

// stopReplicaAgent freezes the agent of the replica whose embedded etcd
// member is the raft leader (holdfast moves raft leadership away from the
// primary) for 2×TTL: the store has no raft leader until the two others
// elect one, and the primary's lease renewals wait for that. The primary
// renews again while its failsafe round waits for the frozen member
// (internal/agent failsafeObservation), so it should keep serving; the
// note says whether it did.
func stopReplicaAgent(r *Run) error {
	target, why := pickReplica(r, pickRaft)
	r.Note("froze the agent of %s (%s)", target.Name, why)
	return freezeAgent(r, target.Agent(), func() { notePrimaryServed(r, "the freeze") })
}

// notePrimaryServed adds, after the check, how long the run's primary went
// without acknowledging its direct clients during the fault, and whether
// it is still the primary.
func notePrimaryServed(r *Run, what string) {
	from, to, primary := r.FaultFrom, r.FaultTo, r.Primary.Name
	r.AfterCheck(func(_ workload.Result, writes []workload.Write) {
		var direct []workload.Write
		for _, w := range writes {
			if w.Target == primary {
				direct = append(direct, w)
			}
		}
		gap, _ := ackGap(direct, from, to)
		still := "still the primary after the heal"
		if ld, err := r.C.Leader(); err != nil || ld.Name != primary {
			still = "no longer the primary after the heal"
		}
		r.Note("the primary %s: longest gap without an acknowledged direct write during %s %s; %s", primary, what, gap.Round(time.Millisecond), still)
	})
}

// switchoverWait bounds the wait for a switchover's answer: the primary's
// API answers within its operation wait (30 s) once the request is
// recorded; the rest is slack for a loaded machine.
const switchoverWait = 2 * time.Minute

// switchoverToFrozenReceiver asks for a switchover to a replica whose WAL
// receiver is frozen: its walsender on the primary waits for
// acknowledgements that never come, which must not hold the primary's
// shutdown (and every write) until wal_sender_timeout. The receiver is
// thawed once the request has its answer.
func switchoverToFrozenReceiver(r *Run) error {
	cand, why := pickReplica(r, pickSync)
	pid, err := walReceiverPID(r.C, cand)
	if err != nil {
		return err
	}
	cl, err := api.NewClient(r.C.APIURL(r.Primary), api.ClientOptions{Timeout: switchoverWait})
	if err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	r.Undo(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	r.Begin()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return fmt.Errorf("freeze the WAL receiver %d of %s: %w", pid, cand.Name, err)
	}
	r.Event("froze the WAL receiver %d of %s; switchover to it", pid, cand.Name)
	ctx, cancel := context.WithTimeout(context.Background(), switchoverWait)
	start := time.Now()
	res, err := cl.Switchover(ctx, api.SwitchoverRequest{Leader: r.Primary.Name, Candidate: cand.Name})
	took := time.Since(start).Round(100 * time.Millisecond)
	cancel()
	outcome := res.Message
	if err != nil {
		outcome = err.Error()
	}
	r.Event("switchover answered after %s: %s", took, outcome)
	r.Note("switchover to %s (%s, WAL receiver frozen) answered after %s: %s", cand.Name, why, took, outcome)
	r.End()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("thaw the WAL receiver %d of %s: %w", pid, cand.Name, err)
	}
	return nil
}

// walReceiverPID is the pid of a member's WAL receiver, from its own
// pg_stat_wal_receiver, checked to be a child of its postmaster (so the
// signal reaches the process meant).
func walReceiverPID(c *Cluster, nd *Node) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN(nd))
	if err != nil {
		return 0, fmt.Errorf("WAL receiver of %s: %w", nd.Name, err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver").Scan(&pid); err != nil {
		return 0, fmt.Errorf("WAL receiver of %s: %w", nd.Name, err)
	}
	pm, err := c.PostmasterPID(nd)
	if err != nil {
		return 0, fmt.Errorf("WAL receiver of %s: %w", nd.Name, err)
	}
	if pp := parentPID(pid); pp != pm {
		return 0, fmt.Errorf("WAL receiver %d of %s: its parent %d is not the postmaster %d", pid, nd.Name, pp, pm)
	}
	return pid, nil
}

// parentPID reads a process's parent from /proc (0 if unknown).
func parentPID(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			var pp int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &pp)
			return pp
		}
	}
	return 0
}

// pauseReplicaReplay pauses WAL replay on a replica for 4×TTL (it keeps
// receiving and flushing WAL, so synchronous commits, which wait for the
// flush, go on) and notes the replay lag `holdfast ctl list` showed.
func pauseReplicaReplay(r *Run) error {
	target, why := pickReplica(r, pickSync)
	replay := func(fn string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, r.C.DSN(target))
		if err != nil {
			return fmt.Errorf("%s on %s: %w", fn, target.Name, err)
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "SELECT "+fn+"()"); err != nil {
			return fmt.Errorf("%s on %s: %w", fn, target.Name, err)
		}
		return nil
	}
	r.Undo(func() { _ = replay("pg_wal_replay_resume") })
	r.Begin()
	if err := replay("pg_wal_replay_pause"); err != nil {
		return err
	}
	// Watch `ctl list` (one store read each) while replay is paused.
	var maxLag int64
	seen := false
	for end := time.Now().Add(4 * r.TTL); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		l, _, err := r.C.List()
		if err != nil {
			continue
		}
		for _, m := range l.Members {
			if m.Name == target.Name && m.ReplayLagBytes != nil {
				seen = true
				maxLag = max(maxLag, *m.ReplayLagBytes)
			}
		}
	}
	r.End()
	if err := replay("pg_wal_replay_resume"); err != nil {
		return err
	}
	switch {
	case maxLag > 0:
		r.Note("paused replay on %s (%s); ctl list showed its replay lag, up to %d bytes", target.Name, why, maxLag)
	case seen:
		r.Note("paused replay on %s (%s); ctl list showed no replay lag for it", target.Name, why)
	default:
		r.Note("paused replay on %s (%s); ctl list showed no replay position for it", target.Name, why)
	}
	notePrimaryServed(r, "the pause")
	return nil
}
