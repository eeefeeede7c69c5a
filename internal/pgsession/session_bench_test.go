package pgsession

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The benchmarks measure what the tracker costs per pgbench transaction:
// the messages of one transaction fed to a session in the ready state, built
// as the proxy builds it (New with the client's startup, then the server's
// startup answers through Backend).

// benchSession is a session past its startup.
func benchSession(b *testing.B) *Session {
	b.Helper()
	s := New(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30,
		Parameters: map[string]string{"user": "bench", "database": "bench", "application_name": "pgbench"}})
	for _, st := range startupSteps() {
		if _, err := s.Backend(st.b); err != nil {
			b.Fatalf("startup %T: %v", st.b, err)
		}
	}
	if !s.AtBoundary() {
		b.Fatal("the session is not at a boundary after its startup")
	}
	return s
}

// playBench feeds steps to s, failing on an injection, an error or a
// swallowed answer (nothing is injected here).
func playBench(b *testing.B, s *Session, steps []step) {
	for _, st := range steps {
		if st.f != nil {
			before, err := s.Frontend(st.f)
			if err != nil || before != nil {
				b.Fatalf("%T: inject %v, %v", st.f, before, err)
			}
			continue
		}
		if v, err := s.Backend(st.b); err != nil || v != Forward {
			b.Fatalf("%T: verdict %v, %v", st.b, v, err)
		}
	}
}

func benchRowDescription() *pgproto3.RowDescription {
	return &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("abalance"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}}
}

func benchDataRow() *pgproto3.DataRow { return &pgproto3.DataRow{Values: [][]byte{[]byte("0")}} }

const benchSelect = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"

// pgbench -S, simple protocol.
func selectOnlySteps() []step {
	return query(benchSelect, benchRowDescription(), benchDataRow(), cc("SELECT 1"), rfq(TxIdle))
}

// pgbench -N, simple protocol.
func simpleUpdateSteps() []step {
	var out []step
	out = append(out, query("BEGIN;", cc("BEGIN"), rfq(TxInBlock))...)
	out = append(out, query("UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;", cc("UPDATE 1"), rfq(TxInBlock))...)
	out = append(out, query("SELECT abalance FROM pgbench_accounts WHERE aid = 5678;", benchRowDescription(), benchDataRow(), cc("SELECT 1"), rfq(TxInBlock))...)
	out = append(out, query("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, -1234, CURRENT_TIMESTAMP);", cc("INSERT 0 1"), rfq(TxInBlock))...)
	out = append(out, query("END;", cc("COMMIT"), rfq(TxIdle))...)
	return out
}

// pgbench -S -M prepared: the statement is prepared once, then each
// transaction binds and executes it.
func preparedSelectSteps() []step {
	return []step{
		fe(&pgproto3.Bind{PreparedStatement: "P0_1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0x30, 0x39}}, ResultFormatCodes: []int16{1}}),
		fe(&pgproto3.Execute{}),
		fe(&pgproto3.Sync{}),
		be(&pgproto3.BindComplete{}),
		be(benchDataRow()),
		be(cc("SELECT 1")),
		be(rfq(TxIdle)),
	}
}

// benchTransactions plays steps once per iteration on a session that
// first played setup, and checks the session is still movable after.
func benchTransactions(b *testing.B, setup, steps []step) {
	s := benchSession(b)
	playBench(b, s, setup)
	b.ReportAllocs()
	for b.Loop() {
		playBench(b, s, steps)
	}
	if err := s.Movable(); err != nil {
		b.Fatalf("after the transactions: %v", err)
	}
}

func BenchmarkSelectOnlySimple(b *testing.B) { benchTransactions(b, nil, selectOnlySteps()) }

func BenchmarkSimpleUpdateSimple(b *testing.B) { benchTransactions(b, nil, simpleUpdateSteps()) }

func BenchmarkSelectOnlyPrepared(b *testing.B) {
	benchTransactions(b, []step{
		fe(&pgproto3.Parse{Name: "P0_1", Query: "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", ParameterOIDs: []uint32{23}}),
		fe(&pgproto3.Describe{ObjectType: objStmt, Name: "P0_1"}),
		fe(&pgproto3.Sync{}),
		be(&pgproto3.ParseComplete{}),
		be(&pgproto3.ParameterDescription{ParameterOIDs: []uint32{23}}),
		be(benchRowDescription()),
		be(rfq(TxIdle)),
	}, preparedSelectSteps())
}

// BenchmarkClassifyUpdate is the scanner and classifier alone on the pgbench -N UPDATE.
func BenchmarkClassifyUpdate(b *testing.B) {
	const sql = "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;"
	b.ReportAllocs()
	for b.Loop() {
		sts, err := splitStatements(sql, scanOptions{})
		if err != nil || len(sts) != 1 {
			b.Fatal(err)
		}
		_ = classify(sts[0])
	}
}
