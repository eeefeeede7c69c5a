package api

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
)

// t0 is when the test snapshots' loop completed and the store was read.
var t0 = time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

const mib = 1 << 20

// leaderLSN is the primary's published position in the test views.
const leaderLSN = cluster.LSN(100 * mib)

// testView is a three-member cluster led by pg-0 on timeline 2.
func testView() cluster.View {
	return cluster.View{
		Revision: 7,
		Init:     cluster.InitState{Present: true, SystemID: "7300000000000000001"},
		Leader:   &cluster.Leader{Name: "pg-0", LeaseID: 1, Revision: 5},
		Members: map[string]cluster.MemberInfo{
			"pg-0": {Name: "pg-0", Host: "10.0.0.1", Port: 5432, APIURL: "http://10.0.0.1:8008"},
			"pg-1": {Name: "pg-1", Host: "10.0.0.2", Port: 5432, APIURL: "http://10.0.0.2:8008", Tags: map[string]string{"zone": "a"}},
			"pg-2": {Name: "pg-2", Host: "10.0.0.3", Port: 5432},
			"w-0":  {Name: "w-0", Witness: true},
		},
		Statuses: map[string]cluster.MemberStatus{
			"pg-0": {Name: "pg-0", Role: cluster.RolePrimary, State: cluster.StateRunning, Position: cluster.Position{Timeline: 2, LSN: leaderLSN}},
			"pg-1": {Name: "pg-1", Role: cluster.RoleReplica, State: cluster.StateStreaming, Position: cluster.Position{Timeline: 2, LSN: leaderLSN - mib}, Following: "pg-0", Streaming: true},
			"w-0":  {Name: "w-0", Role: cluster.RoleWitness, State: cluster.StateRunning},
		},
		Optime: &cluster.Optime{Position: cluster.Position{Timeline: 2, LSN: leaderLSN - 10*mib}, Leader: "pg-0"},
		History: []cluster.HistoryEntry{
			{Timeline: 2, SwitchLSN: 0x3000000, Leader: "pg-0", Reason: "bootstrap failover", At: t0.Add(-time.Hour)},
		},
		Config: &cluster.Config{TTL: 4 * time.Second, LoopInterval: time.Second, MaximumLagOnFailover: mib, PrimaryStartTimeout: 10 * time.Second,
			SynchronousMode: cluster.SyncOff, SynchronousNodeCount: 1},
	}
}

// primaryState is pg-0, a healthy primary, as of t0.
func primaryState() MemberState {
	return MemberState{
		Cluster: "prod", Name: "pg-0", Role: cluster.RolePrimary, State: cluster.StateRunning,
		PGRunning: true, PGReady: true,
		Position:       cluster.Position{Timeline: 2, LSN: leaderLSN},
		HoldsLeaderKey: true, LeaseValidFor: 3 * time.Second,
		Tags:          map[string]string{"zone": "a"},
		LoopHeartbeat: t0, LoopInterval: time.Second, TTL: 4 * time.Second, LastLoopDuration: 12 * time.Millisecond,
		View: testView(), ViewAt: t0, MaxLagOnFailover: mib,
	}
}

// replicaState is pg-1, streaming 1 MiB behind the primary, as of t0.
func replicaState() MemberState {
	return MemberState{
		Cluster: "prod", Name: "pg-1", Role: cluster.RoleReplica, State: cluster.StateStreaming,
		PGRunning: true, PGReady: true, InRecovery: true, Streaming: true,
		Position:      cluster.Position{Timeline: 2, LSN: leaderLSN - mib},
		LeaseValidFor: 3 * time.Second,
		Tags:          map[string]string{"zone": "a", "rack": "r1", "nofailover": "true"},
		LoopHeartbeat: t0, LoopInterval: time.Second, TTL: 4 * time.Second,
		View: testView(), ViewAt: t0, MaxLagOnFailover: mib,
	}
}

func TestCheck(t *testing.T) {
	const soon = 100 * time.Millisecond // the default "now": t0 + soon
	type tc struct {
		name   string
		state  func() MemberState
		mutate func(*MemberState)
		url    string        // path?query
		after  time.Duration // now = t0 + after; 0 means soon
		want   bool
		status int // expected *Error status; 0 means no error
	}
	P, R := primaryState, replicaState
	tests := []tc{
		// The primary endpoints: the leader key under a live lease, role
		// primary, PostgreSQL answering and out of recovery.
		{name: "root is primary", state: P, url: "/", want: true},
		{name: "primary", state: P, url: "/primary", want: true},
		{name: "read-write", state: P, url: "/read-write", want: true},
		{name: "master alias", state: P, url: "/master", want: true},
		{name: "leader", state: P, url: "/leader", want: true},
		{name: "replica is not primary", state: R, url: "/primary"},
		{name: "replica is not root", state: R, url: "/"},
		{name: "replica is not leader", state: R, url: "/leader"},
		{name: "lease counted down: stuck loop stops advertising primary", state: P, url: "/primary", after: 3 * time.Second},
		{name: "lease counted down: leader too", state: P, url: "/leader", after: 3 * time.Second},
		{name: "lease just before expiry", state: P, url: "/primary", after: 3*time.Second - time.Nanosecond, want: true},
		{name: "no lease duration", state: P, mutate: func(s *MemberState) { s.LeaseValidFor = 0 }, url: "/leader"},
		{name: "no heartbeat, no lease", state: P, mutate: func(s *MemberState) { s.LoopHeartbeat = time.Time{} }, url: "/primary"},
		{name: "promoting: key held, still in recovery", state: P, mutate: func(s *MemberState) { s.InRecovery = true }, url: "/primary"},
		{name: "promoting: leader anyway", state: P, mutate: func(s *MemberState) { s.InRecovery = true }, url: "/leader", want: true},
		{name: "primary PostgreSQL down", state: P, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/primary"},
		{name: "primary PostgreSQL down: still leader", state: P, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/leader", want: true},
		{name: "primary not answering", state: P, mutate: func(s *MemberState) { s.PGReady = false }, url: "/read-write"},
		{name: "writable without the key is not primary", state: P, mutate: func(s *MemberState) { s.HoldsLeaderKey = false }, url: "/primary"},
		{name: "key but replica role", state: P, mutate: func(s *MemberState) { s.Role = cluster.RoleReplica }, url: "/primary"},
		{name: "primary ignores tags (Patroni)", state: P, url: "/primary?tag_zone=b", want: true},
		{name: "root ignores tags", state: P, url: "/?tag_missing=x", want: true},
		{name: "leader ignores tags", state: P, url: "/leader?tag_zone=b", want: true},
		{name: "primary ignores lag", state: P, url: "/primary?lag=0", want: true},
		{name: "primary ignores noloadbalance", state: P, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/primary", want: true},
		{name: "standby-leader: no standby clusters", state: P, url: "/standby-leader"},
		{name: "standby_leader alias", state: P, url: "/standby_leader"},
		{name: "malformed lag on primary", state: P, url: "/primary?lag=abc", status: 400},

		// /replica: a running, answering standby that is not the leader and
		// not tagged noloadbalance.
		{name: "replica", state: R, url: "/replica", want: true},
		{name: "primary is not replica", state: P, url: "/replica"},
		{name: "standby without leader is a replica", state: R, mutate: func(s *MemberState) { s.Role, s.Streaming = cluster.RoleStandbyNoLeader, false }, url: "/replica", want: true},
		{name: "noloadbalance", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/replica"},
		{name: "replica not answering", state: R, mutate: func(s *MemberState) { s.PGReady = false }, url: "/replica"},
		{name: "replica down", state: R, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/replica"},
		{name: "replica out of recovery (fence pending)", state: R, mutate: func(s *MemberState) { s.InRecovery = false }, url: "/replica"},
		{name: "replica holding the key", state: R, mutate: func(s *MemberState) { s.HoldsLeaderKey = true }, url: "/replica"},
		{name: "uninitialized", state: R, mutate: func(s *MemberState) { s.Role = cluster.RoleUninitialized }, url: "/replica"},
		{name: "witness", state: R, mutate: func(s *MemberState) { s.Role, s.PGRunning, s.PGReady = cluster.RoleWitness, false, false }, url: "/replica"},
		{name: "stopped", state: R, mutate: func(s *MemberState) { s.Role, s.PGRunning, s.PGReady = cluster.RoleStopped, false, false }, url: "/read-only"},
		{name: "replica without streaming still a replica", state: R, mutate: func(s *MemberState) { s.Streaming = false }, url: "/replica", want: true},
		{name: "replica with a stale loop still a replica", state: R, url: "/replica", after: time.Minute, want: true},

		// ?lag: bytes or PostgreSQL units; unknown lag is too much lag.
		{name: "lag exactly the limit", state: R, url: "/replica?lag=1048576", want: true},
		{name: "lag one byte over", state: R, url: "/replica?lag=1048575"},
		{name: "lag 1MB", state: R, url: "/replica?lag=1MB", want: true},
		{name: "lag 1024kB", state: R, url: "/replica?lag=1024kB", want: true},
		{name: "lag 1023kB", state: R, url: "/replica?lag=1023kB"},
		{name: "lag 1GB", state: R, url: "/replica?lag=1GB", want: true},
		{name: "lag 1TB", state: R, url: "/replica?lag=1TB", want: true},
		{name: "lag 1MiB", state: R, url: "/replica?lag=1MiB", want: true},
		{name: "lag with B", state: R, url: "/replica?lag=1048576B", want: true},
		{name: "lag zero", state: R, url: "/replica?lag=0"},
		{name: "lag not a number", state: R, url: "/replica?lag=abc", status: 400},
		{name: "lag empty", state: R, url: "/replica?lag=", status: 400},
		{name: "lag negative", state: R, url: "/replica?lag=-1", status: 400},
		{name: "lag fraction", state: R, url: "/replica?lag=1.5MB", status: 400},
		{name: "lag units are case-sensitive as in PostgreSQL", state: R, url: "/replica?lag=1mb", status: 400},
		{name: "lag unknown unit", state: R, url: "/replica?lag=1PB", status: 400},
		{name: "lag overflow", state: R, url: "/replica?lag=99999999999TB", status: 400},
		{name: "lag given twice", state: R, url: "/replica?lag=1MB&lag=2MB", status: 400},
		{name: "lag on read-only", state: R, url: "/read-only?lag=1MB", want: true},
		{name: "lag on read-only too far", state: R, url: "/read-only?lag=1kB"},
		{name: "lag unknown: store read older than ttl", state: R, url: "/replica?lag=1GB", after: 4*time.Second + time.Millisecond},
		{name: "lag known: store read exactly ttl old", state: R, url: "/replica?lag=1GB", after: 4 * time.Second, want: true},
		{name: "stale store does not matter without lag", state: R, url: "/replica", after: 10 * time.Second, want: true},
		{name: "lag unknown: never read the store", state: R, mutate: func(s *MemberState) { s.View, s.ViewAt = cluster.View{}, time.Time{} }, url: "/replica?lag=1GB"},
		{name: "lag unknown: other timeline", state: R, mutate: func(s *MemberState) { s.Position.Timeline = 1 }, url: "/replica?lag=1TB"},
		{name: "lag unknown: no position", state: R, mutate: func(s *MemberState) { s.Position = cluster.Position{} }, url: "/replica?lag=1TB"},
		{name: "lag unknown: no ttl to judge the store read", state: R, mutate: func(s *MemberState) { s.TTL = 0 }, url: "/replica?lag=1TB"},
		{name: "lag against optime without leader", state: R, mutate: func(s *MemberState) { s.View.Leader = nil }, url: "/replica?lag=0", want: true},
		{name: "lag against optime when the leader's status is gone", state: R, mutate: func(s *MemberState) { delete(s.View.Statuses, "pg-0") }, url: "/replica?lag=0", want: true},
		{name: "lag unknown: no leader, no optime", state: R, mutate: func(s *MemberState) { s.View.Leader, s.View.Optime = nil, nil }, url: "/replica?lag=1TB"},
		{name: "lag: leader status not primary yet falls back to optime", state: R, mutate: func(s *MemberState) {
			st := s.View.Statuses["pg-0"]
			st.Role = cluster.RoleStandbyNoLeader
			s.View.Statuses["pg-0"] = st
			s.Position.LSN = leaderLSN - 11*mib
		}, url: "/replica?lag=1MB", want: true},
		{name: "replica ahead of the published position has lag 0", state: R, mutate: func(s *MemberState) { s.Position.LSN = leaderLSN + 5 }, url: "/replica?lag=0", want: true},
		{name: "noloadbalance beats lag", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/replica?lag=1GB"},

		// ?lag measures replayed WAL: a replica receiving everything but
		// replaying nothing (pg_wal_replay_pause) serves stale reads.
		{name: "replay paused 10MB behind: replica lag fails", state: R, mutate: replayBehind(10 * mib), url: "/replica?lag=1MB"},
		{name: "replay paused 10MB behind: within a larger lag", state: R, mutate: replayBehind(10 * mib), url: "/replica?lag=11MB", want: true},
		{name: "replay paused: replica without lag still answers", state: R, mutate: replayBehind(10 * mib), url: "/replica", want: true},
		{name: "replay paused: read-only with lag fails", state: R, mutate: replayBehind(10 * mib), url: "/read-only?lag=1MB"},
		{name: "replay paused: async with lag fails", state: R, mutate: replayBehind(10 * mib), url: "/async?lag=1MB"},
		{name: "replay caught up with receive: same as before", state: R, mutate: replayBehind(0), url: "/replica?lag=1MB", want: true},
		{name: "replay reported beyond receive reads as receive", state: R, mutate: func(s *MemberState) { s.ReplayLSN = s.Position.LSN + mib }, url: "/replica?lag=1MB", want: true},

		// ?replication_state.
		{name: "replication_state streaming", state: R, url: "/replica?replication_state=streaming", want: true},
		{name: "replication_state streaming, not streaming", state: R, mutate: func(s *MemberState) { s.Streaming = false }, url: "/replica?replication_state=streaming"},
		{name: "replication_state archive recovery", state: R, mutate: func(s *MemberState) { s.Streaming = false }, url: "/replica?replication_state=in+archive+recovery", want: true},
		{name: "replication_state unknown value", state: R, url: "/replica?replication_state=bogus"},
		{name: "replication_state on async", state: R, url: "/async?replication_state=streaming", want: true},

		// ?tag_<key>=<value>: every one must match; a missing tag never does.
		{name: "tag matches", state: R, url: "/replica?tag_zone=a", want: true},
		{name: "tag differs", state: R, url: "/replica?tag_zone=b"},
		{name: "tag missing", state: R, url: "/replica?tag_dc=x"},
		{name: "two tags match", state: R, url: "/replica?tag_zone=a&tag_rack=r1", want: true},
		{name: "one of two tags differs", state: R, url: "/replica?tag_zone=a&tag_rack=r2"},
		{name: "tag value is compared as written", state: R, url: "/replica?tag_nofailover=True"},
		{name: "tag value exact", state: R, url: "/replica?tag_nofailover=true", want: true},
		{name: "empty tag value needs an empty tag", state: R, url: "/replica?tag_zone="},
		{name: "tags on read-only primary apply (Patroni)", state: P, url: "/read-only?tag_zone=b"},
		{name: "tags on read-only primary match", state: P, url: "/read-only?tag_zone=a", want: true},
		{name: "tags on health", state: R, url: "/health?tag_zone=b"},
		{name: "tags with lag", state: R, url: "/replica?tag_zone=a&lag=2MB", want: true},
		{name: "unknown parameters are ignored", state: R, url: "/replica?foo=bar", want: true},
		{name: "malformed lag beats tags", state: R, url: "/replica?tag_zone=a&lag=x", status: 400},

		// /read-only: the primary or a replica.
		{name: "read-only primary", state: P, url: "/read-only", want: true},
		{name: "read-only primary with noloadbalance", state: P, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/read-only", want: true},
		{name: "read-only primary ignores lag", state: P, url: "/read-only?lag=0", want: true},
		{name: "read-only replica", state: R, url: "/read-only", want: true},
		{name: "read-only replica noloadbalance", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/read-only"},
		{name: "read-only primary lease expired and not a replica", state: P, url: "/read-only", after: 5 * time.Second},

		// Synchronous replication does not exist yet: /sync never, /async
		// every replica.
		{name: "sync replica", state: R, url: "/sync"},
		{name: "synchronous replica", state: R, url: "/synchronous"},
		{name: "sync primary", state: P, url: "/sync"},
		{name: "sync when flagged", state: R, mutate: func(s *MemberState) { s.Sync = true }, url: "/sync", want: true},
		{name: "synchronous when flagged", state: R, mutate: func(s *MemberState) { s.Sync = true }, url: "/synchronous?lag=1MB", want: true},
		{name: "read-only-sync primary", state: P, url: "/read-only-sync", want: true},
		{name: "read-only-synchronous primary", state: P, url: "/read-only-synchronous", want: true},
		{name: "read-only-sync async replica", state: R, url: "/read-only-sync"},
		{name: "read-only-sync sync replica", state: R, mutate: func(s *MemberState) { s.Sync = true }, url: "/read-only-sync", want: true},
		{name: "quorum", state: R, url: "/quorum"},
		{name: "read-only-quorum primary", state: P, url: "/read-only-quorum", want: true},
		{name: "read-only-quorum replica", state: R, url: "/read-only-quorum"},
		{name: "async replica", state: R, url: "/async", want: true},
		{name: "asynchronous replica", state: R, url: "/asynchronous", want: true},
		{name: "async with lag", state: R, url: "/async?lag=1MB", want: true},
		{name: "async too far", state: R, url: "/asynchronous?lag=1kB"},
		{name: "async primary", state: P, url: "/async"},
		{name: "async sync replica", state: R, mutate: func(s *MemberState) { s.Sync = true }, url: "/async"},
		{name: "async noloadbalance", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/async"},

		// /health: PostgreSQL runs and answers, whatever the role.
		{name: "health primary", state: P, url: "/health", want: true},
		{name: "health replica", state: R, url: "/health", want: true},
		{name: "health replica noloadbalance", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/health", want: true},
		{name: "health starting", state: R, mutate: func(s *MemberState) { s.PGReady = false }, url: "/health"},
		{name: "health down", state: R, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/health"},
		{name: "health without store", state: R, mutate: func(s *MemberState) { s.View, s.ViewAt = cluster.View{}, time.Time{} }, url: "/health", want: true},

		// /readiness: the leader, or a streaming replica within the lag.
		{name: "readiness primary", state: P, url: "/readiness", want: true},
		{name: "readiness primary restarting in place", state: P, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/readiness", want: true},
		{name: "readiness primary lease expired", state: P, url: "/readiness", after: 3 * time.Second},
		{name: "readiness replica within max lag", state: R, url: "/readiness", want: true},
		{name: "readiness replica beyond max lag", state: R, mutate: func(s *MemberState) { s.MaxLagOnFailover = mib - 1 }, url: "/readiness"},
		{name: "readiness lag override", state: R, mutate: func(s *MemberState) { s.MaxLagOnFailover = 0 }, url: "/readiness?lag=2MB", want: true},
		{name: "readiness lag override stricter", state: R, url: "/readiness?lag=1kB"},
		{name: "readiness mode write", state: R, url: "/readiness?mode=write", want: true},
		{name: "readiness replay behind: not ready (apply is the default)", state: R, mutate: replayBehind(10 * mib), url: "/readiness"},
		{name: "readiness replay behind, mode apply", state: R, mutate: replayBehind(10 * mib), url: "/readiness?mode=apply"},
		{name: "readiness replay behind, mode write: received WAL is current", state: R, mutate: replayBehind(10 * mib), url: "/readiness?mode=write", want: true},
		{name: "readiness replay behind within the lag", state: R, mutate: replayBehind(10 * mib), url: "/readiness?lag=11MB", want: true},
		{name: "readiness mode apply", state: R, url: "/readiness?mode=apply", want: true},
		{name: "readiness bad mode", state: R, url: "/readiness?mode=fast", status: 400},
		{name: "readiness bad lag", state: R, url: "/readiness?lag=lots", status: 400},
		{name: "readiness not streaming", state: R, mutate: func(s *MemberState) { s.Streaming = false }, url: "/readiness"},
		{name: "readiness PostgreSQL down", state: R, mutate: func(s *MemberState) { s.PGRunning, s.PGReady = false, false }, url: "/readiness"},
		{name: "readiness store read stale", state: R, url: "/readiness", after: 5 * time.Second},
		{name: "readiness other timeline", state: R, mutate: func(s *MemberState) { s.Position.Timeline = 1 }, url: "/readiness"},
		{name: "readiness ignores tags", state: R, url: "/readiness?tag_zone=b", want: true},
		{name: "readiness noloadbalance replica is still ready", state: R, mutate: func(s *MemberState) { s.NoLoadBalance = true }, url: "/readiness", want: true},
		{name: "readiness uninitialized", state: R, mutate: func(s *MemberState) {
			s.Role, s.PGRunning, s.PGReady, s.InRecovery, s.Streaming = cluster.RoleUninitialized, false, false, false, false
		}, url: "/readiness"},

		// /liveness: the loop alone.
		{name: "liveness fresh", state: R, url: "/liveness", want: true},
		{name: "liveness at the threshold (ttl)", state: R, url: "/liveness", after: 4 * time.Second, want: true},
		{name: "liveness past the threshold", state: R, url: "/liveness", after: 4*time.Second + time.Nanosecond},
		{name: "liveness threshold is 2 × loop when larger", state: R, mutate: func(s *MemberState) { s.LoopInterval = 3 * time.Second }, url: "/liveness", after: 6 * time.Second, want: true},
		{name: "liveness past 2 × loop", state: R, mutate: func(s *MemberState) { s.LoopInterval = 3 * time.Second }, url: "/liveness", after: 6*time.Second + 1},
		{name: "liveness fallback threshold", state: R, mutate: func(s *MemberState) { s.TTL, s.LoopInterval = 0, 0 }, url: "/liveness", after: 8 * time.Second, want: true},
		{name: "liveness past the fallback", state: R, mutate: func(s *MemberState) { s.TTL, s.LoopInterval = 0, 0 }, url: "/liveness", after: 9 * time.Second},
		{name: "liveness before the first loop", state: R, mutate: func(s *MemberState) { s.LoopHeartbeat = time.Time{} }, url: "/liveness"},
		{name: "liveness paused tolerates a stuck loop", state: R, mutate: func(s *MemberState) { s.Paused = true }, url: "/liveness", after: time.Hour, want: true},
		{name: "liveness PostgreSQL down", state: R, mutate: func(s *MemberState) { s.PGRunning, s.PGReady, s.State = false, false, cluster.StateCrashed }, url: "/liveness", want: true},
		{name: "liveness store unreachable", state: P, mutate: func(s *MemberState) { s.View, s.ViewAt = cluster.View{}, t0.Add(-time.Hour) }, url: "/liveness", want: true},
		{name: "liveness lease lost", state: P, mutate: func(s *MemberState) { s.HoldsLeaderKey, s.LeaseValidFor = false, 0 }, url: "/liveness", want: true},
		{name: "liveness ignores a malformed query", state: R, url: "/liveness?lag=abc&mode=x", want: true},
		{name: "liveness primary", state: P, url: "/liveness", after: 2 * time.Second, want: true},

		// Paths.
		{name: "unknown path", state: R, url: "/foo", status: 404},
		{name: "trailing slash", state: R, url: "/replica/", status: 404},
		{name: "patroni monitoring path is not a health check", state: R, url: "/patroni", status: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.state()
			if tc.mutate != nil {
				tc.mutate(&s)
			}
			path, rawQuery, _ := strings.Cut(tc.url, "?")
			q, err := url.ParseQuery(rawQuery)
			if err != nil {
				t.Fatal(err)
			}
			after := tc.after
			if after == 0 {
				after = soon
			}
			ok, err := Check(path, q, s, t0.Add(after))
			if tc.status != 0 {
				var e *Error
				if !errors.As(err, &e) || e.Status != tc.status {
					t.Fatalf("Check(%s) = %v, %v; want an *Error with status %d", tc.url, ok, err, tc.status)
				}
				if ok {
					t.Errorf("Check(%s) ok with an error", tc.url)
				}
				return
			}
			if err != nil {
				t.Fatalf("Check(%s): %v", tc.url, err)
			}
			if ok != tc.want {
				t.Errorf("Check(%s) = %v, want %v", tc.url, ok, tc.want)
			}
		})
	}
}

// TestCheckEveryPath: every advertised path is a health check, and a
// healthy primary or replica passes the ones Patroni says it should.
func TestCheckEveryPath(t *testing.T) {
	now := t0.Add(time.Second)
	want := map[string][2]bool{ // path -> {primary, replica}
		"/": {true, false}, "/primary": {true, false}, "/read-write": {true, false}, "/master": {true, false},
		"/leader": {true, false}, "/standby-leader": {false, false}, "/standby_leader": {false, false},
		"/replica": {false, true}, "/read-only": {true, true},
		"/sync": {false, false}, "/synchronous": {false, false}, "/read-only-sync": {true, false}, "/read-only-synchronous": {true, false},
		"/quorum": {false, false}, "/read-only-quorum": {true, false},
		"/async": {false, true}, "/asynchronous": {false, true},
		"/health": {true, true}, "/liveness": {true, true}, "/readiness": {true, true},
		"/archive": {false, false}, // the test view's primary reports no archive status
	}
	paths := HealthPaths()
	if len(paths) != len(want) {
		t.Errorf("HealthPaths() has %d paths, the test knows %d", len(paths), len(want))
	}
	for _, p := range paths {
		w, known := want[p]
		if !known {
			t.Errorf("%s: not in the test's table", p)
			continue
		}
		for i, s := range []MemberState{primaryState(), replicaState()} {
			ok, err := Check(p, nil, s, now)
			if err != nil || ok != w[i] {
				t.Errorf("Check(%s) for %s = %v, %v; want %v", p, s.Name, ok, err, w[i])
			}
		}
	}
}

// replayBehind makes the replica's replay trail the primary by d bytes
// while it has received up to 1 MiB behind (d 0: replay reports exactly
// what was received).
func replayBehind(d int64) func(*MemberState) {
	return func(s *MemberState) {
		s.ReplayLSN = s.Position.LSN
		if d > 0 {
			s.ReplayLSN = leaderLSN - cluster.LSN(d)
		}
	}
}

func TestReplicationLag(t *testing.T) {
	now := t0.Add(time.Second)
	for _, mode := range []LagMode{LagWrite, LagApply} {
		if lag, ok := ReplicationLag(replicaState(), now, mode); !ok || lag != mib {
			t.Errorf("%s: replica lag = %d, %v; want %d", mode, lag, ok, mib)
		}
		if lag, ok := ReplicationLag(primaryState(), now, mode); !ok || lag != 0 {
			t.Errorf("%s: primary lag = %d, %v; want 0", mode, lag, ok)
		}
		s := replicaState()
		s.View.Statuses["pg-0"] = cluster.MemberStatus{Role: cluster.RolePrimary, Position: cluster.Position{Timeline: 2, LSN: 1<<64 - 1}}
		s.Position.LSN = 1
		if lag, ok := ReplicationLag(s, now, mode); !ok || lag != 1<<63-1 {
			t.Errorf("%s: huge lag = %d, %v; want it saturated at MaxInt64", mode, lag, ok)
		}
	}
	// Replay paused 10 MiB behind: write sees what was received, apply
	// what queries see.
	s := replicaState()
	replayBehind(10 * mib)(&s)
	if lag, ok := ReplicationLag(s, now, LagWrite); !ok || lag != mib {
		t.Errorf("write lag with replay behind = %d, %v; want %d (received)", lag, ok, mib)
	}
	if lag, ok := ReplicationLag(s, now, LagApply); !ok || lag != 10*mib {
		t.Errorf("apply lag with replay behind = %d, %v; want %d (replayed)", lag, ok, 10*mib)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "1": 1, "1048576": mib, "16kB": 16 << 10, "64MB": 64 * mib, "1GB": 1 << 30, "2TB": 2 << 40,
		"1KiB": 1 << 10, "1MiB": mib, " 8MB ": 8 * mib, "8 MB": 8 * mib, "3B": 3,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "abc", "-1", "+1", "1.5MB", "1mb", "1 PB", "0x10", "MB", "9223372036854775808", "8388608TB"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("ParseSize(%q): error does not quote the input: %v", in, err)
		}
	}
}

func TestReplicationState(t *testing.T) {
	s := replicaState()
	if got := ReplicationState(s); got != "streaming" {
		t.Errorf("streaming replica: %q", got)
	}
	s.Streaming = false
	if got := ReplicationState(s); got != "in archive recovery" {
		t.Errorf("replica not streaming: %q", got)
	}
	if got := ReplicationState(primaryState()); got != "" {
		t.Errorf("primary: %q", got)
	}
}

// A primary serving under the failsafe holds no leader key the store can
// show (the store is out of reach) but may accept writes until its fence
// point: /primary answers 200 until WritableFor has run out, counted from
// the last loop, and the body says for how long.
func TestPrimaryUnderFailsafe(t *testing.T) {
	s := primaryState()
	s.HoldsLeaderKey, s.LeaseValidFor = false, 0
	s.WritableFor = 2 * time.Second
	for _, c := range []struct {
		at   time.Duration
		ok   bool
		left time.Duration
	}{
		{0, true, 2 * time.Second},
		{1500 * time.Millisecond, true, 500 * time.Millisecond},
		{2 * time.Second, false, 0},
		{time.Minute, false, 0},
	} {
		now := t0.Add(c.at)
		ok, err := Check("/primary", nil, s, now)
		if err != nil || ok != c.ok {
			t.Errorf("at +%s: /primary = %v, %v; want %v", c.at, ok, err, c.ok)
		}
		if got := WritableRemaining(s, now); got != c.left {
			t.Errorf("at +%s: WritableRemaining = %s, want %s", c.at, got, c.left)
		}
		if got := Health(s, now).WritableSeconds; got != c.left.Seconds() {
			t.Errorf("at +%s: writable_seconds = %v, want %v", c.at, got, c.left.Seconds())
		}
	}
	// Writable time does not make a replica, or a primary whose PostgreSQL
	// is in recovery, the primary.
	r := s
	r.InRecovery = true
	if ok, _ := Check("/primary", nil, r, t0); ok {
		t.Error("/primary answers 200 for a PostgreSQL in recovery")
	}
	r = s
	r.Role = cluster.RoleReplica
	if ok, _ := Check("/primary", nil, r, t0); ok {
		t.Error("/primary answers 200 for a replica")
	}
}
