package backup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/api"
	"github.com/holdfast/holdfast/internal/cluster"
)

const infoSample = `[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000004","min":"000000010000000000000001"}],
"backup":[{"archive":{"start":"000000010000000000000003","stop":"000000010000000000000004"},"database":{"id":1,"repo-key":1},"error":false,
"info":{"delta":22992578,"repository":{"delta":3043463,"size":3043463},"size":22992578},"label":"20261206-101258F","lsn":{"start":"0/3000028","stop":"0/4000088"},
"prior":null,"reference":null,"timestamp":{"start":1796551978,"stop":1796551999},"type":"full"}],
"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":17716131913272905110,"version":"15"}],"name":"s1","status":{"code":0,"message":"ok"}}]`

func TestParseInfo(t *testing.T) {
	sts, err := ParseInfo([]byte(infoSample))
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 {
		t.Fatalf("stanzas: %d", len(sts))
	}
	s := sts[0]
	if s.Name != "s1" || !s.Exists() || s.SystemID() != "17716131913272905110" || s.WALMax != "000000010000000000000004" || s.ArchiveID != "15-1" {
		t.Fatalf("stanza: %+v", s)
	}
	b, ok := s.Latest()
	if !ok || b.Label != "20261206-101258F" || b.Type != "full" || b.Size != 22992578 || b.RepoSize != 3043463 ||
		b.LSNStop != "0/4000088" || b.Duration() != 21*time.Second || b.SystemID != s.SystemID() {
		t.Fatalf("backup: %+v", b)
	}
	if got := s.RestorableFrom(); !got.Equal(time.Unix(1796551999, 0)) {
		t.Fatalf("restorable from %s", got)
	}
	missing, err := ParseInfo([]byte(`[{"name":"x","status":{"code":1,"message":"missing stanza path"},"backup":[],"db":[],"archive":[]}]`))
	if err != nil || missing[0].Exists() {
		t.Fatalf("missing stanza: %+v %v", missing, err)
	}
	for _, bad := range []string{`{`, `[{"status":{"code":0}}]`, `[{"name":"x","db":[{"id":1,"system-id":"abc"}]}]`} {
		if _, err := ParseInfo([]byte(bad)); err == nil {
			t.Errorf("ParseInfo(%s) accepted", bad)
		}
	}
}

func TestCheckTarget(t *testing.T) {
	sts, _ := ParseInfo([]byte(infoSample))
	st := sts[0]
	end := time.Unix(1796551999, 0)
	now := end.Add(time.Hour)
	cases := []struct {
		name string
		t    Target
		want string // "" = accepted
	}{
		{"latest", Target{}, ""},
		{"after the backup", Target{Time: end.Add(time.Minute)}, ""},
		{"before the oldest backup", Target{Time: end.Add(-time.Second)}, "before the end of the oldest backup"},
		{"in the future", Target{Time: now.Add(time.Second)}, "in the future"},
		{"lsn after", Target{LSN: "0/5000000"}, ""},
		{"lsn before", Target{LSN: "0/3000000"}, "before the end of the oldest backup"},
		{"xid", Target{XID: "1000"}, ""},
	}
	for _, c := range cases {
		err := CheckTarget(st, "", c.t, now)
		if (err == nil) != (c.want == "") || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if err := CheckTarget(Stanza{Name: "empty"}, "", Target{}, now); err == nil || !strings.Contains(err.Error(), "no valid backup") {
		t.Errorf("no backups: %v", err)
	}
}

func TestParseTarget(t *testing.T) {
	if _, err := ParseTarget("2026-12-06T10:00:00Z", "0/1", ""); err == nil {
		t.Error("two targets accepted")
	}
	for _, bad := range [][3]string{{"yesterday", "", ""}, {"", "12345", ""}, {"", "", "-1"}, {"", "", "x"}} {
		if _, err := ParseTarget(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("ParseTarget(%q) accepted", bad)
		}
	}
	tg, err := ParseTarget("2026-12-06T11:00:00.5+01:00", "", "")
	if err != nil || !tg.Time.Equal(time.Date(2026, 12, 6, 10, 0, 0, 5e8, time.UTC)) {
		t.Fatalf("%v %v", tg, err)
	}
	if args := RestoreArgs(tg); args[1] != "--target=2026-12-06 10:00:00.5+00" {
		t.Errorf("restore args %v", args)
	}
	if args := RestoreArgs(Target{}); len(args) != 1 || args[0] != "--type=default" {
		t.Errorf("latest: %v", args)
	}
}

func TestRenderConf(t *testing.T) {
	s := Settings{Repo: PosixRepo("/repo"), Stanza: "pg-1a2b", RetentionFull: 2, WorkDir: "/d/pgbackrest",
		PG: []PGCluster{{Path: "/d/pgdata", Port: 5433, User: "postgres"}, {Path: "/p/pgdata", Port: 5432, User: "postgres"}}, BackupStandby: true}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"[global]\n", "repo1-path=/repo\n", "repo1-retention-full=2\n", "backup-standby=y\n",
		"[pg-1a2b]\n", "pg1-path=/d/pgdata\n", "pg1-port=5433\n", "pg2-path=/p/pgdata\n", "pg2-port=5432\n", "resume=n\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	again, _ := RenderConf(s)
	if again != out {
		t.Error("not deterministic")
	}
	bad := []func(*Settings){
		func(s *Settings) { s.PG = nil },
		func(s *Settings) { s.PG = s.PG[:1] },
		func(s *Settings) { s.Repo.Location = "/repo\nrepo2-path=/x" },
		func(s *Settings) { s.Repo.Location = "repo" },
		func(s *Settings) { s.Stanza = "a b" },
		func(s *Settings) { s.RetentionFull = 0 },
		func(s *Settings) { s.PG[0].Port = 0 },
	}
	for i, f := range bad {
		c := s
		c.PG = append([]PGCluster(nil), s.PG...)
		f(&c)
		if _, err := RenderConf(c); err == nil {
			t.Errorf("bad settings %d accepted", i)
		}
	}
}

func TestArchiveCommandQuotes(t *testing.T) {
	got := ArchiveCommand(ArchiveCommandOptions{Exe: "/opt/it's/holdfast", Grant: "/d/100%/g", Config: "/c", Stanza: "s"})
	want := `'/opt/it'\''s/holdfast' archive-push --grant '/d/100%%/g' --pgbackrest-config '/c' --stanza 's' %p`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	got = ArchiveCommand(ArchiveCommandOptions{Exe: "/h", Grant: "/g", Config: "/c", Stanza: "s", Secrets: "/d/pgbackrest.secrets"})
	want = `'/h' archive-push --grant '/g' --pgbackrest-config '/c' --stanza 's' --secrets '/d/pgbackrest.secrets' %p`
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestGate(t *testing.T) {
	now := time.Duration(0)
	g := &Gate{path: filepath.Join(t.TempDir(), "grant"), now: func() time.Duration { return now }}
	if err := g.Check(); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("never granted: %v", err)
	}
	if err := g.Grant(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	now = 2 * time.Second
	if err := g.Check(); err != nil {
		t.Fatalf("within the grant: %v", err)
	}
	now = 3 * time.Second
	if err := g.Check(); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("at the deadline: %v", err)
	}
	_ = g.Grant(time.Minute)
	if err := g.Revoke(); err != nil {
		t.Fatal(err)
	}
	if err := g.Check(); !errors.Is(err, ErrNotGranted) {
		t.Fatalf("revoked: %v", err)
	}
	if err := g.Grant(-time.Second); err != nil || !errors.Is(g.Check(), ErrNotGranted) {
		t.Fatalf("a non-positive grant revokes: %v", err)
	}
}

func TestCheckTargetSet(t *testing.T) {
	sts, _ := ParseInfo([]byte(infoSample))
	st := sts[0]
	end := time.Unix(1796551999, 0)
	now := end.Add(time.Hour)
	if err := CheckTarget(st, "20261206-101258F", Target{}, now); err != nil {
		t.Errorf("a kept set to the latest point: %v", err)
	}
	if err := CheckTarget(st, "20261201-000000F", Target{}, now); err == nil || !strings.Contains(err.Error(), "no valid backup 20261201-000000F: give one of 20261206-101258F") {
		t.Errorf("a missing set: %v", err)
	}
	if err := CheckTarget(st, "20261206-101258F", Target{Time: end.Add(-time.Second)}, now); err == nil || !strings.Contains(err.Error(), "before the end of the chosen backup (20261206-101258F") {
		t.Errorf("a time before the set: %v", err)
	}
}

func TestCheckNewRepository(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{dir, filepath.Join(dir, "new", "repo")} {
		if err := CheckNewRepository(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for path, want := range map[string]string{
		file:                             "is not a directory",
		filepath.Join(file, "repo"):      "cannot be created: " + file + " is not a directory",
		filepath.Join(file, "a", "repo"): "cannot be created: " + file + " is not a directory",
		"relative/repo":                  "give an absolute path",
	} {
		if err := CheckNewRepository(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
}

func TestCheckOwnerAndUnused(t *testing.T) {
	sts, _ := ParseInfo([]byte(infoSample))
	st := sts[0]
	if err := CheckOwner(st, "17716131913272905110", "/repo"); err != nil {
		t.Errorf("own stanza: %v", err)
	}
	if err := CheckOwner(st, "", "/repo"); err != nil {
		t.Errorf("no data directory yet: %v", err)
	}
	err := CheckOwner(st, "123", "/repo")
	if err == nil || !strings.Contains(err.Error(), "belongs to another cluster (database system identifier 17716131913272905110, 1 backups, newest 20261206-101258F)") {
		t.Errorf("another cluster's stanza: %v", err)
	}
	missing := Stanza{Name: "s1", StatusCode: statusMissingStanzaPath}
	if err := CheckOwner(missing, "123", "/repo"); err != nil {
		t.Errorf("missing stanza: %v", err)
	}
	if err := CheckUnused(missing, "/repo"); err != nil {
		t.Errorf("missing stanza is unused: %v", err)
	}
	if err := CheckUnused(st, "/repo"); err == nil || !strings.Contains(err.Error(), "repository /repo already holds stanza s1") {
		t.Errorf("existing stanza: %v", err)
	}
}

func TestEarlierTimelineSegments(t *testing.T) {
	h, err := ParseHistory([]byte("1\t0/5000060\tno recovery target specified\n\n2\t0/7A00000\tfailover\n"))
	if err != nil || len(h) != 2 || h[0] != (Switch{1, 0x5000060}) || h[1] != (Switch{2, 0x7A00000}) {
		t.Fatalf("ParseHistory = %v, %v", h, err)
	}
	for _, bad := range []string{"x\t0/1\n", "1\n", "1\tzz\n", "0\t0/1\n"} {
		if _, err := ParseHistory([]byte(bad)); err == nil {
			t.Errorf("ParseHistory(%q) accepted", bad)
		}
	}
	const seg = 16 << 20
	names := []string{
		"000000010000000000000003", "000000010000000000000004", // before TL1's switch segment (5)
		"000000010000000000000005", "000000010000000000000009", // the switch segment; a recycled one
		"000000020000000000000006", "000000020000000000000007", // TL2 before its switch (7A → segment 7)
		"00000003000000000000000A", "archive_status", "00000002.history", "000000010000000000000002.00000028.backup",
		"0000000100000000000000zz",
	}
	got := EarlierTimelineSegments(names, h, seg)
	want := []string{"000000010000000000000003", "000000010000000000000004", "000000020000000000000006"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if n := SegmentName(2, 0x1FF, seg); n != "0000000200000001000000FF" {
		t.Errorf("SegmentName = %s", n)
	}
	if got := EarlierTimelineSegments([]string{"000000010000000100000000"}, []Switch{{1, 0x100000000 + 0x2000000}}, seg); len(got) != 1 {
		t.Errorf("a segment past the first 4 GB: %v", got)
	}
}

// TestDescribePrimaryChange: a backup that failed while the leader key
// changed hands, vanished, or was taken again by the same member under a
// new lease is reported as stopped by a role change (PrimaryChanged: take
// it again); under the same term it is not.
func TestDescribePrimaryChange(t *testing.T) {
	at := cluster.Leader{Name: "pg-0", LeaseID: 7, Revision: 3}
	for _, c := range []struct {
		now  *cluster.Leader
		want string
	}{
		{&cluster.Leader{Name: "pg-0", LeaseID: 7, Revision: 9}, ""},
		{&cluster.Leader{Name: "pg-1", LeaseID: 8}, "the primary changed from pg-0 to pg-1"},
		{nil, "the primary pg-0 lost its leadership"},
		{&cluster.Leader{Name: "pg-0", LeaseID: 9}, "the primary pg-0 lost and regained its leadership"},
	} {
		got := describePrimaryChange(at, c.now)
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("now %+v: %q, want %q", c.now, got, c.want)
		}
	}
}

// A member whose backup from a standby runs when it starts to lead stops
// that backup (its primary stepped down; pgBackRest would copy for nothing
// and hold the lock the new primary's stanza check needs); a backup it
// runs as the primary is left alone, and so is one while it keeps its role.
func TestObserveStopsStandbyBackupOnPromotion(t *testing.T) {
	for _, c := range []struct {
		name             string
		standby, leadsTo bool
		wasLeading       bool
		wantStopped      bool
	}{
		{name: "standby backup, member promoted", standby: true, leadsTo: true, wantStopped: true},
		{name: "standby backup, still a standby", standby: true, leadsTo: false},
		{name: "primary backup, still leading", standby: false, leadsTo: true, wasLeading: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			stopped := false
			m := &Member{log: slog.New(slog.DiscardHandler), leading: c.wasLeading,
				job: &Job{Running: true, Standby: c.standby, Primary: "pg-0"}, stopJob: func() { stopped = true }}
			role := cluster.RoleReplica
			if c.leadsTo {
				role = cluster.RolePrimary
			}
			m.Observe(api.MemberState{HoldsLeaderKey: c.leadsTo, Role: role})
			if stopped != c.wantStopped {
				t.Errorf("backup stopped: %v, want %v", stopped, c.wantStopped)
			}
		})
	}
}

// LockHeld recognises pgBackRest's exit code for a lock another process
// holds, through the wrapping Tool.run adds, and nothing else.
func TestLockHeld(t *testing.T) {
	exit := func(code string) error {
		err := exec.Command("sh", "-c", "exit "+code).Run()
		return fmt.Errorf("pgbackrest backup (stanza s): %w: ERROR: [050]: unable to acquire lock", err)
	}
	if !LockHeld(exit("50")) {
		t.Error("exit 50 is a held lock")
	}
	for _, err := range []error{nil, exit("63"), exit("1"), errors.New("unable to acquire lock")} {
		if LockHeld(err) {
			t.Errorf("%v is no held lock", err)
		}
	}
}

// A push cut short leaves a temporary file: it does not count as archived
// (TestBackupArchiveAcrossFailover's restore stopped at such a segment).
func TestArchivedSegment(t *testing.T) {
	const seg = "000000010000000000000007"
	const sum = "0123456789abcdef0123456789abcdef01234567"
	for name, want := range map[string]bool{
		seg + "-" + sum:                                   true,
		seg + "-" + sum + ".gz":                           true,
		seg + "-" + sum + ".zst":                          true,
		seg + "-" + sum + ".gz.pgbackrest.tmp":            false,
		seg + "-" + sum + ".pgbackrest.tmp":               false,
		seg + "-" + sum + ".":                             false,
		seg + "-" + sum[:39]:                              false,
		seg + "-0123456789ABCDEF0123456789abcdef01234567": false,
		"00000001000000000000000g-" + sum:                 false,
		seg + "." + sum:                                   false,
		"00000002.history":                                false,
		seg:                                               false,
	} {
		got, ok := archivedSegment(name)
		if ok != want || (ok && got != seg) {
			t.Errorf("archivedSegment(%q) = %q, %v; want %v", name, got, ok, want)
		}
	}
}
