package pg

import (
	"strings"
	"testing"

	"github.com/holdfast/holdfast/internal/cluster"
)

// controlDataPrimary is pg_controldata output of PostgreSQL 15 (LC_ALL=C).
const controlDataPrimary = `pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7412345678901234567
Database cluster state:               in production
pg_control last modified:             Mon 01 Jan 2024 12:00:00 PM UTC
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's REDO WAL file:    000000010000000000000003
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Latest checkpoint's full_page_writes: on
Latest checkpoint's NextXID:          0:735
Time of latest checkpoint:            Mon 01 Jan 2024 12:00:00 PM UTC
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   0
Backup start location:                0/0
Backup end location:                  0/0
End-of-backup record required:        no
wal_level setting:                    replica
wal_log_hints setting:                on
max_connections setting:              100
Data page checksum version:           1
Mock authentication nonce:            0123456789abcdef
`

func TestParseControlData(t *testing.T) {
	cd, err := ParseControlData(controlDataPrimary)
	if err != nil {
		t.Fatal(err)
	}
	want := ControlData{
		SystemID:           "7412345678901234567",
		State:              StateInProduction,
		CheckpointLSN:      0x3000060,
		CheckpointRedoLSN:  0x3000028,
		CheckpointTimeline: 1,
		DataChecksums:      true,
		WALLogHints:        true,
	}
	if cd != want {
		t.Errorf("got %+v\nwant %+v", cd, want)
	}
	if cd.State.CleanShutdown() {
		t.Error("in production is not a clean shutdown")
	}

	standby := strings.NewReplacer(
		"in production", "shut down in recovery",
		"Minimum recovery ending location:     0/0", "Minimum recovery ending location:     1/A0000D8",
		"Min recovery ending loc's timeline:   0", "Min recovery ending loc's timeline:   3",
		"Data page checksum version:           1", "Data page checksum version:           0",
		"wal_log_hints setting:                on", "wal_log_hints setting:                off",
	).Replace(controlDataPrimary)
	cd, err = ParseControlData(standby)
	if err != nil {
		t.Fatal(err)
	}
	if cd.State != StateShutDownInRecovery || !cd.State.CleanShutdown() || cd.MinRecoveryLSN != 0x1_0A0000D8 ||
		cd.MinRecoveryTimeline != 3 || cd.DataChecksums || cd.WALLogHints {
		t.Errorf("standby: %+v", cd)
	}
}

func TestParseControlDataErrors(t *testing.T) {
	for name, in := range map[string]string{
		"empty":     "",
		"no sysid":  strings.Replace(controlDataPrimary, "Database system identifier", "X", 1),
		"bad sysid": strings.Replace(controlDataPrimary, "7412345678901234567", "abc", 1),
		"bad lsn":   strings.Replace(controlDataPrimary, "0/3000060", "zz", 1),
		"no tli":    strings.Replace(controlDataPrimary, "Latest checkpoint's TimeLineID", "X", 1),
		"tli zero":  strings.Replace(controlDataPrimary, "TimeLineID:       1", "TimeLineID:       0", 1),
		"translated": strings.NewReplacer("Database system identifier", "Datenbanksystemidentifikation",
			"Database cluster state", "Datenbank-Cluster-Status").Replace(controlDataPrimary),
	} {
		if _, err := ParseControlData(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseHistory(t *testing.T) {
	in := "1\t0/3000158\tno recovery target specified\n\n# comment\n2\t0/5000000\tat restore point \"x\"\n3\t1/0\t\n"
	h, err := ParseHistory(in)
	if err != nil {
		t.Fatal(err)
	}
	want := []TimelineSwitch{
		{1, 0x3000158, "no recovery target specified"},
		{2, 0x5000000, `at restore point "x"`},
		{3, 1 << 32, ""},
	}
	if len(h) != len(want) {
		t.Fatalf("got %+v", h)
	}
	for i := range want {
		if h[i] != want[i] {
			t.Errorf("%d: got %+v want %+v", i, h[i], want[i])
		}
	}
	if h, err := ParseHistory(""); err != nil || h != nil {
		t.Errorf("empty: %v %v", h, err)
	}
	for _, bad := range []string{"x\t0/1\tr", "1", "1\tnope\tr", "2\t0/1\tr\n1\t0/2\tr", "1\t0/2\tr\n2\t0/1\tr", "0\t0/1\tr"} {
		if _, err := ParseHistory(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if historyFileName(10) != "0000000A.history" {
		t.Error(historyFileName(10))
	}
}

func TestTimelineFromWALFile(t *testing.T) {
	if tli, err := timelineFromWALFile("0000000A0000000100000003"); err != nil || tli != 10 {
		t.Errorf("%d %v", tli, err)
	}
	for _, bad := range []string{"", "0000000A", "00000000000000010000000Z", "000000000000000100000003"} {
		if _, err := timelineFromWALFile(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStatusPosition(t *testing.T) {
	p := Status{Ready: true, Timeline: 2, WriteLSN: 100}
	if p.Position() != (cluster.Position{Timeline: 2, LSN: 100}) {
		t.Error(p.Position())
	}
	r := Status{Ready: true, InRecovery: true, Timeline: 3, ReceiveLSN: 50, ReplayLSN: 70}
	if r.Position() != (cluster.Position{Timeline: 3, LSN: 70}) {
		t.Error(r.Position())
	}
	r.ReceiveLSN = 90
	if r.Position().LSN != 90 {
		t.Error(r.Position())
	}
	// Replay paused at 70 while 90 was received: reported apart, so reads
	// can be judged by what they see and failover by what was received.
	if r.ReplayedLSN() != 70 || cluster.ReplayedPosition(r.Position(), r.ReplayedLSN()) != (cluster.Position{Timeline: 3, LSN: 70}) {
		t.Errorf("standby replayed %v", r.ReplayedLSN())
	}
	// A promoted primary's pg_last_wal_replay_lsn stays where recovery
	// ended: not a replay position.
	p.ReplayLSN = 60
	if p.ReplayedLSN() != 0 {
		t.Errorf("primary replayed %v, want 0", p.ReplayedLSN())
	}
}

func TestQuote(t *testing.T) {
	if q, err := QuoteIdent(`we"ird`); err != nil || q != `"we""ird"` {
		t.Errorf("%s %v", q, err)
	}
	if _, err := QuoteIdent("a\x00b"); err == nil {
		t.Error("NUL identifier accepted")
	}
	if _, err := QuoteIdent(""); err == nil {
		t.Error("empty identifier accepted")
	}
	for in, want := range map[string]string{
		"plain":   "'plain'",
		"it's":    "'it''s'",
		`back\sl`: `E'back\\sl'`,
		`'\`:      `E'''\\'`,
		"":        "''",
	} {
		if got, err := QuoteLiteral(in); err != nil || got != want {
			t.Errorf("QuoteLiteral(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	if _, err := QuoteLiteral("a\x00"); err == nil {
		t.Error("NUL literal accepted")
	}
}

func TestSCRAM(t *testing.T) {
	// Verifier of "secret" with a known salt, as computed by PostgreSQL's
	// algorithm (RFC 7677 construction).
	v, err := scramVerifier("secret", []byte("0123456789abcdef"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$") {
		t.Errorf("verifier %s", v)
	}
	if !scramMatches(v, "secret") || scramMatches(v, "Secret") || scramMatches("md5abc", "secret") || scramMatches("SCRAM-SHA-256$x", "secret") {
		t.Error("scramMatches is wrong")
	}
	if scramEncodable("pässword") || scramEncodable("") || !scramEncodable("p@ss w0rd!") {
		t.Error("scramEncodable is wrong")
	}
}

func TestVersionOrder(t *testing.T) {
	v96, _ := parseVersion("9.6")
	v15, _ := parseVersion("15")
	v16, _ := parseVersion("16")
	if !versionLess(v96, v15) || !versionLess(v15, v16) || versionLess(v16, v15) {
		t.Error("numeric version order is wrong")
	}
	if _, ok := parseVersion("main"); ok {
		t.Error("non-numeric version accepted")
	}
}

func TestLastLines(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 30; i++ {
		b.WriteString("line\n")
	}
	if n := strings.Count(lastLines(b.String(), 20), "\n"); n != 19 {
		t.Errorf("%d newlines", n)
	}
	tb := &tailBuffer{max: 8}
	tb.Write([]byte("0123456789"))
	tb.Write([]byte("ab"))
	if tb.String() != "456789ab" {
		t.Error(tb.String())
	}
}

func FuzzParseControlData(f *testing.F) {
	f.Add(controlDataPrimary)
	f.Add("Database system identifier: 1\nDatabase cluster state: x\nLatest checkpoint location: 0/0\nLatest checkpoint's TimeLineID: 1\n")
	f.Add(":::\n\x00")
	f.Fuzz(func(t *testing.T, s string) {
		cd, err := ParseControlData(s)
		if err == nil && (cd.SystemID == "" || cd.CheckpointTimeline == 0 || cd.State == "") {
			t.Fatalf("accepted without required fields: %+v", cd)
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add("1\t0/3000158\tno recovery target specified\n")
	f.Add("# c\n\n2\t1/0\n3\tFFFFFFFF/FFFFFFFF\tx\ty\n")
	f.Add("\t\t\n1 0/1")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHistory(s)
		if err != nil {
			return
		}
		for i := 1; i < len(h); i++ {
			if h[i].ParentTimeline <= h[i-1].ParentTimeline {
				t.Fatalf("not increasing: %+v", h)
			}
		}
	})
}

func TestParseWALEnd(t *testing.T) {
	cases := []struct {
		out  string
		want cluster.LSN
		ok   bool
	}{
		{"first record is after 0/1500000, at 0/15000B8, skipping over 184 bytes\npg_waldump: error: error in WAL record at 0/164FC38: invalid record length at 0/164FDD0: wanted 24, got 0\n", 0x164FDD0, true},
		{"pg_waldump: error: error in WAL record at 0/1FFFF80: invalid record length at 0/1FFFFE8: expected at least 24, got 0", 0x1FFFFE8, true},
		{"pg_waldump: error: error in WAL record at 0/1FFFFA0: unexpected pageaddr 0/1000000 in WAL segment 000000010000000000000002, LSN 0/2000000, offset 0", 0x2000000, true},
		{"pg_waldump: error: could not open directory \"x\": No such file or directory", 0, false},
	}
	for _, c := range cases {
		got, ok := parseWALEnd(c.out)
		if got != c.want || ok != c.ok {
			t.Errorf("parseWALEnd(%q) = %s %v, want %s %v", c.out, got, ok, c.want, c.ok)
		}
	}
}

func TestParseDivergence(t *testing.T) {
	out := "pg_rewind: servers diverged at WAL location 0/3000148 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: Done!\n"
	if p, ok := parseDivergence(out); !ok || p != (cluster.Position{Timeline: 1, LSN: 0x3000148}) {
		t.Errorf("parseDivergence = %+v %v", p, ok)
	}
	if _, ok := parseDivergence("pg_rewind: no rewind required\n"); ok {
		t.Error("parseDivergence found a divergence in output without one")
	}
	r := RewindResult{Rewound: true, Diverged: cluster.Position{Timeline: 1, LSN: 0x3000148}, EndOfWAL: 0x3000200}
	if r.Discarded() != 0xB8 {
		t.Errorf("Discarded = %d", r.Discarded())
	}
	r.EndOfWAL = 0
	if r.Discarded() != 0 {
		t.Error("an unknown end of WAL counts as nothing discarded")
	}
}
