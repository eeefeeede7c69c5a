//go:build linux

package backup

import (
	"fmt"
	"strings"
	"time"

	"github.com/holdfast/holdfast/bench/internal/results"
)

// markdown renders the results file a reader compares kinds in.
func markdown(r result) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# Backup benchmark\n\n")
	p("Measured %s on %s CPUs (%s), %s memory, PostgreSQL %s, %s, source %s.\n",
		r.When.Format(time.RFC3339), r.Machine["cpus"], r.Machine["note"], r.Machine["memory"], r.Machine["postgres"], r.Machine["pgbackrest"], r.Source)
	p("Command: `%s`.\n\n", r.Command)
	p("Database: pgbench scale %s, `pg_database_size` **%.2f GB** (%.2f GiB; all databases %.2f GB); `pgbench -i` took %.0f s.\n",
		r.Settings["pgbench_scale"], float64(r.DBBytes)/1e9, float64(r.DBBytes)/(1<<30), float64(r.AllDBBytes)/1e9, r.InitSeconds)
	p("Cluster: %s. Repository: %s. Throughput: %s. Page cache: %s. Data checksums: %s.\n\n",
		r.Settings["cluster"], r.Settings["repository"], r.Settings["throughput"], r.Settings["page_cache"], r.Settings["data_checksums"])

	p("## Full backup (%s rounds; %s)\n\n", r.Settings["rounds"], r.Settings["order"])
	p("| kind | median | min | max | median MB/s | pgBackRest's own (median) | written (median) | runs (s) |\n|---|---|---|---|---|---|---|---|\n")
	for _, k := range r.Backups {
		own := "—"
		if k.MedianPgbrSeconds > 0 {
			own = fmt.Sprintf("%.1fs", k.MedianPgbrSeconds)
		}
		p("| %s | %.2fs | %.2fs | %.2fs | **%.1f** | %s | %.0f MB | %s |\n", k.Kind, k.Seconds.Median, k.Seconds.Min, k.Seconds.Max,
			k.MedianMBps, own, float64(k.MedianBytes)/1e6, results.Floats(k.Seconds.RunsSeconds, 2))
	}
	p("\nWall time: from the command's start to its return. pgBackRest's own: its backup command alone, as its log reports it (\"backup command end: completed successfully (N ms)\"); the rest is the work around the copy (for holdfast: reading the cluster from the store, the API call that starts the job on the member, `ctl backup` polling the member every second for the job's end, each poll a `pgbackrest info`; for both pgBackRest kinds: pgBackRest's start-up and expire).\n")
	p("\n")
	for _, k := range r.Backups {
		p("- **%s**: %s\n", k.Kind, k.Description)
	}

	p("\n## Restore to a point in time\n\n")
	p("Bases: one more `holdfast ctl backup --type full` (%.1f s) and one more plain `pg_basebackup` (%.1f s). Then %s (%.0f MB of WAL in all up to the target), a marker row, the target time T = %s, a later row, and a WAL switch archived. Each restore must hold the marker and not the later row (checked). Restores: %s each, %s.\n\n",
		r.BaseSeconds["holdfast"], r.BaseSeconds["pg_basebackup"], r.Settings["load"], float64(r.LoadWALBytes)/1e6, r.Target, r.Settings["restores"], r.Settings["restore_order"])
	p("| kind | median until it answers a query | min | max | runs: total (phases) |\n|---|---|---|---|---|\n")
	for _, k := range r.Restores {
		var runs []string
		for _, run := range k.Runs {
			var ph []string
			for _, name := range []string{"restore", "pgbackrest-restore", "start", "copy", "replay"} {
				if v, ok := run.Phases[name]; ok {
					ph = append(ph, fmt.Sprintf("%s %.1fs", name, v))
				}
			}
			runs = append(runs, fmt.Sprintf("%.1fs (%s)", run.Seconds, strings.Join(ph, ", ")))
		}
		p("| %s | **%.1fs** | %.1fs | %.1fs | %s |\n", k.Kind, k.Seconds.Median, k.Seconds.Min, k.Seconds.Max, strings.Join(runs, "; "))
	}
	p("\n")
	for _, k := range r.Restores {
		p("- **%s**: %s\n", k.Kind, k.Description)
	}
	p("\nholdfast's phases: \"restore\" is holdfast's own \"restored in\" (pgBackRest restore, replay to T, promote, reset of the recovery settings, stop; whole seconds), of which \"pgbackrest-restore\" is pgBackRest's restore command alone (the files copied out of the repository, from its log), \"start\" the rest (the agent, its embedded etcd, PostgreSQL started as the new cluster's primary, the first query). The copy's: \"copy\" is `cp -a`, \"replay\" PostgreSQL's start, replay to T, promotion and the first query.\n")
	return b.String()
}
