package pgsession

import (
	"fmt"
	"strings"
	"testing"
)

// summary renders the parts of an effect a test cares about, in a fixed
// order, "-" for none.
func summary(e effect) string {
	var p []string
	if e.tag != "" {
		p = append(p, "tag="+e.tag)
	}
	if e.txn != txnNone {
		p = append(p, fmt.Sprintf("txn=%d", e.txn))
	}
	for _, c := range e.gucs {
		switch c.kind {
		case gucSet:
			p = append(p, "set["+c.name+"]="+c.replay)
		case gucReset:
			p = append(p, "reset["+c.name+"]")
		case gucResetAll:
			p = append(p, "resetall")
		}
	}
	add := func(b bool, s string) {
		if b {
			p = append(p, s)
		}
	}
	add(e.unknownSettings != "", "unknown")
	add(e.unknownIdentity, "identity")
	add(e.opaque != "", "opaque")
	add(e.temp, "temp")
	add(e.advisory, "advisory")
	add(e.unlockAll, "unlockall")
	add(len(e.listen) > 0, "listen="+strings.Join(e.listen, ","))
	add(len(e.unlisten) > 0, "unlisten="+strings.Join(e.unlisten, ","))
	add(e.unlistenAll, "unlistenall")
	add(e.holdCursor != "", "hold="+e.holdCursor)
	add(e.closeCursor != "", "close="+e.closeCursor)
	add(e.closeAll, "closeall")
	add(e.discardTemp, "discardtemp")
	add(e.discardAll, "discardall")
	add(e.prepareName != "", "prepare="+e.prepareName)
	add(e.prepareHazard != "", "hazard")
	add(len(e.executes) > 0, "execute="+strings.Join(e.executes, ","))
	add(e.deallocate != "", "deallocate="+e.deallocate)
	add(e.deallocateAll, "deallocateall")
	add(e.contextChange, "ctx")
	add(e.localContext, "localctx")
	if len(p) == 0 {
		return "-"
	}
	return strings.Join(p, " ")
}

func classifyOne(t *testing.T, sql string) effect {
	t.Helper()
	sts, err := splitStatements(sql, scanOptions{})
	if err != nil || len(sts) != 1 {
		t.Fatalf("%q: %v, %d statements", sql, err, len(sts))
	}
	return classify(sts[0])
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct{ sql, want string }{
		// Plain statements.
		{"SELECT 1", "-"},
		{"INSERT INTO t VALUES (1)", "-"},
		{"SELECT temp FROM weather", "-"},
		{"SELECT 'CREATE TEMP TABLE x' AS s", "-"},
		{"SELECT pg_advisory_xact_lock(1)", "-"},
		// Transactions.
		{"BEGIN", "tag=BEGIN txn=1"},
		{"begin isolation level serializable", "tag=BEGIN txn=1"},
		{"START TRANSACTION READ ONLY", "tag=BEGIN txn=1"},
		{"COMMIT", "txn=2"},
		{"END WORK", "txn=2"},
		{"COMMIT AND CHAIN", "txn=2"},
		{"COMMIT PREPARED 'x'", "tag=COMMIT PREPARED"},
		{"ROLLBACK", "tag=ROLLBACK txn=3"},
		{"ABORT", "tag=ROLLBACK txn=3"},
		{"ROLLBACK PREPARED 'x'", "tag=ROLLBACK PREPARED"},
		{"SAVEPOINT a", "tag=SAVEPOINT txn=4"},
		{"RELEASE SAVEPOINT a", "tag=RELEASE txn=5"},
		{"ROLLBACK TO a", "tag=ROLLBACK txn=6"},
		{"ROLLBACK WORK TO SAVEPOINT a", "tag=ROLLBACK txn=6"},
		{"PREPARE TRANSACTION 'x'", "tag=PREPARE TRANSACTION txn=7"},
		// SET forms.
		{"SET search_path TO app, public", "tag=SET set[search_path]=SET search_path TO app, public ctx"},
		{"SET search_path = \"My App\", '$user'", `tag=SET set[search_path]=SET search_path TO "My App", '$user' ctx`},
		{"set SESSION work_mem = '64MB'", "tag=SET set[work_mem]=SET work_mem TO '64MB'"},
		{"SET LOCAL work_mem = '64MB'", "tag=SET"},
		{"SET LOCAL search_path = x", "tag=SET ctx localctx"},
		{"SET statement_timeout = 5000", "tag=SET set[statement_timeout]=SET statement_timeout TO 5000"},
		{"SET extra_float_digits = -3", "tag=SET set[extra_float_digits]=SET extra_float_digits TO -3"},
		{"SET enable_seqscan TO off", "tag=SET set[enable_seqscan]=SET enable_seqscan TO off"},
		{"SET myapp.Tenant = 'it''s \\ here'", `tag=SET set[myapp.tenant]=SET myapp.tenant TO E'it''s \\ here'`},
		{"SET \"MyApp\".x = 1", "tag=SET set[myapp.x]=SET myapp.x TO 1"},
		{"SET work_mem TO DEFAULT", "tag=SET reset[work_mem]"},
		{"SET TIME ZONE 'Europe/Paris'", "tag=SET set[timezone]=SET timezone TO 'Europe/Paris'"},
		{"SET TIME ZONE LOCAL", "tag=SET reset[timezone]"},
		{"SET TIME ZONE INTERVAL '+00:00' HOUR TO MINUTE", "tag=SET unknown"},
		{"SET SCHEMA 'app'", "tag=SET set[search_path]=SET search_path TO 'app' ctx"},
		{"SET NAMES 'LATIN1'", "tag=SET set[client_encoding]=SET client_encoding TO 'LATIN1'"},
		{"SET NAMES", "tag=SET reset[client_encoding]"},
		{"SET ROLE reader", "tag=SET set[role]=SET ROLE reader"},
		{"SET ROLE 'Reader'", "tag=SET set[role]=SET ROLE 'Reader'"},
		{"SET ROLE NONE", "tag=SET set[role]=SET ROLE none"},
		{"SET SESSION AUTHORIZATION alice", "tag=SET set[session_authorization]=SET SESSION AUTHORIZATION alice"},
		{"SET SESSION AUTHORIZATION DEFAULT", "tag=SET reset[session_authorization]"},
		{"SET SESSION SESSION AUTHORIZATION alice", "tag=SET set[session_authorization]=SET SESSION AUTHORIZATION alice"},
		{"SET SESSION AUTHORIZATION a b", "tag=SET unknown identity"},
		{"SET XML OPTION DOCUMENT", "tag=SET set[xmloption]=SET xmloption TO document"},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "tag=SET"},
		{"SET CONSTRAINTS ALL DEFERRED", "tag=SET CONSTRAINTS"},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "tag=SET unknown"},
		{"SET work_mem FROM CURRENT", "tag=SET unknown"},
		{"SET work_mem 64", "tag=SET unknown"},
		{"SET work_mem = 1 + 1", "tag=SET unknown"},
		{"SET work_mem = ", "tag=SET unknown"},
		{"SET search_path = a,", "tag=SET unknown ctx"},
		{"SET x.y = U&'a'", "tag=SET unknown"},
		{"SET search_path = pg_temp, public", "tag=SET set[search_path]=SET search_path TO pg_temp, public temp ctx"},
		// RESET, DISCARD.
		{"RESET work_mem", "tag=RESET reset[work_mem]"},
		{"RESET search_path", "tag=RESET reset[search_path] ctx"},
		{"RESET ALL", "tag=RESET resetall ctx"},
		{"RESET TIME ZONE", "tag=RESET reset[timezone]"},
		{"RESET ROLE", "tag=RESET reset[role]"},
		{"RESET SESSION AUTHORIZATION", "tag=RESET reset[session_authorization]"},
		{"RESET TRANSACTION ISOLATION LEVEL", "tag=RESET"},
		{"RESET 1", "tag=RESET unknown"},
		{"DISCARD ALL", "tag=DISCARD resetall discardall ctx"},
		{"DISCARD TEMP", "tag=DISCARD discardtemp"},
		{"DISCARD TEMPORARY", "tag=DISCARD discardtemp"},
		{"DISCARD PLANS", "tag=DISCARD"},
		{"DISCARD SEQUENCES", "tag=DISCARD"},
		{"DISCARD x", "tag=DISCARD unknown"},
		// set_config.
		{"SELECT set_config('work_mem', '32MB', false)", "tag=SELECT set[work_mem]=SELECT pg_catalog.set_config('work_mem', '32MB', false) ctx"},
		{"SELECT pg_catalog.set_config('Search_Path', 'a, b', false)", "tag=SELECT set[search_path]=SELECT pg_catalog.set_config('search_path', 'a, b', false) ctx"},
		{"SELECT set_config('work_mem', '32MB', true)", "tag=SELECT ctx"},
		{"SELECT set_config('work_mem', $1, false)", "tag=SELECT unknown ctx"},
		{"SELECT set_config(name, setting, false) FROM t", "unknown ctx"},
		// set_config anywhere but the plain statement: settings unknown,
		// never replayed.
		{"SELECT set_config('work_mem', '32MB', false) FROM t", "unknown ctx"},
		{"SELECT set_config('work_mem', '32MB', false) WHERE false", "unknown ctx"},
		{"SELECT 1, set_config('work_mem', '32MB', false)", "unknown ctx"},
		{"WITH c AS (SELECT set_config('work_mem', '32MB', false)) SELECT * FROM c", "unknown ctx"},
		{"CREATE VIEW v AS SELECT set_config('work_mem', '32MB', false)", "unknown ctx"},
		{"SELECT * FROM (SELECT set_config('work_mem', '32MB', false)) s", "unknown ctx"},
		{`SELECT "set_config"('work_mem', '32MB', false)`, "unknown ctx"},
		// Temporary objects.
		{"CREATE TEMP TABLE t (x int)", "temp"},
		{"create temporary table t (x int)", "temp"},
		{"CREATE GLOBAL TEMPORARY TABLE t (x int)", "temp"},
		{"CREATE LOCAL TEMP VIEW v AS SELECT 1", "temp"},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", "temp"},
		{"CREATE TEMP SEQUENCE s", "temp"},
		{"CREATE TEMP TABLE t (x int) ON COMMIT DROP", "-"},
		{"SELECT * INTO TEMP t FROM x", "temp"},
		{"SELECT * INTO TEMPORARY TABLE t FROM x", "temp"},
		{"SELECT * FROM pg_temp.t", "temp"},
		{"SELECT * FROM pg_temp_3.t", "temp"},
		{`SELECT * FROM "pg_temp".t`, "temp"},
		{"CREATE TABLE temp (x int)", "-"},
		// Advisory locks.
		{"SELECT pg_advisory_lock(1)", "advisory"},
		{"SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2)", "advisory"},
		{"SELECT PG_ADVISORY_LOCK_SHARED(1)", "advisory"},
		{"SELECT pg_advisory_unlock_all()", "unlockall"},
		{"SELECT pg_advisory_lock(1), pg_advisory_unlock_all()", "advisory"},
		{"SELECT pg_advisory_unlock(1)", "-"},
		{`SELECT "pg_advisory_lock"(1)`, "advisory"},
		{`SELECT pg_catalog."pg_try_advisory_lock"(1)`, "advisory"},
		// LISTEN, cursors.
		{"LISTEN jobs", "tag=LISTEN listen=jobs"},
		{`LISTEN "Jobs"`, "tag=LISTEN listen=Jobs"},
		{"UNLISTEN jobs", "tag=UNLISTEN unlisten=jobs"},
		{"UNLISTEN *", "tag=UNLISTEN unlistenall"},
		{"NOTIFY jobs", "-"},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "tag=DECLARE CURSOR hold=c"},
		{"DECLARE c NO SCROLL CURSOR WITH HOLD FOR SELECT 1", "tag=DECLARE CURSOR hold=c"},
		{"DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", "tag=DECLARE CURSOR"},
		{"DECLARE c CURSOR FOR SELECT 'with hold'", "tag=DECLARE CURSOR"},
		{"DECLARE c CURSOR FOR WITH hold AS (SELECT 1) SELECT * FROM hold", "tag=DECLARE CURSOR"},
		{"CLOSE c", "tag=CLOSE CURSOR close=c"},
		{"CLOSE ALL", "tag=CLOSE CURSOR closeall"},
		// Prepared statements.
		{"PREPARE p(int) AS SELECT $1", "tag=PREPARE prepare=p"},
		{`PREPARE "P" AS SELECT 1`, "tag=PREPARE prepare=P"},
		// A PREPARE's statement has its effects at EXECUTE, not at PREPARE.
		{"PREPARE p AS SELECT pg_advisory_lock(1)", "tag=PREPARE prepare=p hazard"},
		{`PREPARE p(int) AS SELECT "pg_advisory_lock"($1)`, "tag=PREPARE prepare=p hazard"},
		{"PREPARE p AS SELECT set_config('a', 'b', false)", "tag=PREPARE prepare=p hazard"},
		{"PREPARE p AS SELECT * FROM pg_temp.t", "tag=PREPARE prepare=p hazard"},
		{"PREPARE p AS SELECT x FROM t WHERE set_config('a', x, false) IS NULL", "tag=PREPARE prepare=p hazard"},
		{"PREPARE p AS SELECT pg_advisory_xact_lock(1)", "tag=PREPARE prepare=p"},
		{"EXPLAIN ANALYZE EXECUTE p(1)", "execute=p"},
		{"CREATE TABLE t AS EXECUTE p", "execute=p"},
		{"PREPARE", "tag=PREPARE unknown"},
		{"DEALLOCATE p", "tag=DEALLOCATE deallocate=p"},
		{"DEALLOCATE PREPARE p", "tag=DEALLOCATE deallocate=p"},
		{"DEALLOCATE ALL", "tag=DEALLOCATE deallocateall"},
		{"DEALLOCATE", "tag=DEALLOCATE unknown"},
		{"EXECUTE p(1)", "execute=p"},
		// Opaque.
		{"LOAD 'auto_explain'", "opaque"},
		{"DO $$BEGIN PERFORM 1; END$$", "tag=DO"},
		{"DO $$BEGIN SET search_path = x; END$$", "tag=DO unknown ctx"},
		{"DO $$BEGIN PERFORM set_config('a', 'b', false); END$$", "tag=DO unknown ctx"},
		{"DO $$BEGIN EXECUTE 'CREATE TEMP TABLE x (y int)'; END$$", "tag=DO unknown temp ctx"},
		{"DO LANGUAGE plpgsql 'BEGIN PERFORM pg_advisory_lock(1); END'", "tag=DO advisory"},
		{"DO $$BEGIN UPDATE t SET x = 1; END$$", "tag=DO"},
	} {
		if got := summary(classifyOne(t, tc.sql)); got != tc.want {
			t.Errorf("%s\n got %s\nwant %s", tc.sql, got, tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	for _, tc := range []struct{ in, lit, name string }{
		{"plain", "'plain'", "plain"},
		{"it's", "'it''s'", `"it's"`},
		{`back\slash`, `E'back\\slash'`, `"back\slash"`},
		{`'\`, `E'''\\'`, `"'\"`},
		{"Upper", "'Upper'", `"Upper"`},
		{`a"b`, `'a"b'`, `"a""b"`},
		{"my.guc", "'my.guc'", "my.guc"},
		{"", "''", `""`},
	} {
		if got := quoteLiteral(tc.in); got != tc.lit {
			t.Errorf("quoteLiteral(%q) = %s, want %s", tc.in, got, tc.lit)
		}
		if got := quoteName(tc.in); got != tc.name {
			t.Errorf("quoteName(%q) = %s, want %s", tc.in, got, tc.name)
		}
	}
}
