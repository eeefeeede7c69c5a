package decide

import (
	"slices"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

// The clean stop: PostgreSQL always first; the final position and the
// release only for the member that holds the key under its own lease.
func TestShutdown(t *testing.T) {
	self := cluster.MemberInfo{Name: "pg-0"}
	lease := Lease{Held: true, ID: 7}
	for _, tc := range []struct {
		name  string
		o     Observation
		kinds []Kind
	}{
		{"leader", Observation{Self: self, Lease: lease, View: cluster.View{Leader: &cluster.Leader{Name: "pg-0", LeaseID: 7}}},
			[]Kind{ActStop, ActPublishCheckpoint, ActReleaseLeader}},
		{"replica", Observation{Self: self, Lease: lease, View: cluster.View{Leader: &cluster.Leader{Name: "pg-1", LeaseID: 9}}},
			[]Kind{ActStop}},
		{"no leader", Observation{Self: self, Lease: lease}, []Kind{ActStop}},
		{"our name, an old lease", Observation{Self: self, Lease: lease, View: cluster.View{Leader: &cluster.Leader{Name: "pg-0", LeaseID: 3}}},
			[]Kind{ActStop}},
		{"our key, lease lost", Observation{Self: self, View: cluster.View{Leader: &cluster.Leader{Name: "pg-0", LeaseID: 7}}},
			[]Kind{ActStop}},
		{"witness", Observation{Self: cluster.MemberInfo{Name: "w", Witness: true}, Lease: lease}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []Kind
			for _, a := range Shutdown(tc.o) {
				got = append(got, a.Kind)
			}
			if !slices.Equal(got, tc.kinds) {
				t.Fatalf("Shutdown = %v, want %v", got, tc.kinds)
			}
		})
	}
}
