package ctl

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/holdfast/holdfast/internal/cluster"
)

// Prompt is where ConfirmFailover may ask the operator: Interactive only
// when In is a terminal (a script's stdin never answers for it).
type Prompt struct {
	In          io.Reader
	Out         io.Writer
	Interactive bool
}

// ConfirmFailover decides whether a forced failover to candidate may be
// requested, from v (see cluster.AssessFailover). Nothing at risk: true,
// without a word. At risk: the facts are printed to p.Out; with force the
// answer is true; at a terminal the operator is asked (only "y" or "yes"
// accepts); otherwise it returns an error carrying the facts. The answer is
// the request's Force: the API checks the risk again against its own read
// of the store and refuses an unforced request that would lose data.
//
// A candidate that is not a member is an error; with a running primary
// nothing is asked (the API refuses the failover and says why).
func ConfirmFailover(v cluster.View, candidate string, force bool, p Prompt) (bool, error) {
	if _, ok := v.Members[candidate]; !ok {
		return false, fmt.Errorf("failover to %s: no such member", candidate)
	}
	if l := v.Leader; l != nil {
		if st, ok := v.Statuses[l.Name]; ok && st.Role == cluster.RolePrimary && st.State == cluster.StateRunning {
			return false, nil
		}
	}
	risk := cluster.AssessFailover(v, candidate)
	if !risk.AtRisk() {
		return false, nil
	}
	if force {
		fmt.Fprintf(p.Out, "warning: failover to %s may lose acknowledged commits: %s\n", candidate, risk)
		return true, nil
	}
	if !p.Interactive {
		return false, fmt.Errorf("failover to %s refused: it may lose acknowledged commits: %s; pass --force to accept the loss", candidate, risk)
	}
	fmt.Fprintf(p.Out, "failover to %s may lose acknowledged commits: %s\nPromote %s anyway and accept the loss? [y/N] ", candidate, risk, candidate)
	line, err := bufio.NewReader(p.In).ReadString('\n')
	if err != nil && line == "" {
		return false, fmt.Errorf("failover to %s: no answer read (%v); nothing was changed", candidate, err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true, nil
	}
	return false, fmt.Errorf("failover to %s not confirmed; nothing was changed", candidate)
}
