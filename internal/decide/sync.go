package decide

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Synchronous replication.
//
// Two things describe who holds the acknowledged commits, and they change
// at different moments:
//
//   - P, the primary's synchronous_standby_names: every commit PostgreSQL
//     acknowledges from now on is on at least P.Quorum of P.Members.
//   - R, the store's record (cluster.SyncState): every commit acknowledged
//     so far is on the leader and on at least R.Quorum of R.Members.
//     Failover trusts R.
//
// R must stay true at every instant, whatever order the effects land in
// and wherever the primary crashes. Two rules keep it true:
//
//  1. P may be set only to a value valid for R: a commit on P.Quorum of
//     P.Members is on R.Quorum of R.Members even if every member of P
//     outside R acknowledged it (validPG).
//  2. R may change only to a record every past commit satisfies: members
//     leave R before they leave P (shrinking is always safe), and members
//     join R only after P already required them and they have flushed the
//     primary's WAL up to a point taken after P took effect (proven; see
//     safeStore).
//
// So the primary changes one of P or R per loop, shrinking R before P and
// growing P before R, and a promoted member first records itself as the
// only holder (R = {Leader: self, no members, quorum 0}), which is true the
// moment it takes over.

// SyncSet is a synchronous replication configuration: a commit waits for
// Quorum of Members. The zero value is asynchronous replication. Members
// are kept sorted.
type SyncSet struct {
	Members []string
	Quorum  int
}

// anyStandby is the synchronous_standby_names entry that matches every
// standby: strict mode's configuration when no standby is known yet, so
// that commits wait rather than go unreplicated.
const anyStandby = "*"

// blockSet is strict mode's configuration with no known standby: any
// standby's acknowledgement will do, none means commits wait.
var blockSet = SyncSet{Members: []string{anyStandby}, Quorum: 1}

func (s SyncSet) Equal(o SyncSet) bool {
	return s.Quorum == o.Quorum && slices.Equal(s.Members, o.Members)
}

// Key is a compact, comparable form ("1:pg-1,pg-2"), for Memory.
func (s SyncSet) Key() string {
	return strconv.Itoa(s.Quorum) + ":" + strings.Join(s.Members, ",")
}

func (s SyncSet) String() string {
	if s.Quorum == 0 {
		return "asynchronous"
	}
	return fmt.Sprintf("ANY %d (%s)", s.Quorum, strings.Join(s.Members, ", "))
}

// NewSyncSet returns a SyncSet with sorted, de-duplicated members.
func NewSyncSet(members []string, quorum int) SyncSet {
	m := slices.Clone(members)
	slices.Sort(m)
	m = slices.Compact(m)
	if len(m) == 0 {
		m = nil
	}
	return SyncSet{Members: m, Quorum: quorum}
}

// Replica is one of the primary's walsenders, as pg_stat_replication shows
// it.
type Replica struct {
	Name      string
	Streaming bool        // state = 'streaming': caught up, not catching up
	Flush     cluster.LSN // WAL the standby has made durable
}

// syncRecord is the store's record as this leader may rely on it: the zero
// set when the record is absent or names another leader.
func syncRecord(o Observation) (SyncSet, bool) {
	r := o.View.Sync
	if r == nil || r.Leader != o.Self.Name {
		return SyncSet{}, false
	}
	return NewSyncSet(r.Members, r.Quorum), true
}

// validPG reports whether PostgreSQL may run with p while the store says r:
// every commit acknowledged under p is on r.Quorum of r.Members even if
// all of p's members outside r acknowledged it.
func validPG(p, r SyncSet) bool {
	outside := 0
	for _, m := range p.Members {
		if !slices.Contains(r.Members, m) {
			outside++
		}
	}
	return p.Quorum-outside >= r.Quorum
}

// safeStore reports whether the record may change from r to next: every
// commit acknowledged so far is on r.Quorum of r.Members, and on every
// proven member; next must hold for all of them. (The commits acknowledged
// after the change are covered by validPG of the running configuration.)
func safeStore(r, next SyncSet, proven map[string]bool) bool {
	removed, provenBoth, provenNext := 0, 0, 0
	for _, m := range r.Members {
		if !slices.Contains(next.Members, m) {
			removed++
		}
	}
	for _, m := range next.Members {
		if !proven[m] {
			continue
		}
		provenNext++
		if slices.Contains(r.Members, m) {
			provenBoth++
		}
	}
	return provenNext+max(0, r.Quorum-removed-provenBoth) >= next.Quorum
}

// bridge is the configuration that requires every member joining r on the
// way to d, on top of r's own guarantee: valid for r by construction.
func bridge(r, d SyncSet) SyncSet {
	members := NewSyncSet(append(slices.Clone(r.Members), d.Members...), 0).Members
	joining := 0
	for _, m := range d.Members {
		if !slices.Contains(r.Members, m) {
			joining++
		}
	}
	return SyncSet{Members: members, Quorum: min(len(members), max(d.Quorum, r.Quorum+joining))}
}

// syncCandidates are the standbys that may be synchronous: registered
// database members that may be promoted (a synchronous standby that can
// never be promoted would leave nobody to fail over to) and stream from
// this primary caught up. Members already in the record come first (a
// healthy synchronous standby is not replaced), then those PostgreSQL
// already waits for, then by most WAL flushed. Without the second rule the
// choice flipped between two replicas overtaking each other under load,
// each change restarting the proof, so that no standby was recorded (and
// none could be promoted) for seconds after strict mode was turned on.
func syncCandidates(o Observation, rec SyncSet) []Replica {
	var out []Replica
	for _, r := range o.PG.Replicas {
		info, ok := o.View.Members[r.Name]
		if !ok || r.Name == o.Self.Name || info.Witness || info.NoFailover() || !r.Streaming {
			continue
		}
		out = append(out, r)
	}
	rank := func(r Replica) int {
		switch {
		case slices.Contains(rec.Members, r.Name):
			return 0
		case slices.Contains(o.PG.Sync.Members, r.Name):
			return 1
		}
		return 2
	}
	slices.SortStableFunc(out, func(a, b Replica) int {
		switch ra, rb := rank(a), rank(b); {
		case ra != rb:
			return ra - rb
		case a.Flush != b.Flush && a.Flush > b.Flush:
			return -1
		case a.Flush != b.Flush:
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// desiredSync is where the mode wants the primary to be.
func desiredSync(o Observation, rec SyncSet) SyncSet {
	s := o.Settings
	if s.SyncMode == cluster.SyncOff || s.SyncMode == "" {
		return SyncSet{}
	}
	cands := syncCandidates(o, rec)
	n := max(1, s.SyncCount)
	var names []string
	for _, c := range cands {
		names = append(names, c.Name)
	}
	switch s.SyncMode {
	case cluster.SyncQuorum:
		return NewSyncSet(names, min(n, len(names)))
	default: // on, strict
		k := min(n, len(names))
		return NewSyncSet(names[:k], k)
	}
}

// pgTarget is the configuration PostgreSQL runs for s: in strict mode a
// commit never goes without a standby, so "none" becomes "any".
func pgTarget(mode string, s SyncSet) SyncSet {
	if mode == cluster.SyncStrict && s.Quorum == 0 {
		return blockSet
	}
	return s
}

// syncMark tracks when PostgreSQL's current configuration took effect, and
// the primary's flushed WAL at a moment when it certainly had: a standby
// that has flushed up to there holds every commit acknowledged before the
// configuration applied.
func syncMark(o Observation) Memory {
	m := Memory{SyncSeen: o.PG.Sync.Key(), SyncSeenSince: o.Now}
	if o.PG.SyncUnreadable {
		m.SyncSeen = "?"
	}
	if m.SyncSeen == o.Memory.SyncSeen && o.Memory.SyncSeenSince != 0 {
		m.SyncSeenSince = o.Memory.SyncSeenSince
		m.SyncMarked, m.SyncMark = o.Memory.SyncMarked, o.Memory.SyncMark
	}
	if !m.SyncMarked && o.Now-m.SyncSeenSince >= o.Settings.SyncSettle && o.PG.FlushLSN != 0 {
		m.SyncMarked, m.SyncMark = true, o.PG.FlushLSN
	}
	return m
}

// syncStep returns the next step of the primary's synchronous replication
// (at most one change of P or R per loop, per the rules above), what to
// remember, and when to look again (0 = the next loop is soon enough).
func syncStep(o Observation) ([]Action, Memory, time.Duration) {
	mode := o.Settings.SyncMode
	mem := Memory{} // asynchronous: nothing joins, no proof to track
	if mode != cluster.SyncOff && mode != "" {
		mem = syncMark(o)
	}
	cur, ok := syncRecord(o)
	if !ok && (mode == cluster.SyncOff || mode == "") {
		// Asynchronous, and the record is not ours: failover ignores it, and
		// turning a synchronous mode on starts by replacing it (below).
		if !o.PG.SyncUnreadable && o.PG.Sync.Quorum == 0 {
			return nil, mem, 0
		}
		return []Action{{Kind: ActSetSync, Sync: SyncSet{}, Reason: "synchronous_mode off"}}, mem, o.Settings.SyncSettle
	}
	if !ok {
		// Not ours (the previous leader's, or none): this primary holds every
		// commit it acknowledged, and nobody else is known to. In strict
		// mode commits start waiting for a standby first (a freshly
		// bootstrapped primary, or strict mode just turned on).
		var acts []Action
		if mode == cluster.SyncStrict && !o.PG.SyncUnreadable && o.PG.Sync.Quorum == 0 {
			acts = append(acts, Action{Kind: ActSetSync, Sync: blockSet, Reason: "strict: no commit without a standby"})
		}
		acts = append(acts, Action{Kind: ActPutSync, Sync: SyncSet{}, Reason: "record this primary as the holder of every acknowledged commit"})
		return acts, mem, 0
	}
	p := o.PG.Sync
	d := desiredSync(o, cur)
	set := func(s SyncSet, why string) ([]Action, Memory, time.Duration) {
		return []Action{{Kind: ActSetSync, Sync: s, Reason: why}}, mem, o.Settings.SyncSettle
	}
	put := func(s SyncSet, why string) ([]Action, Memory, time.Duration) {
		return []Action{{Kind: ActPutSync, Sync: s, Reason: why}}, mem, 0
	}
	if o.PG.SyncUnreadable || !validPG(p, cur) {
		return set(pgTarget(mode, bridge(cur, d)), "synchronous_standby_names does not cover the store's record")
	}
	// Shrink the record first: members leaving, or a lower quorum.
	var keep []string
	for _, m := range cur.Members {
		if slices.Contains(d.Members, m) {
			keep = append(keep, m)
		}
	}
	removed := len(cur.Members) - len(keep)
	if shrunk := NewSyncSet(keep, max(0, min(cur.Quorum-removed, d.Quorum))); !shrunk.Equal(cur) {
		return put(shrunk, "synchronous standbys leaving: "+cur.String()+" → "+shrunk.String())
	}
	if cur.Equal(d) {
		if t := pgTarget(mode, d); !p.Equal(t) && validPG(t, cur) {
			return set(t, "synchronous standbys: "+t.String())
		}
		return nil, mem, 0
	}
	// Grow: PostgreSQL first requires the joining members, then the record
	// names them once they have proven to hold everything.
	b := pgTarget(mode, bridge(cur, d))
	if !p.Equal(b) {
		return set(b, "synchronous standbys joining: requiring "+b.String())
	}
	if !mem.SyncMarked {
		return nil, mem, max(o.Settings.SyncSettle-(o.Now-mem.SyncSeenSince), 10*time.Millisecond)
	}
	proven := map[string]bool{}
	for _, r := range o.PG.Replicas {
		if r.Flush >= mem.SyncMark {
			proven[r.Name] = true
		}
	}
	if safeStore(cur, d, proven) && validPG(p, d) {
		return put(d, "synchronous standbys joined: "+d.String())
	}
	// Some joining members have not caught up: record those that have.
	members := slices.Clone(cur.Members)
	for _, m := range d.Members {
		if proven[m] {
			members = append(members, m)
		}
	}
	for q := d.Quorum; q > cur.Quorum; q-- {
		next := NewSyncSet(members, min(q, len(members)))
		if !next.Equal(cur) && safeStore(cur, next, proven) && validPG(p, next) {
			return put(next, "synchronous standbys partly joined: "+next.String())
		}
	}
	return nil, mem, o.Settings.LoopInterval
}

// syncEligible decides whether this member may be promoted automatically
// in a synchronous mode: only if the store's record proves it holds every
// acknowledged commit.
func syncEligible(o Observation) (bool, string) {
	r := o.View.Sync
	if r == nil {
		return false, "synchronous mode " + o.Settings.SyncMode + ": the store has no record of who holds the acknowledged commits"
	}
	if r.Leader == o.Self.Name {
		return true, "this member was the primary the synchronous record names"
	}
	if !slices.Contains(r.Members, o.Self.Name) {
		if r.Quorum == 0 {
			return false, fmt.Sprintf("synchronous mode %s: the last primary %s had no synchronous standby, so only it is known to hold every acknowledged commit", o.Settings.SyncMode, r.Leader)
		}
		return false, fmt.Sprintf("not a synchronous standby of %s (synchronous: %s)", r.Leader, SyncSet{Members: r.Members, Quorum: r.Quorum})
	}
	if r.Quorum == 0 {
		return false, fmt.Sprintf("not yet a proven synchronous standby of %s", r.Leader)
	}
	// ANY q of n: any n-q+1 of them include one that has each commit; the
	// most advanced of those has them all.
	need := len(r.Members) - r.Quorum + 1
	seen := 0
	me := o.PG.Position
	for _, m := range r.Members {
		if m == o.Self.Name {
			seen++
			continue
		}
		st, ok := o.View.Statuses[m]
		if !ok || st.Position.LSN == 0 {
			continue
		}
		if me.Less(st.Position) {
			return false, fmt.Sprintf("synchronous standby %s has more recent WAL", m)
		}
		seen++
	}
	if seen < need {
		return false, fmt.Sprintf("quorum: need the positions of %d of the synchronous standbys %s to prove this member holds every acknowledged commit, have %d", need, strings.Join(r.Members, ", "), seen)
	}
	return true, "holds every acknowledged commit (synchronous standby)"
}
