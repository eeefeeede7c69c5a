package cluster

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// MemberSummary is one member as the operator views (`ctl list`, the API's
// /cluster) show it: registration and live status combined, with the lag
// behind the leader.
type MemberSummary struct {
	Name   string
	Info   MemberInfo    // registration (zero if only a status exists)
	Status *MemberStatus // nil when the member does not report (down)
	Role   Role          // from the status; stopped (or witness) when down
	State  State
	Leader bool // holds the leader key
	// Sync: a synchronous standby the store's record names for the
	// current leader (it holds the acknowledged commits).
	Sync bool
	// Lag is how many bytes of WAL the member has not yet received behind
	// the leader's published position (else the last optime), on the same
	// timeline only; nil when unknown (down, another timeline, no
	// position). It bounds what a failover to the member could lose.
	Lag *int64
	// ReplayLag is the same distance measured from the WAL the member has
	// replayed (MemberStatus.Replayed): how stale its queries' answers are.
	// It is at least Lag; much more while its replay is paused or stuck.
	ReplayLag *int64
}

// Summary is the cluster as the operator views show it.
type Summary struct {
	Leader   string
	Timeline uint32
	Paused   bool
	// SyncMode is the synchronous replication mode; SyncQuorum how many of
	// the synchronous standbys hold each acknowledged commit.
	SyncMode   string
	SyncQuorum int
	Members    []MemberSummary // every registered or reporting member, see CompareMembers
}

// Summarize computes the operator's view of v. It is pure: `ctl list` and
// the API's /cluster render it, so both show the same rows, order and lag.
func Summarize(v View) Summary {
	out := Summary{Timeline: v.Timeline()}
	if v.Config != nil {
		out.Paused = v.Config.Paused
		out.SyncMode = v.Config.SyncMode()
	}
	var syncMembers []string
	if v.Sync != nil && v.Leader != nil && v.Sync.Leader == v.Leader.Name && v.Sync.Quorum > 0 {
		syncMembers, out.SyncQuorum = v.Sync.Members, v.Sync.Quorum
	}
	if v.Leader != nil {
		out.Leader = v.Leader.Name
		if st, ok := v.Statuses[v.Leader.Name]; ok && st.Role == RolePrimary && st.Position.Timeline > out.Timeline {
			out.Timeline = st.Position.Timeline
		}
	}
	leaderPos, leaderKnown := v.PrimaryPosition()
	// lag is how far p is behind the leader; the leader itself is never
	// behind.
	lag := func(name string, p Position) *int64 {
		if !leaderKnown {
			return nil
		}
		n, known := LagBytes(leaderPos, p)
		if !known {
			return nil
		}
		if name == out.Leader {
			n = 0
		}
		return &n
	}
	names := map[string]bool{}
	for n := range v.Members {
		names[n] = true
	}
	for n := range v.Statuses {
		names[n] = true
	}
	for _, n := range slices.SortedFunc(maps.Keys(names), CompareMembers) {
		info := v.Members[n]
		m := MemberSummary{Name: n, Info: info, Role: RoleStopped, State: StateStopped, Leader: out.Leader == n, Sync: slices.Contains(syncMembers, n)}
		if info.Witness {
			m.Role = RoleWitness
		}
		if st, live := v.Statuses[n]; live {
			m.Status = &st
			m.Role, m.State = st.Role, st.State
			if !info.Witness {
				m.Lag, m.ReplayLag = lag(n, st.Position), lag(n, st.Replayed())
			}
		}
		out.Members = append(out.Members, m)
	}
	return out
}

// CompareMembers orders member names by the name before the ordinal, then
// by ordinal, so pg-2 comes before pg-10 and a witness w-0 after every pg-*.
func CompareMembers(a, b string) int {
	oa, aok := Ordinal(a)
	ob, bok := Ordinal(b)
	if aok && bok {
		ba, bb := strings.TrimSuffix(a, "-"+strconv.Itoa(oa)), strings.TrimSuffix(b, "-"+strconv.Itoa(ob))
		if ba != bb {
			return strings.Compare(ba, bb)
		}
		if oa != ob {
			return oa - ob
		}
	}
	return strings.Compare(a, b)
}

// CandidateProblem says why name cannot take over ("" when it can). A
// planned switchover also needs it streaming and within maxLag.
func CandidateProblem(v View, name, leader string, maxLag int64, planned bool) string {
	info, ok := v.Members[name]
	switch {
	case !ok:
		return "no such member"
	case name == leader:
		return "it is already the primary"
	case info.Witness:
		return "it is a witness and runs no database"
	case info.NoFailover():
		return "it is tagged nofailover"
	}
	st, alive := v.Statuses[name]
	if !alive {
		return "it is not running"
	}
	if !planned {
		return ""
	}
	if !st.Streaming {
		return "it is not streaming from the primary"
	}
	if lp, ok := v.Statuses[leader]; ok {
		if st.Position.Timeline != lp.Position.Timeline {
			return "it is on another timeline than the primary"
		}
		if lag := int64(lp.Position.LSN) - int64(st.Position.LSN); lag > maxLag {
			return fmt.Sprintf("it is %d bytes behind, more than maximum_lag_on_failover %d", lag, maxLag)
		}
	}
	return ""
}

// AnyCandidate reports whether some member could take over in a planned
// switchover from leader.
func AnyCandidate(v View, leader string, maxLag int64) bool {
	for name := range v.Members {
		if CandidateProblem(v, name, leader, maxLag, true) == "" {
			return true
		}
	}
	return false
}
