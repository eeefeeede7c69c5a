package ctl

import (
	"bytes"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

// behindView: the primary pg-0 is down; pg-1 lacks 2 MiB of its last
// published position, pg-2 lacks 1 MiB.
func behindView() cluster.View {
	return cluster.View{
		Members: map[string]cluster.MemberInfo{"pg-0": {Name: "pg-0"}, "pg-1": {Name: "pg-1"}, "pg-2": {Name: "pg-2"}},
		Statuses: map[string]cluster.MemberStatus{
			"pg-1": {Name: "pg-1", Role: cluster.RoleStandbyNoLeader, Position: cluster.Position{Timeline: 1, LSN: 0x5000000}},
			"pg-2": {Name: "pg-2", Role: cluster.RoleStandbyNoLeader, Position: cluster.Position{Timeline: 1, LSN: 0x5100000}},
		},
		Optime: &cluster.Optime{Position: cluster.Position{Timeline: 1, LSN: 0x5200000}, Leader: "pg-0"},
	}
}

func TestConfirmFailover(t *testing.T) {
	facts := "pg-1 is at 0/5000000 (timeline 1), 2097152 bytes behind the last known primary position 0/5200000 (timeline 1), published by pg-0; the most advanced member is pg-2"
	cases := []struct {
		name        string
		force       bool
		interactive bool
		answer      string
		want        bool
		errHas      string
		outHas      string
	}{
		{name: "refused without force or terminal", errHas: facts + " at 0/5100000 (timeline 1), 1048576 bytes ahead of pg-1; pass --force"},
		{name: "forced", force: true, want: true, outHas: "warning: failover to pg-1 may lose acknowledged commits: " + facts},
		{name: "confirmed at a terminal", interactive: true, answer: "yes\n", want: true, outHas: "anyway and accept the loss? [y/N]"},
		{name: "declined at a terminal", interactive: true, answer: "\n", errHas: "not confirmed; nothing was changed", outHas: facts},
		{name: "no answer", interactive: true, answer: "", errHas: "no answer read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			got, err := ConfirmFailover(behindView(), "pg-1", c.force, Prompt{In: strings.NewReader(c.answer), Out: &out, Interactive: c.interactive})
			if got != c.want {
				t.Errorf("force = %v, want %v", got, c.want)
			}
			if c.errHas == "" && err != nil || c.errHas != "" && (err == nil || !strings.Contains(err.Error(), c.errHas)) {
				t.Errorf("err = %v, want one containing %q", err, c.errHas)
			}
			if !strings.Contains(out.String(), c.outHas) {
				t.Errorf("output %q lacks %q", out.String(), c.outHas)
			}
		})
	}

	// Nothing at risk: no question, no force.
	v := behindView()
	v.Statuses["pg-1"] = cluster.MemberStatus{Name: "pg-1", Position: cluster.Position{Timeline: 1, LSN: 0x5200000}}
	var out bytes.Buffer
	if got, err := ConfirmFailover(v, "pg-1", false, Prompt{Out: &out}); got || err != nil || out.Len() != 0 {
		t.Errorf("caught-up candidate: force %v, err %v, output %q", got, err, out.String())
	}
	if _, err := ConfirmFailover(v, "pg-9", true, Prompt{Out: &out}); err == nil || !strings.Contains(err.Error(), "no such member") {
		t.Errorf("unknown member: err %v", err)
	}
}
