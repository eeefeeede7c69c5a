package proxy

import (
	"slices"
	"testing"
)

// TestPlacement: which members a session may stay on, where it belongs
// and where it may go next, per listener, for the routes of the cases
// that move read-only sessions: a replica leaving the pool (stopped,
// lagging, noloadbalance, gone: Route drops it from RO), a replica
// promoted (it is Primary and no longer in RO), no replica left (the
// primary by fallback, or nothing).
func TestPlacement(t *testing.T) {
	p0 := Target{Name: "pg-0", Addr: "a:1"}
	r1 := Target{Name: "pg-1", Addr: "b:1"}
	r2 := Target{Name: "pg-2", Addr: "c:1"}
	rw := placement{listener: ListenerRW}
	ro := placement{listener: ListenerRO, fallback: true}
	roNoFB := placement{listener: ListenerRO}
	healthy := Routes{RWAction: ActRoute, RW: &p0, Primary: &p0, RO: []Target{r1, r2}}
	r1Left := Routes{RWAction: ActRoute, RW: &p0, Primary: &p0, RO: []Target{r2}}
	r1Promoted := Routes{RWAction: ActRoute, RW: &r1, Primary: &r1, RO: []Target{r2}}
	onlyPrimary := Routes{RWAction: ActRoute, RW: &p0, Primary: &p0, RO: []Target{}}
	r1PromotedAlone := Routes{RWAction: ActRoute, RW: &r1, Primary: &r1, RO: []Target{}}
	switchoverDue := Routes{RWAction: ActHold, Primary: &p0, RO: []Target{r1}}
	stale := Routes{RWAction: ActRefuse, RO: []Target{}}

	cases := []struct {
		name       string
		pl         placement
		r          Routes
		t          Target
		onFallback bool
		stays      bool
		home       bool
		leaves     bool
		targets    []Target
		fallback   bool
	}{
		{"rw on the primary", rw, healthy, p0, false, true, true, false, []Target{p0}, false},
		{"rw on a demoted member is cut", rw, r1Promoted, p0, false, false, false, true, []Target{r1}, false},
		{"rw during a due switchover stays but leaves at a boundary", rw, switchoverDue, p0, false, true, false, true, nil, false},
		{"rw with a stale view is cut", rw, stale, p0, false, false, false, true, nil, false},

		{"ro on a replica of the pool", ro, healthy, r1, false, true, true, false, []Target{r1, r2}, false},
		{"ro on a replica that left the pool moves, not cut", ro, r1Left, r1, false, true, false, true, []Target{r2}, false},
		{"ro on a promoted replica moves to another replica", ro, r1Promoted, r1, false, true, false, true, []Target{r2}, false},
		{"ro on a replica promoted with no replica left moves (to it, by fallback, logged in anew)", ro, r1PromotedAlone, r1, false, true, false, true, []Target{r1}, true},
		{"ro on a replica promoted, no fallback, no replica left: leaves and waits", roNoFB, r1PromotedAlone, r1, false, true, false, true, nil, false},
		{"ro on the primary by fallback stays home while no replica qualifies", ro, onlyPrimary, p0, true, true, true, false, []Target{p0}, true},
		{"ro on the primary by fallback goes back to a replica", ro, healthy, p0, true, true, false, true, []Target{r1, r2}, false},
		{"ro on the primary by fallback after a switchover is cut and moves to the new primary", ro, r1PromotedAlone, p0, true, false, false, true, []Target{r1}, true},
		{"ro on the primary by fallback with a stale view is cut", ro, stale, p0, true, false, false, false, nil, false},
		{"ro on a lagging replica, no fallback, nowhere to go: stays", roNoFB, onlyPrimary, r1, false, true, false, false, nil, false},
		{"ro with a stale view stays: nowhere to go", ro, stale, r1, false, true, false, false, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.pl.stays(c.r, c.t, c.onFallback); got != c.stays {
				t.Errorf("stays = %v, want %v", got, c.stays)
			}
			if got := c.pl.home(c.r, c.t, c.onFallback); got != c.home {
				t.Errorf("home = %v, want %v", got, c.home)
			}
			if got := c.pl.leaves(c.r, c.t, c.onFallback); got != c.leaves {
				t.Errorf("leaves = %v, want %v", got, c.leaves)
			}
			ts, fb := c.pl.targets(c.r)
			if !slices.Equal(ts, c.targets) || fb != c.fallback {
				t.Errorf("targets = %v, %v; want %v, %v", ts, fb, c.targets, c.fallback)
			}
			if why := c.pl.why(c.r); (len(c.targets) == 0) != (why != "") && c.pl.readOnly() {
				t.Errorf("why = %q with targets %v", why, c.targets)
			}
		})
	}
}
