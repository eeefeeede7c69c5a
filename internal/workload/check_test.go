package workload

import (
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func ms(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }

// ack is an acknowledged write on member/timeline over [start, end] ms.
func ack(id int64, member string, tl uint32, start, end int, lsn uint64) Write {
	return Write{ID: id, Target: "proxy", Start: ms(start), End: ms(end), Outcome: Acked, Member: member, Timeline: tl, LSN: lsn}
}

func attempt(id int64, o Outcome, start, end int) Write {
	return Write{ID: id, Target: "proxy", Start: ms(start), End: ms(end), Outcome: o, Err: "boom"}
}

func ids(xs ...int64) map[int64]bool {
	m := map[int64]bool{}
	for _, x := range xs {
		m[x] = true
	}
	return m
}

func TestCheckSynchronousLoss(t *testing.T) {
	ws := []Write{ack(1, "pg-0", 1, 0, 1, 100), ack(2, "pg-0", 1, 2, 3, 200), ack(3, "pg-0", 1, 4, 5, 300)}
	r := Check(ws, ids(1, 3), CheckOptions{Synchronous: true})
	if r.Acked != 3 || r.LostAcked != 1 || len(r.LostIDs) != 1 || r.LostIDs[0] != 2 {
		t.Fatalf("lost: %+v", r)
	}
	if r.OK() || !strings.Contains(strings.Join(r.Problems(), ";"), "synchronous") {
		t.Fatalf("want a synchronous-loss problem, got %q", r.Problems())
	}
	if r := Check(ws, ids(1, 2, 3), CheckOptions{Synchronous: true}); !r.OK() || r.LostAcked != 0 {
		t.Fatalf("nothing lost: %+v", r)
	}
}

func TestCheckUnknownNeverLost(t *testing.T) {
	ws := []Write{
		ack(1, "pg-0", 1, 0, 1, 100),
		attempt(2, Unknown, 2, 10), // absent: fine
		attempt(3, Unknown, 2, 10), // present: fine
		attempt(4, Failed, 11, 12),
	}
	r := Check(ws, ids(1, 3), CheckOptions{Synchronous: true})
	if !r.OK() || r.LostAcked != 0 || r.Unknown != 2 || r.UnknownPresent != 1 || r.Failed != 1 || r.ClientErrors != 3 || r.Attempts != 4 {
		t.Fatalf("unknowns: %+v problems %q", r, r.Problems())
	}
}

func TestCheckFailedPresent(t *testing.T) {
	ws := []Write{ack(1, "pg-0", 1, 0, 1, 100), attempt(2, Failed, 2, 3)}
	r := Check(ws, ids(1, 2), CheckOptions{})
	if r.OK() || r.FailedPresent != 1 || r.FailedPresentIDs[0] != 2 {
		t.Fatalf("failed present: %+v", r)
	}
}

func TestCheckSplitBrain(t *testing.T) {
	for _, c := range []struct {
		name      string
		writes    []Write
		split     bool
		suspicion string // substring of a Suspicious entry; "" = none
	}{
		{
			name: "old primary keeps its timeline around the new primary's write",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-1", 2, 20, 30, 100),
				ack(3, "pg-0", 1, 40, 50, 200),
			},
			split:     true,
			suspicion: "after pg-1 had acknowledged",
		},
		{
			name: "failover and back: A B A on increasing timelines",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-1", 2, 20, 30, 100),
				ack(3, "pg-0", 3, 40, 50, 200),
			},
		},
		{
			name: "adjacent tenures, not interleaved",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-0", 1, 10, 20, 200),
				ack(3, "pg-1", 2, 25, 35, 300),
				ack(4, "pg-1", 2, 35, 45, 400),
			},
		},
		{
			name: "overlapping intervals prove nothing",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-1", 2, 5, 15, 100),
				ack(3, "pg-0", 1, 12, 20, 200),
			},
		},
		{
			name: "touching boundaries are not strict order",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-1", 2, 10, 30, 100),
				ack(3, "pg-0", 1, 30, 40, 200),
			},
		},
		{
			name: "b interleaves only the start of a long write",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-1", 2, 20, 30, 100),
				ack(3, "pg-0", 1, 25, 50, 200), // started before b ended
			},
			suspicion: "", // a3 started before b ended: not "after"
		},
		{
			name: "two members on one timeline number, in sequence",
			writes: []Write{
				ack(1, "pg-0", 2, 0, 10, 100),
				ack(2, "pg-1", 2, 20, 30, 100),
			},
			suspicion: "timeline 2 acknowledged writes on several members: pg-0, pg-1",
		},
		{
			name: "stale timeline after a newer one, without an earlier write",
			writes: []Write{
				ack(1, "pg-1", 2, 0, 10, 100),
				ack(2, "pg-0", 1, 20, 30, 100),
			},
			suspicion: "pg-0 acknowledged 1 writes on timeline 1 after pg-1",
		},
		{
			name: "interleaving on the same member is not split brain",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				ack(2, "pg-0", 1, 20, 30, 200),
				ack(3, "pg-0", 1, 40, 50, 300),
			},
		},
		{
			name: "unacknowledged writes do not count",
			writes: []Write{
				ack(1, "pg-0", 1, 0, 10, 100),
				{ID: 2, Start: ms(20), End: ms(30), Outcome: Unknown, Member: "pg-1", Timeline: 2},
				ack(3, "pg-0", 1, 40, 50, 200),
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			all := ids()
			for _, w := range c.writes {
				all[w.ID] = true
			}
			r := Check(c.writes, all, CheckOptions{})
			if r.SplitBrain != c.split {
				t.Fatalf("split brain %v, want %v: %s", r.SplitBrain, c.split, r.SplitBrainDetail)
			}
			if c.split && (r.SplitBrainDetail == "" || r.OK()) {
				t.Fatalf("split brain without detail or still OK: %+v", r)
			}
			sus := strings.Join(r.Suspicious, "\n")
			if c.suspicion == "" && sus != "" {
				t.Fatalf("unexpected suspicion: %s", sus)
			}
			if !strings.Contains(sus, c.suspicion) {
				t.Fatalf("suspicion %q, want it to contain %q", sus, c.suspicion)
			}
		})
	}
}

func TestCheckSplitBrainDetail(t *testing.T) {
	ws := []Write{
		ack(1, "pg-0", 1, 0, 10, 100),
		ack(2, "pg-1", 2, 20, 30, 100),
		ack(3, "pg-0", 1, 40, 50, 200),
	}
	r := Check(ws, ids(1, 2, 3), CheckOptions{})
	for _, want := range []string{"pg-0 acknowledged id 1", "id 3", "timeline 1", "pg-1 acknowledged id 2 on timeline 2"} {
		if !strings.Contains(r.SplitBrainDetail, want) {
			t.Errorf("detail %q lacks %q", r.SplitBrainDetail, want)
		}
	}
	if got := strings.Join(r.Members, ","); got != "pg-0/1,pg-1/2" {
		t.Errorf("members %s", got)
	}
}

func TestCheckAsyncBound(t *testing.T) {
	ws := []Write{
		ack(1, "pg-0", 1, 0, 1, 1000),
		ack(2, "pg-0", 1, 2, 3, 2000),
		ack(3, "pg-0", 1, 4, 5, 3000), // lost
		ack(4, "pg-0", 1, 6, 7, 4000), // lost
		ack(5, "pg-1", 2, 20, 21, 5000),
	}
	present := ids(1, 2, 5)
	r := Check(ws, present, CheckOptions{LossBoundBytes: 500})
	if r.LostAcked != 2 || r.LossSpanBytes != 1000 || !r.LostWithinBound || r.LossBoundBytes != 500+DefaultSlackBytes || !r.OK() {
		t.Fatalf("within bound: %+v %q", r, r.Problems())
	}
	r = Check(ws, present, CheckOptions{LossBoundBytes: 500, SlackBytes: 100})
	if r.LostWithinBound || r.OK() || !strings.Contains(strings.Join(r.Problems(), ";"), "more than the bound of 600") {
		t.Fatalf("out of bound: %+v %q", r, r.Problems())
	}
	// Synchronous: any loss fails, whatever the span.
	if r := Check(ws, present, CheckOptions{Synchronous: true, LossBoundBytes: 1 << 20}); r.OK() {
		t.Fatal("synchronous loss passed")
	}
	// Spans are per member and timeline: a loss on pg-1/2 is measured
	// against pg-1/2's own writes.
	ws = append(ws, ack(6, "pg-1", 2, 22, 23, 5100))
	r = Check(ws, ids(1, 2, 3, 4, 5), CheckOptions{LossBoundBytes: 0, SlackBytes: 1})
	if r.LostAcked != 1 || r.LossSpanBytes != 0 || !r.LostWithinBound {
		t.Fatalf("per timeline: %+v", r)
	}
}

func TestCheckUnavailability(t *testing.T) {
	ws := []Write{
		ack(1, "pg-0", 1, 0, 10, 1),
		ack(2, "pg-0", 1, 10, 20, 2),
		attempt(3, Failed, 21, 22),
		attempt(4, Unknown, 22, 500),
		ack(5, "pg-1", 2, 510, 520, 3),
		ack(6, "pg-1", 2, 520, 530, 4),
		attempt(7, Failed, 531, 600),
	}
	r := Check(ws, ids(1, 2, 5, 6), CheckOptions{})
	if r.Unavailability != 500*time.Millisecond || !r.UnavailableFrom.Equal(ms(20)) || !r.UnavailableTo.Equal(ms(520)) {
		t.Fatalf("unavailability %s from %s to %s", r.Unavailability, r.UnavailableFrom, r.UnavailableTo)
	}
	// Trailing edge: nothing acknowledged after 530 until the run ended.
	ws = append(ws, attempt(8, Failed, 601, 2000))
	if r := Check(ws, ids(1, 2, 5, 6), CheckOptions{}); r.Unavailability != 1470*time.Millisecond {
		t.Fatalf("trailing unavailability %s", r.Unavailability)
	}
	// The start of the run is FirstAck, not unavailability.
	late := []Write{attempt(1, Failed, 0, 700), ack(2, "pg-0", 1, 700, 800, 1), ack(3, "pg-0", 1, 800, 900, 2)}
	if r := Check(late, ids(2, 3), CheckOptions{}); r.Unavailability != 100*time.Millisecond || r.FirstAck != 800*time.Millisecond {
		t.Fatalf("late start: unavailability %s, first ack %s", r.Unavailability, r.FirstAck)
	}
	// Nothing acknowledged: the whole run.
	if r := Check([]Write{attempt(1, Failed, 0, 5), attempt(2, Failed, 100, 300)}, nil, CheckOptions{}); r.Unavailability != 300*time.Millisecond {
		t.Fatalf("no acks: %s", r.Unavailability)
	}
	if r := Check(nil, nil, CheckOptions{}); r.Unavailability != 0 || !r.OK() {
		t.Fatalf("empty: %+v", r)
	}
}

func TestCheckOrderIndependent(t *testing.T) {
	ws := []Write{
		ack(3, "pg-0", 1, 40, 50, 200),
		ack(2, "pg-1", 2, 20, 30, 100),
		ack(1, "pg-0", 1, 0, 10, 100),
	}
	if r := Check(ws, ids(1, 2, 3), CheckOptions{}); !r.SplitBrain {
		t.Fatal("split brain missed with unordered input")
	}
}
