package cluster

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// FailoverRisk is what a forced failover to Candidate may lose, judged
// from one read of the store: how far the candidate is behind the last
// known primary position (the optime, which survives the primary) and
// behind the most advanced member that reports a position. A forced
// failover skips the position comparison of the automatic race, so these
// numbers are the operator's only warning: once the candidate promotes,
// whatever the old primary wrote past the candidate's position is discarded
// by its rewind (see Discard).
type FailoverRisk struct {
	Candidate string
	// CandidatePos is the candidate's reported position; zero LSN when it
	// reports none.
	CandidatePos Position
	// Last is the last known primary position, nil when none was published.
	Last *Optime
	// BehindLast is how many bytes of WAL the candidate lacks of Last (0
	// when it is not behind).
	BehindLast int64
	// MostAdvanced is the reporting database member with the highest
	// position ("" when none reports one); MostAdvancedPos its position.
	MostAdvanced    string
	MostAdvancedPos Position
	// BehindMost is how many bytes the candidate is behind MostAdvanced.
	BehindMost int64
	// Diverged: the candidate is on an older timeline than a reference
	// position yet not below it in LSN, so it holds WAL the cluster
	// abandoned and the byte counts understate the loss.
	Diverged bool
}

// AssessFailover computes the risk of a forced failover to candidate from
// v. It is pure; the CLI and the API both call it, so the operator sees the
// same facts whichever way the request is made.
func AssessFailover(v View, candidate string) FailoverRisk {
	r := FailoverRisk{Candidate: candidate}
	if st, ok := v.Statuses[candidate]; ok {
		r.CandidatePos = st.Position
	}
	if v.Optime != nil && v.Optime.Position.LSN != 0 {
		o := *v.Optime
		r.Last = &o
	}
	for _, n := range slices.SortedFunc(maps.Keys(v.Statuses), CompareMembers) {
		st := v.Statuses[n]
		if v.Members[n].Witness || st.Position.LSN == 0 {
			continue
		}
		if r.MostAdvanced == "" || r.MostAdvancedPos.Less(st.Position) {
			r.MostAdvanced, r.MostAdvancedPos = n, st.Position
		}
	}
	if r.CandidatePos.LSN == 0 {
		return r
	}
	var div bool
	if r.Last != nil {
		r.BehindLast, div = behind(r.CandidatePos, r.Last.Position)
		r.Diverged = r.Diverged || div
	}
	if r.MostAdvanced != "" {
		r.BehindMost, div = behind(r.CandidatePos, r.MostAdvancedPos)
		r.Diverged = r.Diverged || div
	}
	return r
}

// behind returns how many bytes p lacks of ref, and whether p is on an older
// timeline without being below ref's LSN (diverged: the count is unknown).
func behind(p, ref Position) (int64, bool) {
	if !p.Less(ref) {
		return 0, false
	}
	if p.LSN >= ref.LSN {
		return 0, true
	}
	return int64(ref.LSN - p.LSN), false
}

// AtRisk reports whether the failover may lose acknowledged commits: the
// candidate reports no position, lacks WAL of the last known primary
// position or of another member, or has diverged.
func (r FailoverRisk) AtRisk() bool {
	return r.CandidatePos.LSN == 0 || r.BehindLast > 0 || r.BehindMost > 0 || r.Diverged
}

// String states the facts for the operator, e.g. "pg-1 is at 0/5000000
// (timeline 1), 2097152 bytes behind the last known primary position
// 0/5200000 (timeline 1, published by pg-0); the most advanced member is
// pg-2 at 0/5100000 (timeline 1), 1048576 bytes ahead of pg-1".
func (r FailoverRisk) String() string {
	var b strings.Builder
	if r.CandidatePos.LSN == 0 {
		fmt.Fprintf(&b, "%s reports no WAL position, so what it lacks is unknown", r.Candidate)
	} else {
		fmt.Fprintf(&b, "%s is at %s", r.Candidate, posString(r.CandidatePos))
	}
	if r.Last != nil {
		if r.CandidatePos.LSN != 0 {
			fmt.Fprintf(&b, ", %d bytes behind the last known primary position", r.BehindLast)
		} else {
			b.WriteString("; the last known primary position is")
		}
		fmt.Fprintf(&b, " %s, published by %s", posString(r.Last.Position), r.Last.Leader)
	} else {
		b.WriteString("; no primary position was ever published")
	}
	switch {
	case r.MostAdvanced == "":
		b.WriteString("; no member reports a position")
	case r.MostAdvanced == r.Candidate || r.BehindMost == 0 && !r.Diverged:
		fmt.Fprintf(&b, "; no reporting member is ahead of %s", r.Candidate)
	default:
		fmt.Fprintf(&b, "; the most advanced member is %s at %s", r.MostAdvanced, posString(r.MostAdvancedPos))
		if r.BehindMost > 0 {
			fmt.Fprintf(&b, ", %d bytes ahead of %s", r.BehindMost, r.Candidate)
		}
	}
	if r.Diverged {
		fmt.Fprintf(&b, "; %s is on an older timeline and holds WAL the cluster abandoned", r.Candidate)
	}
	return b.String()
}

func posString(p Position) string { return fmt.Sprintf("%s (timeline %d)", p.LSN, p.Timeline) }

// Discard is WAL a former primary threw away when pg_rewind moved it onto
// the timeline of the history entry that holds it: from that entry's
// SwitchLSN (where the timelines diverged) to End, the end of the former
// primary's WAL on its own timeline. Those bytes may hold acknowledged
// commits that no other member has.
type Discard struct {
	Member string `json:"member"`
	// Timeline is the former primary's timeline, where the WAL was.
	Timeline uint32    `json:"timeline"`
	End      LSN       `json:"end"`
	At       time.Time `json:"at"`
}

// Bytes is how much WAL d discarded past h's switch point.
func (h HistoryEntry) Bytes(d Discard) int64 {
	if d.End <= h.SwitchLSN {
		return 0
	}
	return int64(d.End - h.SwitchLSN)
}

// ErrNoBranch: no history entry branches off the given timeline at the
// given position.
var ErrNoBranch = errors.New("no history entry branches there")

// AddDiscard returns hist with d recorded on the entry whose timeline
// branched off d.Timeline at divergedAt: the first entry with a newer
// timeline than d.Timeline and SwitchLSN divergedAt. It does not modify
// hist. ErrNoBranch when no entry matches (the history was truncated, or
// the branch was never recorded).
func AddDiscard(hist []HistoryEntry, divergedAt LSN, d Discard) ([]HistoryEntry, error) {
	for i, h := range hist {
		if h.Timeline > d.Timeline && h.SwitchLSN == divergedAt {
			out := slices.Clone(hist)
			out[i].Discarded = append(slices.Clone(h.Discarded), d)
			return out, nil
		}
	}
	return hist, fmt.Errorf("record discarded WAL of %s: %w (timeline after %d at %s)", d.Member, ErrNoBranch, d.Timeline, divergedAt)
}
