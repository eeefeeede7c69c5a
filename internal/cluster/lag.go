package cluster

import "math"

// ReplayedPosition is the position whose data a query on a member sees,
// from its reported position pos (received WAL on a standby, written WAL
// on a primary) and replay (its replayed WAL; 0 when not reported): replay
// on pos's timeline, or pos itself when replay is 0 (a primary, whose
// writes are visible as they happen, or an agent that does not report
// replay) or not behind pos.
//
// A standby whose replay is paused or stuck keeps receiving WAL: measured
// by pos alone it looks current while its queries return data from long
// ago. Read routing and the replica health checks must measure this
// position instead.
func ReplayedPosition(pos Position, replay LSN) Position {
	if replay == 0 || replay >= pos.LSN {
		return pos
	}
	return Position{Timeline: pos.Timeline, LSN: replay}
}

// LagBytes is how many bytes of WAL p is behind ref, 0 when it is not
// behind, at most math.MaxInt64. known is false when the distance cannot be
// measured: p or ref has no LSN, or they are on different timelines (a
// member that has not crossed the last promotion is behind by an unknown
// amount).
func LagBytes(ref, p Position) (lag int64, known bool) {
	if ref.LSN == 0 || p.LSN == 0 || p.Timeline != ref.Timeline {
		return 0, false
	}
	if p.LSN >= ref.LSN {
		return 0, true
	}
	return int64(min(uint64(ref.LSN-p.LSN), math.MaxInt64)), true
}

// PrimaryPosition is the position replicas' lag is measured against: the
// leader's reported position while its live status says primary and has a
// position, else the last published optime. ok is false when neither is
// known.
func (v View) PrimaryPosition() (pos Position, ok bool) {
	if v.Leader != nil {
		if st, live := v.Statuses[v.Leader.Name]; live && st.Role == RolePrimary && st.Position.LSN != 0 {
			return st.Position, true
		}
	}
	if v.Optime != nil && v.Optime.Position.LSN != 0 {
		return v.Optime.Position, true
	}
	return Position{}, false
}
