package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/agent/agenttest"
	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/pg"
)

// Scenario tests: real agents (their Step: observe → decide → execute →
// report) over the in-memory store and databases of package agenttest, on
// one manual clock, stepped deterministically as Run would wake them (each
// at its NextWake). The DESIGN.md invariants are checked after every step:
// at most one writable member; a writable member holds the leader key
// under a live lease (or serves under the failsafe while nobody else holds
// it); no PostgreSQL becomes writable without the key (checked at the
// moment it would: agenttest.Net.BeforeWritable).

var (
	_ Database = (*agenttest.DB)(nil)
	_ Store    = (*agenttest.Store)(nil)
)

type scenario struct {
	t      testing.TB
	clock  *agenttest.Clock
	store  *agenttest.StoreCluster
	net    *agenttest.Net
	cfg    cluster.Config
	margin time.Duration
	ms     []*smember
	log    *lockedBuffer

	mu         sync.Mutex // guards what the Net's hooks write
	violations []string
	fencedAt   map[string]time.Duration

	writes   bool
	pending  []pendingWrite
	acked    []string
	isolated map[string]bool // cut from the other members' APIs too

	// operatorMovesForeign: a Fatal for a directory of another cluster
	// (an abandoned bootstrap) is answered as an operator would, by moving
	// the directory away and starting the agent again (the simulation).
	operatorMovesForeign bool
	operatorWipes        int
	// failsafeAcks counts commits acknowledged under the failsafe.
	failsafeAcks int
	steps        int            // agent steps taken
	onStep       func(*smember) // called after each step, when set
	// wiped: members whose PostgreSQL may stay writable without a key
	// until their first step after the store lost everything under them.
	wiped map[string]bool
}

// maxWaitingCommits is how many commits may wait for their synchronous
// standbys on one primary: the clients that wait send nothing new.
const maxWaitingCommits = 4

// pendingWrite is a commit waiting for its synchronous standbys.
type pendingWrite struct{ tok, primary string }

type smember struct {
	name  string
	a     *Agent
	st    *agenttest.Store
	db    *agenttest.DB
	alive bool
	// frozen: the agent is stopped (SIGSTOP) and not stepped; calls to its
	// API last until the caller gives up.
	frozen bool
	due    time.Duration
	// boot, when set, is the agent's Options.Bootstrapper.
	boot Bootstrapper
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// logKeep bounds the agents' log kept for a failure message.
const logKeep = 256 << 10

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 2*logKeep {
		tail := append([]byte(nil), l.b.Bytes()[l.b.Len()-logKeep:]...)
		l.b.Reset()
		l.b.Write(tail)
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(l.b.String()), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func newScenario(t testing.TB, names ...string) *scenario { return newScenarioWith(t, nil, names...) }

// newServingScenario is a three-member cluster converged, its primary
// (old, p) taking writes for two seconds: where the fault tests start.
func newServingScenario(t testing.TB) (s *scenario, old string, p *smember) {
	s = newScenario(t, names3...)
	old = s.runUntilConverged(30 * time.Second)
	s.writes = true
	s.runFor(2 * time.Second)
	return s, old, s.member(old)
}

// newScenarioWith is newScenario with the cluster's configuration changed
// by configure first.
func newScenarioWith(t testing.TB, configure func(*cluster.Config), names ...string) *scenario {
	s := &scenario{t: t, clock: agenttest.NewClock(), net: agenttest.NewNet(), margin: time.Second, log: &lockedBuffer{},
		fencedAt: map[string]time.Duration{}, isolated: map[string]bool{}, wiped: map[string]bool{},
		cfg: cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: 1 << 20, PrimaryStartTimeout: 10 * time.Second}}
	if configure != nil {
		configure(&s.cfg)
	}
	s.store = agenttest.NewStoreCluster(s.clock, s.cfg.TTL)
	s.net.BeforeWritable = func(name string) error {
		if !s.store.LeaderHolds(name) {
			s.violate("%s's PostgreSQL was about to become writable without the leader key (view: %+v)", name, s.store.View().Leader)
			return errors.New("no leader key (test invariant)")
		}
		return nil
	}
	s.store.OnRelease = func(name string) {
		if s.net.DB(name).Running() {
			s.violate("%s released the leader key while its PostgreSQL still runs", name)
		}
	}
	s.net.OnFence = func(name string, _ time.Duration) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.fencedAt[name]; !ok {
			s.fencedAt[name] = s.clock.Now()
		}
	}
	for _, n := range names {
		m := &smember{name: n, st: s.store.Member(n), db: s.net.DB(n)}
		s.ms = append(s.ms, m)
		s.start(m)
	}
	return s
}

// start runs a fresh agent for m (a new process: its memory and its store
// session are gone, its data directory and store records are not).
func (s *scenario) start(m *smember) {
	m.st = s.store.Member(m.name)
	m.a = New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: m.name, Host: m.name, Port: 5432, APIURL: "test://" + m.name},
		Defaults: s.cfg, FenceMargin: s.margin, DB: m.db, Store: m.st, Clock: s.clock.Since(), Wall: s.clock.Wall,
		Peers: scenarioPeers{s}, Bootstrapper: m.boot,
		Logger: slog.New(slog.NewTextHandler(s.log, &slog.HandlerOptions{Level: slog.LevelInfo})).With("member", m.name)})
	m.alive, m.due = true, s.clock.Now()
}

// scenarioPeers calls the other agents' API backends directly.
type scenarioPeers struct{ s *scenario }

func (p scenarioPeers) Failsafe(ctx context.Context, to cluster.MemberInfo, leader string) error {
	m := p.s.member(to.Name)
	p.s.mu.Lock()
	cut := p.s.isolated[leader] || p.s.isolated[to.Name]
	p.s.mu.Unlock()
	if m == nil || !m.alive || cut {
		return fmt.Errorf("failsafe: %s unreachable", to.Name)
	}
	if m.frozen {
		if d, ok := ctx.Deadline(); ok {
			p.s.clock.Advance(time.Until(d))
		}
		return fmt.Errorf("failsafe: %s did not answer: %w", to.Name, context.DeadlineExceeded)
	}
	_, err := m.a.Backend().Failsafe(ctx, api.FailsafeRequest{Leader: leader})
	return err
}

// other is the first member that is not name (a replica of primary name).
func (s *scenario) other(name string) *smember {
	for _, m := range s.ms {
		if m.name != name {
			return m
		}
	}
	s.t.Fatalf("no member besides %s", name)
	return nil
}

func (s *scenario) member(name string) *smember {
	for _, m := range s.ms {
		if m.name == name {
			return m
		}
	}
	return nil
}

func (s *scenario) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.violations = append(s.violations, fmt.Sprintf("at %s: ", s.clock.Now())+fmt.Sprintf(format, args...))
}

func (s *scenario) fail(format string, args ...any) {
	s.t.Helper()
	var b strings.Builder
	for _, m := range s.ms {
		fmt.Fprintf(&b, "  alive=%v %s\n", m.alive, m.db)
	}
	s.t.Fatalf("%s\nstore: %+v\nmembers:\n%s--- agent log (tail) ---\n%s", fmt.Sprintf(format, args...), s.store.View().Leader, b.String(), s.log.tail(60))
}

// failsafeUntil is when m's failsafe promises end, on its own clock.
func (m *smember) inFailsafe() bool { return m.a.memory.FailsafeUntil > m.a.clock() }

// acknowledge releases the commits whose synchronous standbys (as the
// primary's synchronous_standby_names counts them, like PostgreSQL's
// walsenders) hold them. Only a primary holding a live leader key, or
// serving under the failsafe, acknowledges; a commit whose primary
// stopped stays unacknowledged (its client saw an error). In a
// synchronous mode no acknowledged commit may then be missing from a
// writable leader, and in strict mode none is acknowledged without a
// standby copy.
func (s *scenario) acknowledge() {
	if len(s.pending) == 0 {
		return
	}
	has := map[string]map[string]bool{} // member -> its WAL tokens, read once
	holds := func(m *smember, tok string) bool {
		if has[m.name] == nil {
			has[m.name] = map[string]bool{}
			for _, t := range m.db.WAL() {
				has[m.name][t] = true
			}
		}
		return has[m.name][tok]
	}
	var still []pendingWrite
	for _, w := range s.pending {
		p := s.member(w.primary)
		if !p.db.Writable() || !holds(p, w.tok) {
			continue
		}
		byKey := s.store.LeaderHolds(p.name)
		if !byKey && !(p.alive && p.inFailsafe()) {
			continue
		}
		members, quorum, _ := pg.ParseSyncStandbys(p.db.SyncStandbys())
		copies := 0
		for _, r := range s.ms {
			up, streaming := r.db.Upstream()
			if r != p && up == p.name && streaming && holds(r, w.tok) && (slices.Contains(members, r.name) || slices.Contains(members, "*")) {
				copies++
			}
		}
		if copies < quorum {
			still = append(still, w)
			continue
		}
		if s.cfg.SyncMode() == cluster.SyncStrict && copies == 0 {
			if sy := s.store.View().Sync; sy != nil && sy.Leader == p.name {
				s.violate("strict: %s acknowledged %s with no standby copy (synchronous_standby_names %q)", p.name, w.tok, p.db.SyncStandbys())
			}
		}
		s.acked = append(s.acked, w.tok)
		if !byKey {
			s.failsafeAcks++
		}
	}
	s.pending = still
	if m := s.cfg.SyncMode(); m != cluster.SyncOff {
		if l := s.store.View().Leader; l != nil && s.member(l.Name).db.Writable() {
			if lost := s.lostWrites(l.Name); len(lost) > 0 {
				s.violate("synchronous mode %s: %d acknowledged writes missing from the primary %s: %v", m, len(lost), l.Name, lost)
			}
		}
	}
}

// check verifies the invariants at this instant.
func (s *scenario) check(after string) {
	var writers []string
	for _, m := range s.ms {
		if !m.db.Writable() {
			continue
		}
		writers = append(writers, m.name)
		if s.store.LeaderHolds(m.name) || s.wiped[m.name] {
			continue
		}
		if l := s.store.View().Leader; m.alive && m.inFailsafe() && l == nil {
			continue // serving under the failsafe; nobody else holds the key
		}
		s.violate("after %s: %s is writable without holding the leader key under a live lease (key: %+v)", after, m.name, s.store.View().Leader)
	}
	if len(writers) > 1 {
		s.violate("after %s: more than one writable member: %v", after, writers)
	}
}

// step runs the agent due first (as Run would wake it), then replicates,
// writes and checks.
func (s *scenario) step() {
	s.t.Helper()
	var next *smember
	for _, m := range s.ms {
		if m.alive && !m.frozen && (next == nil || m.due < next.due) {
			next = m
		}
	}
	if next == nil {
		s.fail("no member alive")
	}
	s.clock.Set(next.due)
	s.store.Expire()
	s.check("time passed")
	if err := next.a.Step(context.Background()); err != nil {
		if !s.operatorMovesForeign || !errors.Is(err, ErrFatal) || !strings.Contains(err.Error(), "another PostgreSQL cluster") {
			s.fail("%s: step: %v", next.name, err)
		}
		// A member that crashed between initdb and finishing the
		// bootstrap keeps a directory of a cluster that never came to be;
		// by design it stops, and the operator moves the directory away.
		next.a.shutdownAfterFatal()
		next.db.Crash()
		if _, err := next.db.MoveAside("operator"); err != nil {
			s.fail("%s: move aside: %v", next.name, err)
		}
		s.operatorWipes++
		s.start(next)
	}
	delete(s.wiped, next.name)
	s.check(next.name + "'s step")
	s.net.Replicate()
	if s.writes {
		for _, m := range s.ms {
			// A few clients: a primary whose commits wait for standbys
			// gets no new ones from them meanwhile.
			waiting := 0
			for _, w := range s.pending {
				if w.primary == m.name {
					waiting++
				}
			}
			if waiting >= maxWaitingCommits {
				continue
			}
			if tok := m.db.Write(); tok != "" {
				s.pending = append(s.pending, pendingWrite{tok: tok, primary: m.name})
			}
		}
	}
	s.acknowledge()
	s.check("replication")
	next.due = s.clock.Now() + next.a.NextWake()
	s.steps++
	if s.onStep != nil {
		s.onStep(next)
	}
	s.mu.Lock()
	v := slices.Clone(s.violations)
	s.mu.Unlock()
	if len(v) > 0 {
		s.fail("invariant violated:\n%s", strings.Join(v, "\n"))
	}
}

// runFor steps every agent for d of clock time.
func (s *scenario) runFor(d time.Duration) {
	s.t.Helper()
	end := s.clock.Now() + d
	for {
		due := end + 1
		for _, m := range s.ms {
			if m.alive && !m.frozen && m.due < due {
				due = m.due
			}
		}
		if due > end {
			s.clock.Set(end)
			return
		}
		s.step()
	}
}

// converged: one writable leader holding the key, every other live member
// streaming from it.
func (s *scenario) converged() (string, bool) {
	l := s.store.View().Leader
	if l == nil || !s.store.LeaderHolds(l.Name) || !s.member(l.Name).db.Writable() {
		return "", false
	}
	for _, m := range s.ms {
		if m.name == l.Name || !m.alive {
			continue
		}
		if up, streaming := m.db.Upstream(); up != l.Name || !streaming {
			return "", false
		}
	}
	return l.Name, true
}

// runUntilConverged steps until converged, for at most d of clock time,
// and returns the leader.
func (s *scenario) runUntilConverged(d time.Duration) string {
	s.t.Helper()
	end := s.clock.Now() + d
	for s.clock.Now() <= end {
		if l, ok := s.converged(); ok {
			return l
		}
		s.step()
	}
	s.fail("not converged within %s", d)
	return ""
}

// kill stops m's agent and crashes its PostgreSQL (kill -9 of both).
func (s *scenario) kill(m *smember) {
	m.alive = false
	m.db.Crash()
}

func (s *scenario) lostWrites(leader string) []string {
	have := map[string]bool{}
	for _, tok := range s.member(leader).db.WAL() {
		have[tok] = true
	}
	var lost []string
	for _, tok := range s.acked {
		if !have[tok] {
			lost = append(lost, tok)
		}
	}
	return lost
}

func (s *scenario) promotions() int {
	n := 0
	for _, m := range s.ms {
		p, _, _, _ := m.db.Counts()
		n += p
	}
	return n
}

var names3 = []string{"pg-0", "pg-1", "pg-2"}

// Three empty members bootstrap one cluster: one initdb, two clones, one
// primary holding the key, two replicas streaming from it.
func TestScenarioBootstrap(t *testing.T) {
	s := newScenario(t, names3...)
	leader := s.runUntilConverged(30 * time.Second)
	clones := 0
	for _, m := range s.ms {
		_, _, _, c := m.db.Counts()
		clones += c
	}
	if clones != 2 {
		t.Errorf("%d clones, want 2", clones)
	}
	v := s.store.View()
	if v.Init.SystemID == "" || v.Config == nil || v.Optime == nil || v.Optime.Leader != leader {
		t.Errorf("bootstrap left the store with init %+v, config %v, optime %+v", v.Init, v.Config, v.Optime)
	}
	if p := s.promotions(); p != 0 {
		t.Errorf("%d promotions during a bootstrap", p)
	}
}

// The primary dies (agent and PostgreSQL); of the two replicas, the one
// that received more WAL is promoted — exactly one promotion — and the
// other follows it.
func TestScenarioPrimaryLossPromotesTheMostWAL(t *testing.T) {
	s := newScenario(t, names3...)
	old := s.runUntilConverged(30 * time.Second)
	s.writes = true
	s.runFor(3 * time.Second)
	var ahead, behind *smember
	for _, m := range s.ms {
		switch {
		case m.name == old:
		case behind == nil:
			behind = m
		default:
			ahead = m
		}
	}
	behind.db.SetReceiverPaused(true)
	s.runFor(3 * time.Second)
	s.writes = false
	s.net.Replicate()
	if !behind.db.Position().Less(ahead.db.Position()) {
		t.Fatalf("setup: %s at %v is not behind %s at %v", behind.name, behind.db.Position(), ahead.name, ahead.db.Position())
	}
	s.runFor(time.Second) // both replicas publish their positions
	s.kill(s.member(old))
	behind.db.SetReceiverPaused(false)
	leader := s.runUntilConverged(30 * time.Second)
	if leader != ahead.name {
		s.fail("%s was promoted, want %s, which has more WAL", leader, ahead.name)
	}
	if p := s.promotions(); p != 1 {
		s.fail("%d promotions, want exactly 1", p)
	}
}

// Invariant 3: a primary cut off from the store and from the other
// members fences before its lease can expire; only then is another member
// promoted. Healed, it rejoins as a replica.
func TestScenarioStoreUnreachablePrimaryFencesBeforeLeaseExpiry(t *testing.T) {
	s, old, p := newServingScenario(t)
	s.store.Cut(old, true)
	s.mu.Lock()
	s.isolated[old] = true
	s.mu.Unlock()
	expiry, ok := s.store.LeaseExpiry(p.st.LeaseID())
	if !ok {
		t.Fatal("setup: the primary's lease is gone already")
	}
	s.runFor(3 * s.cfg.TTL)
	s.mu.Lock()
	fenced, ok := s.fencedAt[old]
	s.mu.Unlock()
	if !ok {
		s.fail("the primary cut off from the store never fenced")
	}
	if fenced >= expiry {
		s.fail("the primary fenced at %s, its lease could expire at %s", fenced, expiry)
	}
	t.Logf("fenced %s before the lease could expire (fence margin %s)", expiry-fenced, s.margin)
	l := s.store.View().Leader
	if l == nil || l.Name == old {
		s.fail("nobody took over from the fenced primary (leader %+v)", l)
	}
	s.store.Cut(old, false)
	s.mu.Lock()
	s.isolated[old] = false
	s.mu.Unlock()
	s.writes = false
	if leader := s.runUntilConverged(30 * time.Second); leader == old {
		s.fail("the fenced primary leads again")
	}
}

// A planned switchover to a named candidate under writes: the candidate
// takes over, exactly one promotion, no acknowledged write lost, and the
// old primary rejoins without a rewind or a clone.
func TestScenarioSwitchover(t *testing.T) {
	s := newScenario(t, names3...)
	old := s.runUntilConverged(30 * time.Second)
	s.writes = true
	s.runFor(3 * time.Second)
	candidate := s.other(old).name
	if !s.store.Request(cluster.Switchover{Kind: cluster.KindSwitchover, Leader: old, Candidate: candidate, RequestedAt: s.clock.Wall()}) {
		t.Fatal("setup: a request is pending already")
	}
	var rewinds0, clones0 int
	_, _, rewinds0, clones0 = s.member(old).db.Counts()
	end := s.clock.Now() + 30*time.Second
	for {
		if l, ok := s.converged(); ok && l != old && s.store.View().Switchover == nil {
			break
		}
		if s.clock.Now() > end {
			s.fail("the switchover to %s did not complete", candidate)
		}
		s.step()
	}
	if l := s.store.View().Leader.Name; l != candidate {
		s.fail("%s took over, not the candidate %s", l, candidate)
	}
	if p := s.promotions(); p != 1 {
		s.fail("%d promotions, want 1", p)
	}
	if lost := s.lostWrites(candidate); len(lost) > 0 {
		s.fail("acknowledged writes lost in the switchover: %v", lost)
	}
	if _, _, r, c := s.member(old).db.Counts(); r != rewinds0 || c != clones0 {
		s.fail("the old primary was rewound (%d) or cloned (%d) after a clean switchover", r-rewinds0, c-clones0)
	}
	if len(s.acked) == 0 {
		t.Fatal("no write was acknowledged: the scenario tests nothing")
	}
}

// The store loses its quorum for three lease TTLs: every member still
// reaches the others, so the primary keeps serving under the failsafe past
// its lease deadline, nobody else becomes writable, and when the store is
// back the same primary leads without a fence.
func TestScenarioFailsafeRound(t *testing.T) {
	s, old, p := newServingScenario(t)
	s.store.SetDown(true)
	steps0 := s.steps
	deadline := p.a.lease.Deadline // on p's clock
	s.runFor(3 * s.cfg.TTL)
	if !p.db.Writable() {
		s.fail("the primary stopped serving under the failsafe")
	}
	if now := p.a.clock(); now <= deadline {
		s.fail("setup: the outage (%s) did not outlast the lease (deadline %s)", now, deadline)
	}
	ackedDuring := len(s.acked)
	t.Logf("%d agent steps in %s of outage", s.steps-steps0, 3*s.cfg.TTL)
	s.store.SetDown(false)
	if leader := s.runUntilConverged(30 * time.Second); leader != old {
		s.fail("%s leads after the outage, want %s, which served under the failsafe", leader, old)
	}
	if _, f, _, _ := p.db.Counts(); f != 0 {
		s.fail("the primary was fenced %d times", f)
	}
	if ackedDuring == 0 {
		t.Fatal("no write acknowledged: the scenario tests nothing")
	}
}

// As TestScenarioFailsafeRound, but each store call lasts until its
// timeout, as an etcd client's does without a quorum: the primary's
// renewed fence point must be published before the one it replaces runs
// out, so the API (and the proxy asking it) never sees a primary that may
// not accept writes while it serves under the failsafe. The store calls
// used to run until the fence point, the round renewing the promises only
// after it, and the new fence point was published after the status write's
// timeout: a second without a writable primary at every round.
func TestScenarioFailsafeHangingStoreKeepsWritable(t *testing.T) {
	s, old, p := newServingScenario(t)
	type publish struct {
		at    time.Time
		until time.Time
	}
	var pubs []publish
	p.a.o.OnState = func(m api.MemberState) {
		pubs = append(pubs, publish{at: m.LoopHeartbeat, until: m.LoopHeartbeat.Add(m.WritableFor)})
	}
	s.store.SetHang(old, true)
	s.store.SetDown(true)
	deadline := p.a.lease.Deadline
	s.runFor(4 * s.cfg.TTL)
	if !p.db.Writable() {
		s.fail("the primary stopped serving under the failsafe")
	}
	if now := p.a.clock(); now <= deadline {
		s.fail("setup: the outage (%s) did not outlast the lease (deadline %s)", now, deadline)
	}
	if len(pubs) < 4 {
		s.fail("setup: only %d states published during the outage", len(pubs))
	}
	for i, pub := range pubs {
		if !pub.until.After(pub.at) {
			s.fail("state %d (at %s) published no writable time while the primary served", i, pub.at.Sub(agenttest.Epoch))
		}
		if i > 0 && !pub.at.Before(pubs[i-1].until) {
			s.fail("state %d published at %s, after the last one's writable time ran out at %s: the API saw no writable primary for %s",
				i, pub.at.Sub(agenttest.Epoch), pubs[i-1].until.Sub(agenttest.Epoch), pub.at.Sub(pubs[i-1].until))
		}
	}
	s.store.SetDown(false)
	if leader := s.runUntilConverged(30 * time.Second); leader != old {
		s.fail("%s leads after the outage, want %s, which served under the failsafe", leader, old)
	}
	if _, f, _, _ := p.db.Counts(); f != 0 {
		s.fail("the primary was fenced %d times", f)
	}
}

// A replica's agent freezes while its embedded etcd member is the raft
// leader: the store has no leader until the others elect one, and the
// failsafe round cannot reach the frozen member. The election ends after
// the primary's loop gave up on its renewal but before its fence point,
// while the round waits for the frozen member: the primary renews its
// lease during the round and keeps serving. It used to fence (on a loaded
// machine the election took 1.2–1.8 s; the round ended at the fence point
// and the decision saw only the renewal that had failed before it).
func TestScenarioStoreBackDuringFailsafeRoundKeepsPrimary(t *testing.T) {
	s, old, p := newServingScenario(t)
	frozen := s.other(old)
	frozen.frozen = true
	s.store.SetHang(old, true)
	// The primary's fence point, on the scenario's clock.
	fencePoint := p.a.lease.Deadline - s.margin + s.clock.Now() - p.a.clock()
	s.store.SetDownUntil(fencePoint - 300*time.Millisecond)
	s.runFor(2 * s.cfg.TTL)
	if _, f, _, _ := p.db.Counts(); f != 0 {
		s.fail("the primary was fenced %d times though the store was back before its fence point", f)
	}
	if !p.db.Writable() {
		s.fail("the primary no longer accepts writes")
	}
	if l := s.store.View().Leader; l == nil || l.Name != old {
		s.fail("leader after the election: %+v, want %s", l, old)
	}
	frozen.frozen = false
	if leader := s.runUntilConverged(30 * time.Second); leader != old {
		s.fail("%s leads after the thaw, want %s", leader, old)
	}
}

// The failsafe needs every member: with one replica unreachable, the
// primary cut off from the store fences before its lease can expire.
func TestScenarioFailsafeIncompleteFences(t *testing.T) {
	s := newScenario(t, names3...)
	old := s.runUntilConverged(30 * time.Second)
	other := s.other(old).name
	expiry, _ := s.store.LeaseExpiry(s.member(old).st.LeaseID())
	s.store.SetDown(true)
	s.mu.Lock()
	s.isolated[other] = true
	s.mu.Unlock()
	// While down, no lease expires in the store; the primary must still
	// fence on its own deadline, the one the store would enforce.
	expiry, _ = s.store.LeaseExpiry(s.member(old).st.LeaseID())
	s.runFor(2 * s.cfg.TTL)
	s.mu.Lock()
	fenced, ok := s.fencedAt[old]
	s.mu.Unlock()
	if !ok || fenced >= expiry {
		s.fail("the primary fenced at %s (ok %v); its lease could expire at %s", fenced, ok, expiry)
	}
	s.store.SetDown(false)
	s.mu.Lock()
	s.isolated[other] = false
	s.mu.Unlock()
	s.runUntilConverged(30 * time.Second)
}

// The clean stop of the primary's agent: PostgreSQL stops first, the final
// checkpoint is published, the key released — and a replica takes over
// well within a lease TTL, losing no acknowledged write.
func TestScenarioPrimaryShutdownHandsOver(t *testing.T) {
	s := newScenario(t, names3...)
	old := s.runUntilConverged(30 * time.Second)
	s.writes = true
	// Past the startup grace (3 TTLs), in which the replicas would wait
	// for the stopped primary to report.
	s.runFor(3*s.cfg.TTL + time.Second)
	s.writes = false
	p := s.member(old)
	if err := p.a.shutdown(); err != nil {
		t.Fatal(err)
	}
	p.alive = false
	s.mu.Lock()
	v := slices.Clone(s.violations)
	s.mu.Unlock()
	if len(v) > 0 {
		s.fail("the clean stop: %s", strings.Join(v, "\n"))
	}
	if p.db.Running() {
		s.fail("PostgreSQL still runs after the clean stop")
	}
	view := s.store.View()
	if view.Leader != nil {
		s.fail("the leader key was not released: %+v", view.Leader)
	}
	ds, _ := p.db.Inspect()
	ckpt := cluster.Position{Timeline: ds.Control.CheckpointTimeline, LSN: ds.Control.CheckpointLSN}
	if ds.Control.State != "shut down" || view.Optime == nil || view.Optime.Position != ckpt {
		s.fail("published final position %+v, want the shutdown checkpoint %v (state %q)", view.Optime, ckpt, ds.Control.State)
	}
	start := s.clock.Now()
	leader := s.runUntilConverged(30 * time.Second)
	if took := s.clock.Now() - start; took >= s.cfg.TTL {
		s.fail("%s took over %s after the clean stop: no faster than waiting for the lease", leader, took)
	}
	if lost := s.lostWrites(leader); len(lost) > 0 {
		s.fail("acknowledged writes lost: %v", lost)
	}
}

// flakyRestore stands in for backup.Bootstrap: it fails (leaving the data
// directory empty) the first fails times, then builds the directory.
type flakyRestore struct {
	db           *agenttest.DB
	fails, calls int
}

func (f *flakyRestore) Initdb(ctx context.Context) error {
	f.calls++
	if f.calls <= f.fails {
		return errors.New("restore: the archive does not reach the target")
	}
	return f.db.Initdb(ctx)
}

// With a Bootstrapper (bootstrap.restore), the member that wins the
// bootstrap builds the cluster with it, not with initdb; a failed attempt
// gives the claim back and the bootstrap is tried again, as after a failed
// initdb; the others clone from the result.
func TestScenarioBootstrapRestoreRetries(t *testing.T) {
	s := newScenario(t, names3...)
	boots := map[string]*flakyRestore{}
	for _, m := range s.ms {
		boots[m.name] = &flakyRestore{db: m.db, fails: 2}
		m.boot = boots[m.name]
		s.start(m)
	}
	leader := s.runUntilConverged(60 * time.Second)
	calls := 0
	for name, b := range boots {
		calls += b.calls
		if name != leader && b.calls > b.fails {
			t.Errorf("%s (not the leader) built the cluster too", name)
		}
	}
	if calls < 3 {
		t.Errorf("%d bootstrap attempts, want the 2 failures and a success", calls)
	}
	if b := boots[leader]; b.calls <= b.fails {
		t.Errorf("the leader %s never built the cluster by its bootstrapper (%d calls)", leader, b.calls)
	}
	clones := 0
	for _, m := range s.ms {
		_, _, _, c := m.db.Counts()
		clones += c
	}
	if clones != 2 {
		t.Errorf("%d clones, want 2", clones)
	}
	if !strings.Contains(s.log.tail(1<<20), "bootstrap by restore from a backup: restore: the archive does not reach the target") {
		t.Errorf("the failure is not logged:\n%s", s.log.tail(4000))
	}
}

// A PostgreSQL that dies at each start (a lock file it refuses, a bad
// setting) is started again each loop; the agent logs why each postmaster
// exited, once per postmaster, so the reason is not left in a log file on
// the volume. A server that runs, or stops when asked, is not reported.
func TestScenarioPostgresDiesAtStartSaysWhy(t *testing.T) {
	s, old, _ := newServingScenario(t)
	r := s.other(old)
	// exits counts the logged exits of r's postmasters by reason.
	exits := func() (crashes, refused int) {
		pids := map[string]bool{}
		for _, line := range strings.Split(s.log.tail(10000), "\n") {
			if !strings.Contains(line, "member="+r.name) || !strings.Contains(line, `msg="PostgreSQL exited"`) {
				continue
			}
			_, pid, _ := strings.Cut(line, "pid=")
			pid, _, _ = strings.Cut(pid, " ")
			if pids[pid] {
				s.fail("the exit of postmaster %s was logged twice", pid)
			}
			pids[pid] = true
			switch {
			case strings.Contains(line, "signal: killed"):
				crashes++
			case strings.Contains(line, "already exists"):
				refused++
			default:
				s.fail("an exit logged that did not happen: %s", line)
			}
		}
		return crashes, refused
	}
	r.db.SetDiesAtStart(`FATAL:  lock file "postmaster.pid" already exists`)
	r.db.Crash()
	s.runFor(5 * time.Second)
	if crashes, refused := exits(); crashes != 1 || refused < 3 {
		s.fail("logged the crash %d times (want 1) and %d exits at start (want one per loop, ≥3)", crashes, refused)
	}
	r.db.SetDiesAtStart("")
	s.runUntilConverged(30 * time.Second)
	crashes, refused := exits()
	s.runFor(5 * time.Second)
	if c, n := exits(); c != crashes || n != refused {
		s.fail("a running server's exit was logged")
	}
	if r.db.PID() == 0 {
		s.fail("%s does not run PostgreSQL once it starts again", r.name)
	}
}
