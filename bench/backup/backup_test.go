//go:build linux

// Package backup measures, in one run on one machine, what a full backup
// of a pgbench database of at least 1 GB costs through holdfast
// (pgBackRest) beside a plain pg_basebackup of the same database, and how
// long a restore to a point in time takes from each.
//
// One run: a one-member holdfast cluster (`holdfast up --backup-repo`, a
// POSIX repository: what a user types), so that every backup reads the
// same primary; `pgbench -i` at HOLDFAST_BENCH_BACKUP_SCALE (default 75,
// about 1.1 GB); then HOLDFAST_BENCH_RUNS rounds (default and minimum 5),
// each taking one full backup of every kind, in an order rotated from
// round to round so that outside load is spread over the kinds:
//
//   - holdfast: `holdfast ctl backup --type full` (pgBackRest with
//     holdfast's settings: lz4, process-max 2, start-fast, and the
//     archive check that waits for the backup's last WAL segment);
//   - pgbackrest-none: the same pgBackRest configuration and stanza run
//     directly with --compress-type=none (not a holdfast path: it shows
//     what lz4 costs);
//   - pg_basebackup: -Fp -X stream -c fast, uncompressed;
//   - pg_basebackup-lz4: -Ft -X stream -c fast --compress=client-lz4
//     (compression comparable to holdfast's, on one thread).
//
// Throughput is the pgbench database's pg_database_size divided by the
// backup's wall time (MB = 10^6 bytes).
//
// Restore to a point in time: one more holdfast backup and one more plain
// pg_basebackup are the bases; a pgbench -N load writes for a while
// (WAL both restores replay); then a marker row, a noted time T, a later
// row, and the WAL switched and archived. HOLDFAST_BENCH_BACKUP_RESTORES
// times (default 2) each, in an order rotated from run to run:
//
//   - holdfast: `holdfast up --detach --members 1 --restore-from
//     <source member's holdfast.yaml> --target-time T`, timed until the
//     restored cluster answers a query;
//   - pg_basebackup copy: `cp -a` of the plain base, then PostgreSQL
//     started on it with recovery_target_time T, recovery_target_action
//     promote and the restore_command pgBackRest's restore writes
//     (`pgbackrest archive-get`, the same archive), timed until it has left
//     recovery and answers a query;
//   - the same copy with holdfast's restore_command (`holdfast
//     archive-get`, the wrapper holdfast's replicas replay through).
//
// Each restored database must hold the marker and not the later row.
//
// It is a benchmark, not a test: it runs only when asked, as root (the
// PostgreSQL account is postgres):
//
//	HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/backup
//
// Results go to bench/results/backup.json and .md when the database is at
// least 1 GB; a smaller run (a development iteration) writes them into its
// temporary directory and logs where.
package backup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/holdfast/holdfast/bench/internal/results"
	hfbackup "github.com/holdfast/holdfast/internal/backup"
	"github.com/holdfast/holdfast/internal/local"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/pg"
)

const benchCmd = "HOLDFAST_BENCH=1 go test -count=1 -timeout 60m -v ./bench/backup"

// Kinds of backup, in their base order.
const (
	kindHoldfast     = "holdfast"
	kindPgbrNone     = "pgbackrest-none"
	kindBasebackup   = "pg_basebackup"
	kindBasebackupLZ = "pg_basebackup-lz4"
)

var kinds = []string{kindHoldfast, kindPgbrNone, kindBasebackup, kindBasebackupLZ}

var kindDesc = map[string]string{
	kindHoldfast:     "`holdfast ctl backup --type full`: pgBackRest with holdfast's settings — compress-type lz4, process-max 2, start-fast, archive check (waits until the backup's last WAL segment is archived)",
	kindPgbrNone:     "`pgbackrest backup --type=full --compress-type=none` with the member's pgbackrest.conf and stanza (otherwise holdfast's settings; run directly, not a holdfast path)",
	kindBasebackup:   "`pg_basebackup -Fp -X stream -c fast`: plain directory, no compression",
	kindBasebackupLZ: "`pg_basebackup -Ft -X stream -c fast --compress=client-lz4`: tar, lz4 in pg_basebackup (one thread)",
}

// Restore kinds.
const (
	restoreHoldfast   = "holdfast"
	restoreBasebackup = "pg_basebackup-copy"
	restoreCopyHFGet  = "pg_basebackup-copy-holdfast-get"
)

const (
	defaultScale    = 75
	defaultRestores = 2
	minDBBytes      = 1_000_000_000 // what the committed results must cover
	clusterWait     = "180s"
	restoreWait     = "600s"
	backupTimeout   = 20 * time.Minute
	restoreTimeout  = 30 * time.Minute
	queryWait       = 5 * time.Minute // a restored server answering its first query
	archiveWait     = 2 * time.Minute
	stopTimeout     = time.Minute
	loadDuration    = 20 * time.Second // pgbench -N between the bases and the marker
	poll            = 100 * time.Millisecond
	mb              = 1e6
)

type backupRun struct {
	Round   int     `json:"round"`
	Seconds float64 `json:"seconds"`
	MBps    float64 `json:"mb_per_second"`
	Bytes   int64   `json:"bytes_written"`
	// PgbrSeconds: pgBackRest's backup command alone, from its log
	// ("backup command end: completed successfully (N ms)"; pgBackRest
	// kinds only): the rest of Seconds is the work around it.
	PgbrSeconds float64 `json:"pgbackrest_info_seconds,omitempty"`
}

type backupResult struct {
	Kind              string        `json:"kind"`
	Description       string        `json:"description"`
	Runs              []backupRun   `json:"runs"`
	Seconds           results.Stats `json:"seconds"`
	MedianMBps        float64       `json:"median_mb_per_second"`
	MedianBytes       int64         `json:"median_bytes_written"`
	MedianPgbrSeconds float64       `json:"median_pgbackrest_info_seconds,omitempty"`
}

type restoreRun struct {
	Seconds float64 `json:"seconds_until_query"`
	// Phases: holdfast: "restore" (pgBackRest restore, replay, promote,
	// finish — holdfast's own "restored in", whole seconds), of which
	// "pgbackrest-restore" (pgBackRest's restore command alone, from its
	// log), and "start" (the rest: the agent, the store, ready); copy:
	// "copy" and "replay" (PostgreSQL start, replay to the target,
	// promote, first query).
	Phases map[string]float64 `json:"phases_seconds"`
}

type restoreResult struct {
	Kind        string        `json:"kind"`
	Description string        `json:"description"`
	Runs        []restoreRun  `json:"runs"`
	Seconds     results.Stats `json:"seconds_until_query"`
}

type result struct {
	When     time.Time         `json:"when"`
	Machine  map[string]string `json:"machine"`
	Source   string            `json:"source"`
	Command  string            `json:"command"`
	Settings map[string]string `json:"settings"`
	// DBBytes is pg_database_size of the pgbench database; AllDBBytes the
	// sum over every database of the cluster.
	DBBytes      int64              `json:"pgbench_database_bytes"`
	AllDBBytes   int64              `json:"all_databases_bytes"`
	InitSeconds  float64            `json:"pgbench_init_seconds"`
	Backups      []backupResult     `json:"backups"`
	BaseSeconds  map[string]float64 `json:"restore_bases_seconds"`
	LoadWALBytes int64              `json:"wal_bytes_between_bases_and_target"`
	Target       string             `json:"target_time"`
	Restores     []restoreResult    `json:"restores"`
}

// env is the run's fixed surroundings.
type env struct {
	t        *testing.T
	bin      string
	work     string
	pgWork   string // the PostgreSQL account's: pg_basebackup's outputs and the copies
	dir      string // the source cluster
	acct     osuser.Account
	pgBin    string
	layout   local.Layout
	port     int
	pgbrConf string
	stanza   string
}

func TestBackupBench(t *testing.T) {
	runs, root := results.Gate(t, benchCmd)
	scale := envInt(t, "HOLDFAST_BENCH_BACKUP_SCALE", defaultScale, 1)
	restores := envInt(t, "HOLDFAST_BENCH_BACKUP_RESTORES", defaultRestores, 1)
	for _, tool := range []string{"pgbench", "pg_basebackup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s: %v (scripts/install-deps.sh installs it)", tool, err)
		}
	}
	if _, err := hfbackup.FindBinary(); err != nil {
		t.Fatalf("pgbackrest: %v (scripts/install-deps.sh installs it)", err)
	}
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		t.Fatal(err)
	}
	pgBin, err := pg.FindBinDir("")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	for _, d := range []string{filepath.Dir(work), work} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e := &env{t: t, work: work, dir: filepath.Join(work, "cluster"), acct: acct, pgBin: pgBin, bin: filepath.Join(work, "holdfast")}
	if b, err := exec.Command("go", "build", "-o", e.bin, "./cmd/holdfast").CombinedOutput(); err != nil {
		t.Fatalf("build holdfast: %v\n%s", err, b)
	}
	e.pgWork = filepath.Join(work, "pg")
	if err := acct.MkdirOwned(e.pgWork, 0o700); err != nil {
		t.Fatal(err)
	}
	repo := filepath.Join(work, "repo")
	e.holdfast(5*time.Minute, "up", "--detach", "--dir", e.dir, "--members", "1", "--backup-repo", repo, "--wait", clusterWait)
	t.Cleanup(func() { exec.Command(e.bin, "down", "--dir", e.dir).Run() })
	if e.layout, err = local.ReadLayout(e.dir); err != nil {
		t.Fatal(err)
	}
	m := e.layout.Members[0]
	e.port = m.PGPort
	e.stanza = e.layout.Backup.Stanza
	e.pgbrConf = filepath.Join(local.MemberDir(e.dir, m.Name), "pgbackrest", "pgbackrest.conf")
	if _, err := os.Stat(e.pgbrConf); err != nil {
		t.Fatalf("the member's pgBackRest configuration: %v", err)
	}

	command := benchCmd
	for _, v := range []string{"HOLDFAST_BENCH_BACKUP_RESTORES", "HOLDFAST_BENCH_BACKUP_SCALE", "HOLDFAST_BENCH_RUNS"} {
		if os.Getenv(v) != "" {
			command = v + "=" + os.Getenv(v) + " " + command
		}
	}
	res := result{When: time.Now().UTC(), Machine: results.Machine(), Source: results.GitSource(), Command: command,
		BaseSeconds: map[string]float64{}}
	res.Machine["note"] = "shared: other workers' test suites ran on this machine at the same time"
	res.Machine["memory"] = memTotal()
	res.Machine["pgbackrest"] = pgbackrestVersion()

	start := time.Now()
	e.run(30*time.Minute, e.pgbenchCmd("-i", "-s", strconv.Itoa(scale), "-I", "dtGvp", "-q"))
	res.InitSeconds = time.Since(start).Seconds()
	e.exec("CHECKPOINT")
	res.DBBytes = e.queryInt("SELECT pg_database_size('postgres')")
	res.AllDBBytes = e.queryInt("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")
	checksums := e.queryText("SHOW data_checksums")
	t.Logf("pgbench scale %d: database %d bytes (all databases %d), init %.1fs", scale, res.DBBytes, res.AllDBBytes, res.InitSeconds)

	byKind := map[string]*backupResult{}
	for _, k := range kinds {
		byKind[k] = &backupResult{Kind: k, Description: kindDesc[k]}
	}
	for round := 1; round <= runs; round++ {
		order := rotate(kinds, round-1)
		for _, k := range order {
			r := e.backup(k, round)
			r.MBps = float64(res.DBBytes) / mb / r.Seconds
			byKind[k].Runs = append(byKind[k].Runs, r)
			t.Logf("round %d %s: %.2fs (pgBackRest's own, 0 if not pgBackRest: %.1fs), %.1f MB/s, %d bytes written", round, k, r.Seconds, r.PgbrSeconds, r.MBps, r.Bytes)
		}
	}
	for _, k := range kinds {
		b := byKind[k]
		var secs, bytes, pgbr []float64

		for _, r := range b.Runs {
			secs = append(secs, r.Seconds)
			bytes = append(bytes, float64(r.Bytes))
			pgbr = append(pgbr, r.PgbrSeconds)
		}
		b.Seconds = results.Summarize(secs)
		b.MedianMBps = float64(res.DBBytes) / mb / b.Seconds.Median
		b.MedianBytes = int64(results.Summarize(bytes).Median)
		b.MedianPgbrSeconds = results.Summarize(pgbr).Median
		res.Backups = append(res.Backups, *b)
	}

	// Point in time.
	res.BaseSeconds[kindHoldfast] = e.backup(kindHoldfast, 0).Seconds

	base := filepath.Join(e.pgWork, "base")
	start = time.Now()
	e.basebackup(base, "-Fp")
	res.BaseSeconds[kindBasebackup] = time.Since(start).Seconds()
	lsn0 := e.queryText("SELECT pg_current_wal_lsn()::text")
	e.run(loadDuration+5*time.Minute, e.pgbenchCmd("-N", "-c", "2", "-j", "2", "-T", strconv.Itoa(int(loadDuration.Seconds()))))
	e.exec("CREATE TABLE bench_marker (v text)")
	e.exec("INSERT INTO bench_marker VALUES ('before')")
	time.Sleep(1100 * time.Millisecond) // the target lies strictly between the two commits
	target := time.Now().UTC()
	time.Sleep(1100 * time.Millisecond)
	e.exec("INSERT INTO bench_marker VALUES ('after')")
	res.LoadWALBytes = e.queryInt("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '" + lsn0 + "')::bigint")
	e.waitArchived()
	res.Target = target.Format(time.RFC3339Nano)
	t.Logf("target %s; %d bytes of WAL since the bases", res.Target, res.LoadWALBytes)

	rHF := restoreResult{Kind: restoreHoldfast, Description: "`holdfast up --detach --members 1 --restore-from <source member's holdfast.yaml> --target-time T` (pgBackRest restore, replay, promote, stop; then the agent starts the new cluster), until the restored primary answers a query"}
	rBB := restoreResult{Kind: restoreBasebackup, Description: "`cp -a` of the plain pg_basebackup, then `postgres` on it with recovery_target_time T, recovery_target_action promote and the restore_command pgBackRest's restore writes (`pgbackrest archive-get`, the same archive), until it has left recovery and answers a query"}
	rBH := restoreResult{Kind: restoreCopyHFGet, Description: "the same, with holdfast's restore_command (`holdfast archive-get`, which runs `pgbackrest archive-get`: what holdfast's replicas replay the archive with)"}
	for i := 0; i < restores; i++ {
		do := []func(){
			func() { rHF.Runs = append(rHF.Runs, e.restoreHoldfast(target, i)) },
			func() { rBB.Runs = append(rBB.Runs, e.restoreCopy(base, target, i, false)) },
			func() { rBH.Runs = append(rBH.Runs, e.restoreCopy(base, target, i, true)) },
		}
		for j := range do {
			do[(i+j)%len(do)]()
		}
	}
	for _, r := range []*restoreResult{&rHF, &rBB, &rBH} {
		var xs []float64
		for _, run := range r.Runs {
			xs = append(xs, run.Seconds)
		}
		r.Seconds = results.Summarize(xs)
		res.Restores = append(res.Restores, *r)
	}

	res.Settings = map[string]string{
		"cluster":        "1 member (`holdfast up --members 1 --backup-repo DIR`): every backup reads the same primary",
		"repository":     "POSIX directory on the same disk as the data",
		"pgbench_scale":  strconv.Itoa(scale),
		"rounds":         strconv.Itoa(runs),
		"order":          "every round takes one backup of each kind, in an order rotated from round to round",
		"restores":       strconv.Itoa(restores),
		"restore_order":  "rotated from run to run",
		"load":           fmt.Sprintf("pgbench -N -c 2 -j 2 -T %d between the bases and the marker", int(loadDuration.Seconds())),
		"throughput":     "pg_database_size of the pgbench database / wall time; MB = 10^6 bytes",
		"retention_full": "2 (holdfast's default): older full backups are expired after each pgBackRest backup",
		"page_cache":     "not dropped: the database fits in memory, every kind reads it from the same cache",
		"data_checksums": checksums + " (pgBackRest and pg_basebackup each verify page checksums by default when on)",
	}
	out := filepath.Join(root, "bench", "results")
	if res.DBBytes < minDBBytes {
		out = filepath.Join(work, "results")
		t.Logf("the database is under 1 GB (%d bytes): results go to %s, not bench/results", res.DBBytes, out)
	}
	if err := results.WriteJSON(out, "backup.json", res); err != nil {
		t.Fatal(err)
	}
	md := markdown(res)
	if err := os.WriteFile(filepath.Join(out, "backup.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + md)
}

// backup takes one backup of kind k and returns its wall time and the
// bytes it wrote (pgBackRest: the backup's directory in the repository).
func (e *env) backup(k string, round int) backupRun {
	e.t.Helper()
	switch k {
	case kindHoldfast, kindPgbrNone:
		before := e.backupLabels()
		start := time.Now()
		if k == kindHoldfast {
			out := e.holdfast(backupTimeout, "ctl", "backup", "--type", "full", "--dir", e.dir)
			if !strings.Contains(out, "finished") {
				e.t.Fatalf("ctl backup: no \"finished\" in its output:\n%s", out)
			}
		} else {
			cmd := exec.Command("pgbackrest", "--config="+e.pgbrConf, "--stanza="+e.stanza, "--type=full", "--compress-type=none", "backup")
			cmd.Env = append(os.Environ(), "PGHOST=127.0.0.1", "PGSSLMODE=disable",
				"PGPASSFILE="+filepath.Join(filepath.Dir(e.pgbrConf), "pgpass"))
			e.asPostgres(cmd)
			e.run(backupTimeout, cmd)
		}
		secs := time.Since(start).Seconds()
		var added []string
		for _, l := range e.backupLabels() {
			if !slices.Contains(before, l) {
				added = append(added, l)
			}
		}
		if len(added) != 1 {
			e.t.Fatalf("%s backup (round %d): want one new backup in the repository, found %v", k, round, added)
		}
		return backupRun{Round: round, Seconds: secs, Bytes: duBytes(e.t, filepath.Join(e.work, "repo", "backup", e.stanza, added[0])),
			PgbrSeconds: lastCommandEnd(e.t, filepath.Join(filepath.Dir(e.pgbrConf), "log"), "backup").Seconds()}
	case kindBasebackup, kindBasebackupLZ:
		target := filepath.Join(e.pgWork, "basebackup")
		args := []string{"-Fp"}
		if k == kindBasebackupLZ {
			args = []string{"-Ft", "--compress=client-lz4"}
		}
		start := time.Now()
		e.basebackup(target, args...)
		secs := time.Since(start).Seconds()
		bytes := duBytes(e.t, target)
		if err := os.RemoveAll(target); err != nil {
			e.t.Fatal(err)
		}
		return backupRun{Round: round, Seconds: secs, Bytes: bytes}
	}
	e.t.Fatalf("unknown backup kind %q", k)
	return backupRun{}
}

var commandEnd = regexp.MustCompile(`(?m)P00 +INFO: (\w+) command end: completed successfully \((\d+)ms\)`)

// lastCommandEnd is the duration pgBackRest logged for the last
// successful run of command in the logs under dir (its own measure, from
// its start to its end); it fails the benchmark when there is none.
func lastCommandEnd(t *testing.T, dir, command string) time.Duration {
	t.Helper()
	var last time.Duration
	found := false
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "-"+command+".log") {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range commandEnd.FindAllStringSubmatch(string(b), -1) {
			if m[1] != command {
				continue
			}
			ms, _ := strconv.Atoi(m[2])
			last, found = time.Duration(ms)*time.Millisecond, true
		}
		return nil
	})
	if err != nil || !found {
		t.Fatalf("pgBackRest's %s log under %s: no \"%s command end: completed successfully\" (%v)", command, dir, command, err)
	}
	return last
}

// basebackup runs pg_basebackup into dir (created, the PostgreSQL
// account's) as the PostgreSQL account, connecting as the cluster's
// replication role (holdfast's pg_hba admits replication connections for
// it only).
func (e *env) basebackup(dir string, args ...string) {
	e.t.Helper()
	cmd := exec.Command("pg_basebackup", append([]string{"-D", dir, "-X", "stream", "-c", "fast",
		"-h", "127.0.0.1", "-p", strconv.Itoa(e.port), "-U", e.layout.Replication.Username}, args...)...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+e.layout.Replication.Password, "PGSSLMODE=disable")
	e.asPostgres(cmd)
	e.run(backupTimeout, cmd)
}

// backupLabels lists the backup directories in the stanza's repository.
func (e *env) backupLabels() []string {
	e.t.Helper()
	ents, err := os.ReadDir(filepath.Join(e.work, "repo", "backup", e.stanza))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		e.t.Fatal(err)
	}
	var out []string
	for _, d := range ents {
		if d.IsDir() && d.Name() != "backup.history" {
			out = append(out, d.Name())
		}
	}
	return out
}

var restoredIn = regexp.MustCompile(`restored in (\S+);`)

// restoreHoldfast restores the source to target as a new one-member
// cluster, checks the marker, and tears it down.
func (e *env) restoreHoldfast(target time.Time, i int) restoreRun {
	e.t.Helper()
	dir := filepath.Join(e.work, fmt.Sprintf("restored-%d", i))
	src := local.ConfigFile(e.dir, e.layout.Members[0].Name)
	start := time.Now()
	out := e.holdfast(restoreTimeout, "up", "--detach", "--dir", dir, "--members", "1", "--wait", restoreWait,
		"--restore-from", src, "--target-time", target.Format(time.RFC3339Nano))
	defer func() {
		exec.Command(e.bin, "down", "--dir", dir).Run()
		os.RemoveAll(dir)
	}()
	l, err := local.ReadLayout(dir)
	if err != nil {
		e.t.Fatal(err)
	}
	e.checkMarker(l.SuperuserDSN(l.Members[0].PGPort, 5*time.Second), "holdfast restore")
	total := time.Since(start).Seconds()
	run := restoreRun{Seconds: total, Phases: map[string]float64{}}
	if m := restoredIn.FindStringSubmatch(out); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil {
			run.Phases["restore"] = d.Seconds()
			run.Phases["start"] = total - d.Seconds()
		}
	}
	run.Phases["pgbackrest-restore"] = lastCommandEnd(e.t, filepath.Join(dir, "restore"), "restore").Seconds()
	e.t.Logf("holdfast restore %d: %.2fs (%v)", i+1, total, run.Phases)
	return run
}

// restoreCopy copies the plain pg_basebackup and recovers it to target
// with the source's archive (through `holdfast archive-get` with
// viaHoldfast, else `pgbackrest archive-get` directly, as the
// restore_command pgBackRest's restore writes), checks the marker, and
// stops it.
func (e *env) restoreCopy(base string, target time.Time, i int, viaHoldfast bool) restoreRun {
	e.t.Helper()
	name := fmt.Sprintf("copy-%d", i)
	if viaHoldfast {
		name += "-hfget"
	}
	dir := filepath.Join(e.pgWork, name)
	defer os.RemoveAll(dir)
	start := time.Now()
	e.run(restoreTimeout, exec.Command("cp", "-a", base, dir))
	copied := time.Since(start).Seconds()
	signal := filepath.Join(dir, "recovery.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := e.acct.Chown(signal); err != nil {
		e.t.Fatal(err)
	}
	port := freePort(e.t)
	// pgBackRest's archive-get requires pg1-path to be the server's data
	// directory: the copy gets a configuration of its own, same
	// repository and stanza.
	conf := e.copyConf(dir, port, name)
	restoreCmd := fmt.Sprintf(`pgbackrest --config=%s --stanza=%s archive-get %%f "%%p"`, conf, e.stanza)
	if viaHoldfast {
		restoreCmd = hfbackup.RestoreCommand(hfbackup.RestoreCommandOptions{Exe: e.bin, Config: conf, Stanza: e.stanza})
	}
	logf, err := os.Create(filepath.Join(e.work, name+".log"))
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(e.pgBin, "postgres"), "-D", dir,
		"-c", "port="+strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
		"-c", "archive_mode=off", "-c", "primary_conninfo=", "-c", "primary_slot_name=",
		"-c", "synchronous_standby_names=", "-c", "cluster_name=bench-copy",
		"-c", "restore_command="+restoreCmd, "-c", "recovery_target_time="+target.UTC().Format("2006-01-02 15:04:05.999999")+"+00",
		"-c", "recovery_target_action=promote")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = dir
	e.asPostgres(cmd)
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start PostgreSQL on the copy: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
		}
	}()
	dsn := e.layout.SuperuserDSN(port, 5*time.Second)
	e.waitPromoted(dsn, exited, logf.Name())
	e.checkMarker(dsn, "pg_basebackup copy")
	total := time.Since(start).Seconds()
	run := restoreRun{Seconds: total, Phases: map[string]float64{"copy": copied, "replay": total - copied}}
	e.t.Logf("pg_basebackup %s restore %d: %.2fs (%v)", name, i+1, total, run.Phases)
	return run
}

// copyConf writes a pgbackrest.conf for the copy in dir: the source's
// repository and stanza, the copy's data directory and port.
func (e *env) copyConf(dir string, port int, name string) string {
	e.t.Helper()
	workDir := filepath.Join(e.pgWork, name+"-pgbackrest")
	if err := e.acct.MkdirOwned(workDir, 0o700); err != nil {
		e.t.Fatal(err)
	}
	text, err := hfbackup.RenderConf(hfbackup.Settings{
		Repo:   hfbackup.Repo{Location: filepath.Join(e.work, "repo")},
		Stanza: e.stanza, RetentionFull: 2, WorkDir: workDir,
		PG: []hfbackup.PGCluster{{Path: dir, Port: port, User: e.layout.Superuser.Username}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	conf := filepath.Join(workDir, "pgbackrest.conf")
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	if err := e.acct.Chown(conf); err != nil {
		e.t.Fatal(err)
	}
	return conf
}

// waitPromoted waits until the server at dsn answers that it is out of
// recovery; it fails when the server exits first.
func (e *env) waitPromoted(dsn string, exited <-chan struct{}, logName string) {
	e.t.Helper()
	deadline := time.Now().Add(restoreTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			b, _ := os.ReadFile(logName)
			e.t.Fatalf("PostgreSQL on the copy exited during recovery:\n%s", tail(b))
		case <-time.After(poll):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			var rec bool
			err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec)
			conn.Close(ctx)
			if err == nil && !rec {
				cancel()
				return
			}
		}
		cancel()
	}
	e.t.Fatalf("the copy did not leave recovery within %s", restoreTimeout)
}

// checkMarker waits until dsn answers a query, then requires exactly the
// marker row written before the target.
func (e *env) checkMarker(dsn, what string) {
	e.t.Helper()
	deadline := time.Now().Add(queryWait)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			var rows []string
			rs, qerr := conn.Query(ctx, "SELECT v FROM bench_marker ORDER BY v")
			if qerr == nil {
				rows, qerr = pgx.CollectRows(rs, pgx.RowTo[string])
			}
			conn.Close(ctx)
			cancel()
			if qerr != nil {
				e.t.Fatalf("%s: read the marker: %v", what, qerr)
			}
			if !slices.Equal(rows, []string{"before"}) {
				e.t.Fatalf("%s: marker rows %v, want [before] (the row written before the target, not the one after)", what, rows)
			}
			return
		}
		cancel()
		if time.Now().After(deadline) {
			e.t.Fatalf("%s: no answer within %s: %v", what, queryWait, err)
		}
		time.Sleep(poll)
	}
}

// waitArchived switches WAL on the source and waits until the segment
// holding everything committed so far is in the archive.
func (e *env) waitArchived() {
	e.t.Helper()
	seg := e.queryText("SELECT pg_walfile_name(pg_switch_wal())")
	deadline := time.Now().Add(archiveWait)
	for {
		last := e.queryText("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
		if last >= seg {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("segment %s not archived within %s", seg, archiveWait)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *env) pgbenchCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("pgbench", append(args, "-h", "127.0.0.1", "-p", strconv.Itoa(e.port), "-U", e.layout.Superuser.Username, "postgres")...)
	cmd.Env = append(os.Environ(), "PGPASSWORD="+e.layout.Superuser.Password, "PGSSLMODE=disable")
	return cmd
}

func (e *env) asPostgres(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.acct.Credential()}
}

// holdfast runs the binary and returns its combined output.
func (e *env) holdfast(timeout time.Duration, args ...string) string {
	e.t.Helper()
	return e.run(timeout, exec.Command(e.bin, args...))
}

// run runs cmd within timeout and returns its combined output; a failure
// fails the benchmark with the output.
func (e *env) run(timeout time.Duration, cmd *exec.Cmd) string {
	e.t.Helper()
	var buf strings.Builder
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			e.t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, tail([]byte(buf.String())))
		}
	case <-time.After(timeout):
		cmd.Process.Kill()
		<-done
		e.t.Fatalf("%s: not finished within %s\n%s", strings.Join(cmd.Args, " "), timeout, tail([]byte(buf.String())))
	}
	return buf.String()
}

func (e *env) conn() (*pgx.Conn, context.Context, context.CancelFunc) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	c, err := pgx.Connect(ctx, e.layout.SuperuserDSN(e.port, 10*time.Second))
	if err != nil {
		cancel()
		e.t.Fatalf("connect to the source: %v", err)
	}
	return c, ctx, cancel
}

func (e *env) exec(sql string) {
	e.t.Helper()
	c, ctx, cancel := e.conn()
	defer cancel()
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, sql); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) queryInt(sql string) int64 {
	e.t.Helper()
	c, ctx, cancel := e.conn()
	defer cancel()
	defer c.Close(ctx)
	var v int64
	if err := c.QueryRow(ctx, sql).Scan(&v); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func (e *env) queryText(sql string) string {
	e.t.Helper()
	c, ctx, cancel := e.conn()
	defer cancel()
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, sql).Scan(&v); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func rotate(xs []string, n int) []string {
	n %= len(xs)
	return append(append([]string(nil), xs[n:]...), xs[:n]...)
}

func envInt(t *testing.T, name string, def, min int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min {
		t.Fatalf("%s=%q: want a number of at least %d", name, v, min)
	}
	return n
}

// duBytes is the apparent size of the files under path.
func duBytes(t *testing.T, path string) int64 {
	t.Helper()
	var n int64
	err := filepath.Walk(path, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatalf("size of %s: %v", path, err)
	}
	return n
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			f := strings.Fields(v)
			if kb, err := strconv.ParseFloat(f[0], 64); err == nil {
				return fmt.Sprintf("%.0f GiB", kb/1024/1024)
			}
		}
	}
	return "?"
}

func pgbackrestVersion() string {
	b, err := exec.Command("pgbackrest", "version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
