package pg

import (
	"slices"
	"testing"
)

func TestSyncStandbysRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		members []string
		quorum  int
		want    string
	}{
		{nil, 0, ""},
		{[]string{"pg-1"}, 1, `ANY 1 ("pg-1")`},
		{[]string{"pg-1", "pg-2"}, 2, `ANY 2 ("pg-1", "pg-2")`},
		{[]string{"*"}, 1, `ANY 1 (*)`},
	} {
		got, err := RenderSyncStandbys(tc.members, tc.quorum)
		if err != nil || got != tc.want {
			t.Fatalf("RenderSyncStandbys(%v, %d) = %q, %v; want %q", tc.members, tc.quorum, got, err, tc.want)
		}
		m, q, ok := ParseSyncStandbys(got)
		if !ok || q != tc.quorum || !slices.Equal(m, tc.members) {
			t.Fatalf("ParseSyncStandbys(%q) = %v, %d, %v", got, m, q, ok)
		}
	}
	for _, bad := range []struct {
		members []string
		quorum  int
	}{{[]string{"a"}, 2}, {nil, -1}, {[]string{`a"b`}, 1}, {[]string{"a,b"}, 1}, {[]string{""}, 1}} {
		if s, err := RenderSyncStandbys(bad.members, bad.quorum); err == nil {
			t.Errorf("RenderSyncStandbys(%v, %d) = %q, want an error", bad.members, bad.quorum, s)
		}
	}
	// Values holdfast did not write are not understood: it replaces them.
	for _, foreign := range []string{"pg-1", "FIRST 1 (a)", "ANY 3 (\"a\")", "ANY 0 (\"a\")", "ANY 1 (a)", "2 (a, b)"} {
		if m, q, ok := ParseSyncStandbys(foreign); ok {
			t.Errorf("ParseSyncStandbys(%q) = %v, %d, true; want not ok", foreign, m, q)
		}
	}
}
