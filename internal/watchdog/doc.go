// Package watchdog arms a Linux watchdog (/dev/watchdog: the softdog module
// or a hardware timer) while this member runs a writable primary, so that
// a frozen agent cannot leave that primary writable after its leader lease
// has expired and another member has been promoted.
//
// Why. A live agent fences its primary (stops PostgreSQL) before its lease
// can expire, and a dead agent takes PostgreSQL with it (PDEATHSIG). A
// *frozen* agent does neither: SIGSTOP, a hung kernel call, a stalled
// cgroup or swap storm stops the loop, but not the postmaster. The watchdog
// covers that case: the agent pings it after every successful lease
// renewal; if the pings stop, the kernel resets the machine before the lease
// can expire for the other members.
//
// Margin arithmetic. Let s be the start of the last successful renewal on
// this machine's monotonic clock; the store cannot expire the lease before
// s + TTL (the agent's lease deadline). The kick that follows the renewal
// happens at k ≥ s and makes the kernel reset the machine at k + timeout,
// where
//
//	timeout = TTL − safety_margin, rounded down to whole seconds
//
// (whole seconds: the unit of the Linux watchdog API; rounding down only
// brings the reset earlier). A frozen agent is reset before its lease can
// expire when k + timeout < s + TTL, i.e. when the renewal and the kick took
// less than the safety margin. Guard.Kick does not rely on that: it is given
// the time left until the lease deadline and refuses to ping (ErrLate) when
// the reset would not come at least kickSlack before it; the previous
// ping's reset point, which was safe for an earlier deadline, then stands.
//
// The default safety margin is one loop interval (config: safety_margin 0).
// The loop bounds each renewal by a loop interval, so a successful renewal
// always leaves room for the kick; and the reset point, s + TTL −
// loop_interval, is exactly the fence point, where a live primary that
// could not renew stops PostgreSQL: the watchdog never shortens how long a
// primary survives a store outage. With holdfast's defaults (TTL 4s, loop
// 1s) the timeout is 3s. Patroni's default margin of 5s would leave no
// timeout at all for a 4s TTL. The flip side of the default: a live primary
// that reaches its fence point (store unreachable for TTL − loop_interval)
// is reset by the watchdog at about the moment it fences. To fence without
// a reset, choose a margin shorter than the loop interval with a TTL that
// leaves the timeout past the fence point (e.g. ttl 10s, loop_interval 2s,
// safety_margin 1s: fence at s+8s, reset at s+9s, lease expiry at s+10s);
// every renewal must then complete within that margin.
//
// Modes. Off: nothing is opened. Automatic: the watchdog is used when it
// can be opened and its timeout set; otherwise a warning is logged and the
// member leads without it (tried once per leadership term). Required: the
// member must not become a writable primary without an armed watchdog;
// Arm's error tells the agent to refuse leadership.
//
// Limits. A driver built with nowayout cannot be disarmed: every stop of
// an agent that led resets the machine. A crashed agent (kill -9) that was
// leading cannot disarm either; its machine is reset after the timeout,
// although PDEATHSIG has already stopped PostgreSQL. Only one process can
// open a watchdog device: one agent per machine can use it (not `holdfast
// up`'s local clusters). A paused virtual machine pauses its watchdog too.
package watchdog
