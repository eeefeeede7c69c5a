package cluster

import (
	"testing"
)

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16B374D848, true},
		{"FFFFFFFF/FFFFFFFF", 0xFFFFFFFFFFFFFFFF, true},
		{" 1/2 ", 0x100000002, true},
		{"", 0, false},
		{"12", 0, false},
		{"1/G", 0, false},
		{"100000000/0", 0, false},
	} {
		got, err := ParseLSN(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok {
			if back, _ := ParseLSN(got.String()); back != got {
				t.Errorf("round trip of %q via %q gave %v", tc.in, got.String(), back)
			}
		}
	}
}

func TestPositionOrdersTimelineFirst(t *testing.T) {
	older := Position{Timeline: 1, LSN: 1 << 40}
	newer := Position{Timeline: 2, LSN: 1}
	if !older.Less(newer) || newer.Less(older) {
		t.Fatal("a higher timeline must win over a higher LSN")
	}
	if (Position{1, 5}).Less(Position{1, 5}) {
		t.Fatal("equal positions are not less")
	}
}

func TestOrdinalAndNames(t *testing.T) {
	for name, want := range map[string]int{"pg-2": 2, "db-10": 10, "a-b-0": 0} {
		if n, ok := Ordinal(name); !ok || n != want {
			t.Errorf("Ordinal(%q) = %d, %v", name, n, ok)
		}
	}
	for _, name := range []string{"pg", "pg-", "pg-x"} {
		if _, ok := Ordinal(name); ok {
			t.Errorf("Ordinal(%q) should not parse", name)
		}
	}
	for _, bad := range []string{"", "PG-0", "-pg", "pg-", "pg_0", "a.b"} {
		if ValidName(bad) == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
	if err := ValidName("pg-0"); err != nil {
		t.Error(err)
	}
	if SlotName("pg-0") != "pg_0" {
		t.Error("slot name")
	}
}
