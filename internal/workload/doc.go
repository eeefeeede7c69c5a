// Package workload drives client load against a holdfast cluster and checks
// what the clients observed, for the fault-injection suite (test/faults).
//
// # Writes
//
// Setup drops and recreates a table; StartWriters runs clients that insert unique
// ids, each through one Target (the proxy, or a member directly), and
// Writers.Stop returns every attempt as a Write: its id, its interval of
// local time, its Outcome and, when acknowledged, the member that accepted
// it, its timeline and the WAL insert position just after the row. Present
// reads the ids that survived (on the final primary, after healing), and
// Check compares the two.
//
// Outcomes follow the client's knowledge, Jepsen style:
//
//   - Acked: the statement returned success (the commit was acknowledged).
//   - Failed: certainly not committed: the connection could not be opened,
//     no byte of the statement was written to the socket (counted by this
//     package on the socket itself; pgconn.SafeToRetry is not trusted, as
//     pgx v5.12 reports it true for a statement the server received when the
//     server closes the connection before answering), or the server
//     answered with an ERROR (not FATAL/PANIC), e.g.
//     read_only_sql_transaction (25006); an ERROR aborts the
//     single-statement transaction.
//   - Unknown: the statement was sent and no verdict came back (connection
//     lost, client-side timeout, cancellation, or a FATAL such as
//     admin_shutdown 57P01, which PostgreSQL may send after a local commit,
//     e.g. while waiting for synchronous replication). An Unknown id may or
//     may not be present; it is never counted lost.
//
// Statement timeouts are enforced on the client only (the connection is
// dropped and the outcome is Unknown), never with the server's
// statement_timeout: PostgreSQL reports a commit whose wait for synchronous
// replication is cancelled as a success (with a WARNING), which would turn an
// unreplicated write into an acknowledged one.
//
// # What Check proves
//
//   - Lost acknowledged writes: Acked and not Present. In synchronous mode
//     any loss is a failure. In asynchronous mode losses are bounded: for
//     each (member, timeline) holding lost writes, the span from the lowest
//     recorded LSN of a lost write to the highest recorded LSN of an acked
//     write on that member and timeline must not exceed LossBoundBytes plus
//     a slack (SlackBytes, default DefaultSlackBytes) that covers the
//     records between a write's recorded LSN and the end of its commit
//     record. The span is a lower bound of the WAL the failover discarded,
//     so exceeding the bound proves a violation; staying within it does not
//     prove the discarded tail was small (WAL written after the last acked
//     write is invisible to the clients).
//   - Acknowledged-but-reported-failed: a Failed id that is present is a
//     violation (the client was told the write did not happen).
//   - Split brain (proven): member A acknowledged writes a1 and a2 on the
//     same timeline and another member B acknowledged b with
//     a1.End < b.Start and b.End < a2.Start. A's tenure as primary of that
//     timeline (it accepted a write before b was sent and another after b
//     was acknowledged, without ever switching timeline, so without ever
//     being demoted and re-promoted) overlaps B's acceptance of b: two
//     primaries of divergent histories during one interval. This does not
//     prove A was responsive at the instant B accepted b (A may have been
//     frozen, e.g. by SIGSTOP, and resumed on its old timeline); it proves
//     that both branches accepted writes after they diverged, so one of
//     them must lose acknowledged writes. A legitimate
//     A → B → A failover sequence puts a2 on a newer timeline, so it is not
//     flagged; neither are writes whose intervals merely overlap, nor
//     adjacent non-interleaved tenures.
//   - Suspicious (reported in Result.Suspicious, not claimed as split
//     brain): two members acknowledging writes on the same timeline number
//     (promotions that forked the same parent timeline), and a member
//     acknowledging a write on an older timeline after another member's
//     write on a newer timeline had been acknowledged.
//   - Unavailability: the longest interval without an acknowledged write,
//     over every acknowledged write whatever its target (only a primary
//     acknowledges a write), measured between consecutive acknowledgements'
//     End times and from the last acknowledgement to the last attempt's
//     End. The start of the run (first attempt to first acknowledgement) is
//     reported apart as FirstAck: start writers on a healthy cluster.
//   - Client errors: every attempt not acknowledged (Failed + Unknown), on
//     every target, including writes sent on purpose to a replica.
//
// Check cannot see what no client observed: a primary that accepted no
// workload write during another's tenure is not detected, and times are one
// process's local clock (Start/End carry Go's monotonic reading; do not
// compare Writes gathered in different processes).
//
// # Register
//
// StartRegister runs clients that read and write one row (a register) with
// unique values through one DSN; Register.Stop returns the history and
// CheckLinearizable checks it with porcupine against RegisterModel. Reads
// that failed or whose outcome is unknown are dropped (a read has no
// effect); failed writes are dropped (certainly no effect); writes with an
// unknown outcome are kept with Return = math.MaxInt64: they may take effect
// at any moment after their call, or never (linearized after everything
// else). After an unknown outcome a client continues under a new porcupine
// ClientId, since its old one has an operation that never returns.
//
// A register is linearizable only if no acknowledged write can be lost: in
// asynchronous mode a failover may drop acknowledged writes (or even the
// row itself, if it had not reached the new primary; a read then sees
// Missing), so an Illegal verdict there measures the mode, not a bug. Expect
// porcupine.Ok in synchronous modes.
//
// # Report
//
// FormatReport renders one markdown table of scenario × mode rows
// (unavailability, acknowledged writes lost, client errors, split brain,
// healed without a human) in a stable order; RowFromResult fills a Row
// from a Result.
package workload
