package decide

// Shutdown returns, in order, what a member does when its agent is asked
// to stop (SIGTERM, `holdfast down`, Ctrl-C on `up`), observed as o (the
// last loop's view and lease: the agent does not read the store again on
// the way out).
//
//   - PostgreSQL stops first (a fast shutdown, under the lease, which the
//     agent keeps alive meanwhile): a replica promoted before the shutdown
//     checkpoint reached it would lack the WAL tail, and no other member
//     may be promoted while this one still accepts writes.
//   - Then, only if this member holds the leader key under its current
//     lease: the final checkpoint is published as the optime (the
//     successor knows the last WAL written), and the key is released, so a
//     replica takes over at once instead of a lease TTL later.
//
// Contract for the executor: a failed ActStop ends the list — PostgreSQL
// may still accept writes, so the key is kept and expires with the lease.
// After a successful stop every other action is best effort: a failure is
// logged and the next still runs (PostgreSQL is down, so releasing the key
// is safe even when the final position could not be published; the
// candidates then compare their own reports).
//
// A witness runs no database: it only releases a key it somehow holds.
func Shutdown(o Observation) []Action {
	l := o.View.Leader
	holdsKey := o.Lease.Held && l != nil && l.Name == o.Self.Name && l.LeaseID == o.Lease.ID
	var acts []Action
	if !o.Self.Witness {
		acts = append(acts, Action{Kind: ActStop, Reason: "the agent is shutting down"})
		if holdsKey {
			acts = append(acts, Action{Kind: ActPublishCheckpoint, Reason: "the agent is shutting down"})
		}
	}
	if holdsKey {
		acts = append(acts, Action{Kind: ActReleaseLeader, Reason: "the agent is shutting down: handing over at once"})
	}
	return acts
}
