package pg

import (
	"fmt"
	"strings"
	"testing"
)

// parseConf is a tiny postgresql.conf reader for the subset RenderConf
// writes (name = 'quoted value' per line), decoding quoted strings the way
// PostgreSQL's GUC_scanstr does. It fails on anything it does not
// understand, in particular on text after the closing quote: a value that
// broke out of its quotes makes it fail.
func parseConf(s string) (map[string]string, []string, error) {
	vals := map[string]string{}
	var order []string
	for i, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, rest, ok := strings.Cut(line, " = ")
		if !ok || !paramNameRe.MatchString(name) {
			return nil, nil, fmt.Errorf("line %d %q: no name = value", i+1, line)
		}
		if !strings.HasPrefix(rest, "'") {
			return nil, nil, fmt.Errorf("line %d: value not quoted", i+1)
		}
		var b strings.Builder
		j := 1
		closed := false
		for j < len(rest) {
			c := rest[j]
			switch {
			case c == '\'' && j+1 < len(rest) && rest[j+1] == '\'':
				b.WriteByte('\'')
				j += 2
			case c == '\'':
				closed = true
				j++
			case c == '\\' && j+1 < len(rest):
				n := rest[j+1]
				switch n {
				case 'b':
					b.WriteByte('\b')
				case 'f':
					b.WriteByte('\f')
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				default:
					if n >= '0' && n <= '7' {
						return nil, nil, fmt.Errorf("line %d: octal escape not expected from RenderConf", i+1)
					}
					b.WriteByte(n)
				}
				j += 2
			case c == '\\':
				return nil, nil, fmt.Errorf("line %d: dangling backslash", i+1)
			default:
				b.WriteByte(c)
				j++
			}
			if closed {
				break
			}
		}
		if !closed {
			return nil, nil, fmt.Errorf("line %d: unterminated quote", i+1)
		}
		if j != len(rest) {
			return nil, nil, fmt.Errorf("line %d: text after the closing quote: %q", i+1, rest[j:])
		}
		vals[name] = b.String() // the last one wins, as in PostgreSQL
		order = append(order, name)
	}
	return vals, order, nil
}

// parseConninfo is a tiny libpq keyword/value reader for what conninfo
// writes: key='value' with \\ and \' escapes, separated by single spaces.
func parseConninfo(s string) (map[string]string, error) {
	out := map[string]string{}
	for len(s) > 0 {
		k, rest, ok := strings.Cut(s, "='")
		if !ok || strings.ContainsAny(k, " '\\") {
			return nil, fmt.Errorf("bad keyword at %q", s)
		}
		var b strings.Builder
		i := 0
		for ; i < len(rest); i++ {
			if rest[i] == '\\' && i+1 < len(rest) {
				i++
				b.WriteByte(rest[i])
				continue
			}
			if rest[i] == '\'' {
				break
			}
			b.WriteByte(rest[i])
		}
		if i >= len(rest) {
			return nil, fmt.Errorf("unterminated value for %s", k)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s twice", k)
		}
		out[k] = b.String()
		s = strings.TrimPrefix(rest[i+1:], " ")
	}
	return out, nil
}

func baseSettings() Settings {
	return Settings{Member: "pg-1", ListenHost: "127.0.0.1", Port: 5432, HBAFile: "/data/pg/holdfast_hba.conf"}
}

func TestRenderConfPrimary(t *testing.T) {
	s := baseSettings()
	s.Parameters = map[string]string{"shared_buffers": "256MB", "work_mem": "4MB", "wal_keep_size": "1GB", "Max_Wal_Senders": "20"}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	vals, order, err := parseConf(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := map[string]string{
		"listen_addresses":         "127.0.0.1",
		"port":                     "5432",
		"unix_socket_directories":  "",
		"hba_file":                 "/data/pg/holdfast_hba.conf",
		"wal_level":                "replica",
		"hot_standby":              "on",
		"max_wal_senders":          "20", // the user's larger value
		"max_replication_slots":    "10",
		"wal_log_hints":            "on",
		"wal_keep_size":            "1GB", // a default the user overrides
		"hot_standby_feedback":     "on",
		"password_encryption":      "scram-sha-256",
		"cluster_name":             "pg-1",
		"log_destination":          "stderr",
		"logging_collector":        "off",
		"primary_conninfo":         "",
		"primary_slot_name":        "",
		"recovery_target_timeline": "latest",
		"shared_buffers":           "256MB",
		"work_mem":                 "4MB",
	}
	for k, v := range want {
		if vals[k] != v {
			t.Errorf("%s = %q, want %q", k, vals[k], v)
		}
	}
	// User parameters first: the first lines are the user's, sorted.
	if order[0] != "max_wal_senders" || order[1] != "shared_buffers" {
		t.Errorf("order = %v", order)
	}
	again, _ := RenderConf(s)
	if again != out {
		t.Error("RenderConf is not deterministic")
	}
}

func TestRenderConfOursWinAfterUsers(t *testing.T) {
	s := baseSettings()
	s.Parameters = map[string]string{"password_encryption": "md5", "cluster_name": "other", "max_replication_slots": "3"}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	// Both appear (user's first); PostgreSQL takes the last one.
	for _, name := range []string{"password_encryption", "cluster_name", "max_replication_slots"} {
		first := strings.Index(out, "\n"+name+" = ")
		last := strings.LastIndex(out, "\n"+name+" = ")
		if first < 0 || first == last {
			t.Errorf("%s: want the user's line and ours after it\n%s", name, out)
		}
	}
	if !strings.HasSuffix(strings.SplitAfter(out[strings.LastIndex(out, "\nmax_replication_slots = "):], "\n")[1], "'10'\n") {
		t.Errorf("max_replication_slots should be raised to 10:\n%s", out)
	}
}

func TestRenderConfStandby(t *testing.T) {
	s := baseSettings()
	s.Standby = true
	s.SlotName = "pg_2"
	s.Upstream = &Upstream{Host: "10.0.0.2", Port: 5433, User: "replicator", Password: `it's a \secret`}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	vals, _, err := parseConf(out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if vals["primary_slot_name"] != "pg_2" || vals["recovery_target_timeline"] != "latest" {
		t.Errorf("recovery settings: %v", vals)
	}
	ci, err := parseConninfo(vals["primary_conninfo"])
	if err != nil {
		t.Fatalf("%v: %s", err, vals["primary_conninfo"])
	}
	want := map[string]string{
		"host": "10.0.0.2", "port": "5433", "user": "replicator", "password": `it's a \secret`,
		"application_name": "pg-1", "connect_timeout": "2", "keepalives": "1",
	}
	for k, v := range want {
		if ci[k] != v {
			t.Errorf("primary_conninfo %s = %q, want %q", k, ci[k], v)
		}
	}
}

func TestRenderConfRefuses(t *testing.T) {
	cases := map[string]string{
		"wal_level":         "minimal",
		"hot_standby":       "off",
		"HOT_STANDBY":       "f",
		"port":              "5433",
		"listen_addresses":  "*",
		"hba_file":          "/etc/hba",
		"primary_conninfo":  "host=x",
		"primary_slot_name": "x",
		"Primary_Slot_Name": "x",
		"include":           "other.conf",
		"data_directory":    "/x",
		"bad name":          "1",
		"1abc":              "1",
		"a.b.c":             "1",
		"max_wal_senders":   "lots",
		"work_mem":          "4\x00MB",
	}
	for name, value := range cases {
		s := baseSettings()
		s.Parameters = map[string]string{name: value}
		_, err := RenderConf(s)
		if err == nil {
			t.Errorf("%s=%q accepted", name, value)
			continue
		}
		if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(strings.Fields(name)[0])) {
			t.Errorf("%s: error does not name the parameter: %v", name, err)
		}
	}
	s := baseSettings()
	s.Parameters = map[string]string{"work_mem": "1MB", "WORK_MEM": "2MB"}
	if _, err := RenderConf(s); err == nil {
		t.Error("the same name twice in different case was accepted")
	}
	s = baseSettings()
	s.SlotName = "x"
	if _, err := RenderConf(s); err == nil {
		t.Error("a primary with a slot was accepted")
	}
}

func TestRenderConfKeepsLogical(t *testing.T) {
	s := baseSettings()
	s.Parameters = map[string]string{"wal_level": "logical", "hot_standby": "yes", "custom.setting": "x"}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "\nwal_level = 'logical'\n") || strings.Contains(out, "wal_level = 'replica'") {
		t.Errorf("wal_level=logical must be kept:\n%s", out)
	}
}

func TestRenderConfQuotes(t *testing.T) {
	s := baseSettings()
	s.Parameters = map[string]string{"search_path": "'$user', public\nport = 1\\"}
	out, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `search_path = '''$user'', public\nport = 1\\'`) {
		t.Errorf("bad quoting:\n%s", out)
	}
	vals, _, err := parseConf(out)
	if err != nil {
		t.Fatal(err)
	}
	if vals["search_path"] != s.Parameters["search_path"] || vals["port"] != "5432" {
		t.Errorf("round trip: %q, port %q", vals["search_path"], vals["port"])
	}
}

func TestParseBool(t *testing.T) {
	for _, v := range []string{"on", "ON", "true", "t", "tr", "yes", "y", "1", " on "} {
		if b, ok := parseBool(v); !ok || !b {
			t.Errorf("%q: %v %v", v, b, ok)
		}
	}
	for _, v := range []string{"off", "of", "false", "f", "no", "n", "0"} {
		if b, ok := parseBool(v); !ok || b {
			t.Errorf("%q: %v %v", v, b, ok)
		}
	}
	for _, v := range []string{"", "o", "maybe", "2", "onn"} {
		if _, ok := parseBool(v); ok {
			t.Errorf("%q accepted", v)
		}
	}
}

func TestRenderHBA(t *testing.T) {
	out := RenderHBA(HBASettings{
		UserLines:       []string{"host all baduser 0.0.0.0/0 reject", "hostssl app app 10.0.0.0/8 scram-sha-256\nhost x y z md5"},
		ReplicationUser: `repl"x`,
	})
	lines := []string{}
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	want := []string{
		"host all baduser 0.0.0.0/0 reject",
		"hostssl app app 10.0.0.0/8 scram-sha-256",
		"host x y z md5",
		`host replication "repl""x" 0.0.0.0/0 scram-sha-256`,
		`host replication "repl""x" ::/0 scram-sha-256`,
		"host all all 0.0.0.0/0 scram-sha-256",
		"host all all ::/0 scram-sha-256",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if strings.Contains(out, "local") || strings.Contains(out, "trust") {
		t.Errorf("no local or trust rules expected:\n%s", out)
	}
}

func TestEnsureInclude(t *testing.T) {
	orig := "max_connections = 100\n# comment\n"
	once, changed := ensureInclude(orig)
	if !changed || !strings.HasPrefix(once, orig) || !strings.HasSuffix(once, includeLine+"\n") {
		t.Fatalf("first: %v %q", changed, once)
	}
	twice, changed := ensureInclude(once)
	if changed || twice != once {
		t.Fatalf("second call changed it: %q", twice)
	}
	// Trailing comments after our include still count as "last".
	withComment := once + "# trailing\n\n"
	if _, changed := ensureInclude(withComment); changed {
		t.Error("a trailing comment made it append again")
	}
	// An include that is no longer last is moved to the end, not duplicated.
	moved, changed := ensureInclude(once + "work_mem = '1MB'\n")
	if !changed || strings.Count(moved, includeLine) != 1 || !strings.HasSuffix(moved, includeLine+"\n") {
		t.Errorf("moved: %q", moved)
	}
	if empty, _ := ensureInclude(""); strings.Count(empty, includeLine) != 1 {
		t.Errorf("empty: %q", empty)
	}
}

// FuzzRenderConf checks that no parameter name or value, and no upstream
// host or password, produces a configuration line that breaks out of its
// quotes: what RenderConf writes parses back to exactly what it was given.
func FuzzRenderConf(f *testing.F) {
	f.Add("work_mem", "4MB", "secret", "db1")
	f.Add("search_path", "'a'\n b \\ c", `pa'ss\word`, "h' port='1")
	f.Add("x.y", "\r\n#", "\x00", "h")
	f.Add("port", "1", "p", "h")
	f.Add("shared_preload_libraries", "pg_stat_statements", "p w d", "::1")
	f.Fuzz(func(t *testing.T, name, value, password, host string) {
		s := baseSettings()
		s.Parameters = map[string]string{name: value}
		s.Standby = true
		s.SlotName = "slot_1"
		s.Upstream = &Upstream{Host: host, Port: 5432, User: "replicator", Password: password}
		if host == "" {
			s.Upstream.Host = "h"
		}
		out, err := RenderConf(s)
		if err != nil {
			return
		}
		vals, _, err := parseConf(out)
		if err != nil {
			t.Fatalf("rendered config does not parse back: %v\n%s", err, out)
		}
		lower := strings.ToLower(name)
		if _, ours := vals[lower]; !ours {
			t.Fatalf("parameter %q missing from\n%s", name, out)
		}
		// The user's line is the first setting with that name; ours may
		// follow. Parse the user section alone to compare.
		userPart := out[:strings.Index(out, "\n# Holdfast's settings")]
		uvals, _, err := parseConf(userPart)
		if err != nil {
			t.Fatal(err)
		}
		if len(uvals) != 1 || uvals[lower] != value {
			t.Fatalf("user section = %q, want {%s: %q}", uvals, lower, value)
		}
		ci, err := parseConninfo(vals["primary_conninfo"])
		if err != nil {
			t.Fatalf("primary_conninfo %q: %v", vals["primary_conninfo"], err)
		}
		if ci["password"] != password || ci["host"] != s.Upstream.Host || ci["user"] != "replicator" || len(ci) != 10 {
			t.Fatalf("primary_conninfo round trip: %q", ci)
		}
		for _, k := range []string{"port", "listen_addresses", "hba_file", "primary_slot_name"} {
			if strings.Count(out, "\n"+k+" = ") != 1 {
				t.Fatalf("%s appears more than once:\n%s", k, out)
			}
		}
	})
}
