package cluster

import (
	"strings"
	"testing"
)

func TestBoolTags(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "TRUE": true, "Yes": true, "on": true, "1": true, "false": false, "No": false, "off": false, "0": false} {
		got, err := ParseBool(v)
		if err != nil || got != want {
			t.Errorf("ParseBool(%q) = %v, %v; want %v", v, got, err, want)
		}
	}
	for _, v := range []string{"maybe", "", "2", "tru"} {
		if _, err := ParseBool(v); err == nil {
			t.Errorf("ParseBool(%q) accepted", v)
		}
	}
	m := func(tags map[string]string) MemberInfo { return MemberInfo{Name: "pg-1", Tags: tags} }
	for _, tc := range []struct {
		tags         map[string]string
		noFail, noLB bool
		priority     int
	}{
		{nil, false, false, DefaultFailoverPriority},
		{map[string]string{"nofailover": "True"}, true, false, DefaultFailoverPriority},
		{map[string]string{"nofailover": "maybe"}, true, false, DefaultFailoverPriority}, // unreadable: the safe side
		{map[string]string{"noloadbalance": "True"}, false, true, DefaultFailoverPriority},
		{map[string]string{"noloadbalance": "perhaps"}, false, true, DefaultFailoverPriority},
		{map[string]string{"failover_priority": "0"}, true, false, 0},
		{map[string]string{"failover_priority": "7"}, false, false, 7},
		{map[string]string{"failover_priority": "-1"}, true, false, 0},
		{map[string]string{"failover_priority": "high"}, true, false, 0},
	} {
		info := m(tc.tags)
		if info.NoFailover() != tc.noFail || info.NoLoadBalance() != tc.noLB || info.FailoverPriority() != tc.priority {
			t.Errorf("%v: nofailover %v, noloadbalance %v, priority %d; want %v %v %d", tc.tags,
				info.NoFailover(), info.NoLoadBalance(), info.FailoverPriority(), tc.noFail, tc.noLB, tc.priority)
		}
	}
}

func TestCheckTag(t *testing.T) {
	for _, ok := range [][2]string{{"nofailover", "yes"}, {"noloadbalance", "0"}, {"failover_priority", "0"}, {"failover_priority", "1000"}, {"zone", "eu-1a"}, {"rack", " anything "}} {
		if err := CheckTag(ok[0], ok[1]); err != nil {
			t.Errorf("CheckTag(%q, %q): %v", ok[0], ok[1], err)
		}
	}
	for _, bad := range [][3]string{
		{"nofailover", "maybe", `"maybe" is not a boolean`},
		{"noloadbalance", "", `"" is not a boolean`},
		{"failover_priority", "-1", "whole number from 0"},
		{"failover_priority", "1001", "to 1000"},
		{"failover_priority", "2.5", "not a priority"},
		{"zone", " a", "surrounding spaces"},
		{"nofailover", strings.Repeat("x", 1<<20), "(1048576 bytes)"},
	} {
		err := CheckTag(bad[0], bad[1])
		if err == nil || !strings.Contains(err.Error(), bad[2]) {
			t.Errorf("CheckTag(%q, %.20q) = %v, want %q", bad[0], bad[1], err, bad[2])
		} else if len(err.Error()) > 300 {
			t.Errorf("CheckTag(%q): a %d-byte message", bad[0], len(err.Error()))
		}
	}
}

func TestComparePreference(t *testing.T) {
	v := View{Members: map[string]MemberInfo{
		"pg-0": {Tags: map[string]string{"zone": "a"}},
		"pg-1": {Tags: map[string]string{"zone": "b"}},
		"pg-2": {Tags: map[string]string{"zone": "a"}},
		"pg-3": {Tags: map[string]string{"zone": "b", "failover_priority": "2"}},
		"pg-4": {},
	}}
	for _, tc := range []struct {
		leader, a, b string
		want         int
	}{
		{"pg-0", "pg-2", "pg-1", -1}, // the leader's zone
		{"pg-0", "pg-1", "pg-2", 1},
		{"pg-0", "pg-3", "pg-2", -1}, // priority before zone
		{"pg-0", "pg-1", "pg-4", 0},  // neither in the leader's zone
		{"pg-4", "pg-2", "pg-1", 0},  // the leader's zone unknown
		{"", "pg-2", "pg-1", 0},
	} {
		if got := ComparePreference(v, tc.leader, tc.a, tc.b); got != tc.want {
			t.Errorf("ComparePreference(leader %s, %s, %s) = %d, want %d", tc.leader, tc.a, tc.b, got, tc.want)
		}
	}
}
