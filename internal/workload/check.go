package workload

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// DefaultSlackBytes is the default CheckOptions.SlackBytes: room for the
// records between a write's recorded LSN (after its row) and the end of its
// commit record, including a few concurrent clients' records interleaved.
const DefaultSlackBytes = 1024

// CheckOptions says what Check must hold the writes to.
type CheckOptions struct {
	// Synchronous: every acknowledged write must be present.
	Synchronous bool
	// LossBoundBytes bounds, in asynchronous mode, the WAL span of lost
	// acknowledged writes per (member, timeline): typically the cluster's
	// maximum_lag_on_failover plus what the primary may write between two
	// publications of its position (candidates are compared with the last
	// published optime, so the WAL written after it is not covered by
	// maximum_lag_on_failover).
	LossBoundBytes int64
	// SlackBytes is added to LossBoundBytes (0 means DefaultSlackBytes).
	SlackBytes int64
}

// Result is what Check found. The package documentation says what each
// field proves.
type Result struct {
	Synchronous bool // the mode the writes were checked for

	Attempts, Acked, Failed, Unknown int
	// ClientErrors = Failed + Unknown: attempts that were not acknowledged.
	ClientErrors int

	// LostAcked acknowledged writes are not present (ids ascending).
	LostAcked int
	LostIDs   []int64
	// LossSpanBytes is the largest measured span (see the package
	// documentation) over the (member, timeline) groups with lost writes;
	// LostWithinBound says whether every span ≤ LossBoundBytes + slack
	// (true when nothing was lost).
	LossSpanBytes   int64
	LostWithinBound bool
	// LossBoundBytes is the bound applied: CheckOptions.LossBoundBytes plus
	// the slack.
	LossBoundBytes int64

	// FailedPresent writes were reported Failed yet are present: a
	// violation.
	FailedPresent    int
	FailedPresentIDs []int64
	// UnknownPresent Unknown writes are present (allowed).
	UnknownPresent int

	// SplitBrain is proven interleaving (see the package documentation);
	// SplitBrainDetail names the writes that prove it.
	SplitBrain       bool
	SplitBrainDetail string
	// Suspicious lists evidence that falls short of proof.
	Suspicious []string

	// Unavailability is the longest interval without an acknowledged
	// write, from UnavailableFrom to UnavailableTo: between consecutive
	// acknowledgements (by End), or from the last one to the end of the run
	// (the latest End of any attempt); the whole run when nothing was
	// acknowledged. The start of the run is not counted (see FirstAck).
	Unavailability                 time.Duration
	UnavailableFrom, UnavailableTo time.Time
	// FirstAck is the time from the first attempt's Start to the first
	// acknowledgement: connection set-up, or an outage already under way
	// when the writers started.
	FirstAck time.Duration

	// Members lists, in order of first acknowledgement, "member/timeline"
	// pairs that acknowledged writes, e.g. "pg-1/1", "pg-2/2".
	Members []string
}

// OK reports whether no violation was found: no split brain, no Failed
// write present, and no lost acknowledged write (synchronous) or losses
// within the bound (asynchronous). Suspicious evidence is not a violation.
func (r Result) OK() bool { return len(r.Problems()) == 0 }

// Problems lists the violations, one sentence each; empty when OK.
func (r Result) Problems() []string {
	var p []string
	if r.SplitBrain {
		p = append(p, "split brain: "+r.SplitBrainDetail)
	}
	if r.FailedPresent > 0 {
		p = append(p, fmt.Sprintf("%d writes reported failed are present (ids %s)", r.FailedPresent, idList(r.FailedPresentIDs)))
	}
	switch {
	case r.LostAcked == 0:
	case r.Synchronous:
		p = append(p, fmt.Sprintf("%d acknowledged writes lost in synchronous mode (ids %s)", r.LostAcked, idList(r.LostIDs)))
	case !r.LostWithinBound:
		p = append(p, fmt.Sprintf("%d acknowledged writes lost over %d bytes of WAL, more than the bound of %d (ids %s)",
			r.LostAcked, r.LossSpanBytes, r.LossBoundBytes, idList(r.LostIDs)))
	}
	return p
}

// idList prints at most ten ids.
func idList(ids []int64) string {
	const show = 10
	var b strings.Builder
	for i, id := range ids {
		if i == show {
			fmt.Fprintf(&b, " … %d more", len(ids)-show)
			break
		}
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprint(&b, id)
	}
	return b.String()
}

// tenure is what the acknowledged writes of one member on one timeline
// show: the earliest End and the latest Start among them.
type tenure struct {
	member   string
	timeline uint32
	first    Write // the write with the earliest End
	last     Write // the write with the latest Start
	maxLSN   uint64
}

func (t tenure) String() string { return fmt.Sprintf("%s/%d", t.member, t.timeline) }

type tenureKey struct {
	member   string
	timeline uint32
}

// Check compares the writes with the ids present after healing; present
// must be read from the final primary (Present). Ids present but never
// attempted are ignored. Writes may come in any order.
func Check(writes []Write, present map[int64]bool, o CheckOptions) Result {
	slack := o.SlackBytes
	if slack <= 0 {
		slack = DefaultSlackBytes
	}
	r := Result{Synchronous: o.Synchronous, Attempts: len(writes), LostWithinBound: true, LossBoundBytes: o.LossBoundBytes + slack}

	var acked []Write
	for _, w := range writes {
		switch w.Outcome {
		case Acked:
			r.Acked++
			acked = append(acked, w)
			if !present[w.ID] {
				r.LostIDs = append(r.LostIDs, w.ID)
			}
		case Failed:
			r.Failed++
			if present[w.ID] {
				r.FailedPresentIDs = append(r.FailedPresentIDs, w.ID)
			}
		default:
			r.Unknown++
			if present[w.ID] {
				r.UnknownPresent++
			}
		}
	}
	r.ClientErrors = r.Failed + r.Unknown
	sortIDs(r.LostIDs)
	sortIDs(r.FailedPresentIDs)
	r.LostAcked, r.FailedPresent = len(r.LostIDs), len(r.FailedPresentIDs)

	// Acknowledged writes by End: the order members were seen accepting.
	sort.SliceStable(acked, func(i, j int) bool {
		if !acked[i].End.Equal(acked[j].End) {
			return acked[i].End.Before(acked[j].End)
		}
		return acked[i].ID < acked[j].ID
	})
	tenures := map[tenureKey]*tenure{}
	var order []*tenure
	for _, w := range acked {
		k := tenureKey{w.Member, w.Timeline}
		t := tenures[k]
		if t == nil {
			t = &tenure{member: w.Member, timeline: w.Timeline, first: w, last: w}
			tenures[k] = t
			order = append(order, t)
			r.Members = append(r.Members, t.String())
		}
		if w.Start.After(t.last.Start) {
			t.last = w
		}
		if w.LSN > t.maxLSN {
			t.maxLSN = w.LSN
		}
	}

	r.checkLoss(acked, present, tenures)
	r.checkSplitBrain(acked, order, tenures)
	r.checkUnavailability(writes, acked)
	return r
}

func sortIDs(ids []int64) { sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] }) }

// checkLoss measures, per member and timeline holding lost writes, the span
// from the lowest LSN of a lost write to the highest LSN acknowledged there.
func (r *Result) checkLoss(acked []Write, present map[int64]bool, tenures map[tenureKey]*tenure) {
	minLost := map[tenureKey]uint64{}
	for _, w := range acked {
		if present[w.ID] {
			continue
		}
		k := tenureKey{w.Member, w.Timeline}
		if m, ok := minLost[k]; !ok || w.LSN < m {
			minLost[k] = w.LSN
		}
	}
	for k, m := range minLost {
		span := int64(tenures[k].maxLSN - m)
		if span > r.LossSpanBytes {
			r.LossSpanBytes = span
		}
	}
	r.LostWithinBound = r.LossSpanBytes <= r.LossBoundBytes
}

// checkSplitBrain looks for an acknowledged write b of one member that lies
// strictly inside the tenure of another member on one timeline: that
// tenure's earliest acknowledgement ended before b started and its latest
// write started after b ended. It also collects suspicious evidence.
func (r *Result) checkSplitBrain(acked []Write, order []*tenure, tenures map[tenureKey]*tenure) {
	for _, b := range acked {
		for _, t := range order {
			if t.member == b.Member {
				continue
			}
			if t.first.End.Before(b.Start) && b.End.Before(t.last.Start) {
				r.SplitBrain = true
				r.SplitBrainDetail = fmt.Sprintf(
					"%s acknowledged id %d (ended %s) and id %d (started %s) on timeline %d, and %s acknowledged id %d on timeline %d in between (%s to %s)",
					t.member, t.first.ID, clock(t.first.End), t.last.ID, clock(t.last.Start), t.timeline,
					b.Member, b.ID, b.Timeline, clock(b.Start), clock(b.End))
				break
			}
		}
		if r.SplitBrain {
			break
		}
	}

	// One timeline number acknowledged by several members.
	byTimeline := map[uint32][]string{}
	var timelines []uint32
	for _, t := range order {
		if byTimeline[t.timeline] == nil {
			timelines = append(timelines, t.timeline)
		}
		byTimeline[t.timeline] = append(byTimeline[t.timeline], t.member)
	}
	for _, tl := range timelines {
		if ms := byTimeline[tl]; len(ms) > 1 {
			r.Suspicious = append(r.Suspicious, fmt.Sprintf("timeline %d acknowledged writes on several members: %s", tl, strings.Join(ms, ", ")))
		}
	}

	// A write acknowledged on an older timeline after another member's
	// write on a newer timeline had been acknowledged.
	type pair struct{ stale, newer *tenure }
	count := map[pair]int{}
	example := map[pair]Write{}
	var pairs []pair
	for _, a := range acked {
		for _, t := range order {
			if t.member == a.Member || t.timeline <= a.Timeline || !t.first.End.Before(a.Start) {
				continue
			}
			p := pair{stale: tenures[tenureKey{a.Member, a.Timeline}], newer: t}
			if count[p] == 0 {
				pairs = append(pairs, p)
				example[p] = a
			}
			count[p]++
		}
	}
	for _, p := range pairs {
		a := example[p]
		r.Suspicious = append(r.Suspicious, fmt.Sprintf(
			"%s acknowledged %d writes on timeline %d after %s had acknowledged id %d on newer timeline %d (first: id %d started %s, after %s)",
			p.stale.member, count[p], p.stale.timeline, p.newer.member, p.newer.first.ID, p.newer.timeline, a.ID, clock(a.Start), clock(p.newer.first.End)))
	}
}

// checkUnavailability finds the longest interval without an acknowledged
// write: between consecutive acknowledgements, and from the last one to the
// end of the run.
func (r *Result) checkUnavailability(writes, acked []Write) {
	if len(writes) == 0 {
		return
	}
	begin, end := writes[0].Start, writes[0].End
	for _, w := range writes {
		if w.Start.Before(begin) {
			begin = w.Start
		}
		if w.End.After(end) {
			end = w.End
		}
	}
	if len(acked) == 0 {
		r.Unavailability, r.UnavailableFrom, r.UnavailableTo = end.Sub(begin), begin, end
		return
	}
	r.FirstAck = acked[0].End.Sub(begin)
	points := make([]time.Time, 0, len(acked)+1)
	for _, w := range acked {
		points = append(points, w.End)
	}
	points = append(points, end)
	for i := 1; i < len(points); i++ {
		if d := points[i].Sub(points[i-1]); d > r.Unavailability {
			r.Unavailability, r.UnavailableFrom, r.UnavailableTo = d, points[i-1], points[i]
		}
	}
}

// clock prints a time of day with milliseconds.
func clock(t time.Time) string { return t.Format("15:04:05.000") }
