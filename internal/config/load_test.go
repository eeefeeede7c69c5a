package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// baseYAML is the least a member's config file needs.
const baseYAML = `
name: n1
data_dir: /var/lib/holdfast
store:
  embedded:
    peers: {n1: "http://127.0.0.1:2380"}
`

// baseConfig is what baseYAML loads to.
func baseConfig() Config {
	c := Defaults()
	c.Name = "n1"
	c.DataDir = "/var/lib/holdfast"
	c.Store.Embedded.Peers = map[string]string{"n1": "http://127.0.0.1:2380"}
	return c
}

func noHostname() (string, error) { return "", errors.New("no host name in tests") }

// loadYAML writes content to a config file and loads it with opts.
func loadYAML(t *testing.T, content string, opts LoadOptions) (Config, string, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "holdfast.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	opts.File = path
	if opts.Hostname == nil {
		opts.Hostname = noHostname
	}
	c, err := Load(opts)
	return c, path, err
}

// wantErr checks that err mentions every want, with FILE replaced by path.
func wantErr(t *testing.T, err error, path string, wants ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want one mentioning %q", wants)
	}
	for _, w := range wants {
		if w = strings.ReplaceAll(w, "FILE", path); !strings.Contains(err.Error(), w) {
			t.Errorf("error does not mention %q:\n%v", w, err)
		}
	}
}

func TestLoadFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top-level key", "nmae: n1\n",
			[]string{"config FILE line 1: nmae: unknown key (known keys: cluster, name, data_dir,", "did you mean name?"}},
		{"unknown nested key", "postgresql:\n  listen: a:1\n  listne: b:2\n",
			[]string{"config FILE line 3: postgresql.listne: unknown key (known keys in postgresql: listen, connect_address, bin_dir,", "did you mean listen?"}},
		{"unknown deep key", "store:\n  embedded:\n    peer: {}\n",
			[]string{"config FILE line 3: store.embedded.peer: unknown key (known keys in store.embedded: listen_peer,"}},
		{"bad duration", "\n\nttl: ten\n",
			[]string{`config FILE line 3: ttl: "ten" is not a duration (write e.g. "10s" or "500ms")`}},
		{"duration overflow", "ttl: 99999999999\n", []string{"config FILE line 1: ttl:", "out of range"}},
		{"bad size", "maximum_lag_on_failover: 1XB\n",
			[]string{`config FILE line 1: maximum_lag_on_failover: "1XB" is not a size`, "kB, MB"}},
		{"size overflow", "maximum_lag_on_failover: 9999999999TB\n", []string{"maximum_lag_on_failover:", "out of range"}},
		{"bad bool", "witness: maybe\n", []string{`config FILE line 1: witness: "maybe" is not a boolean (write true or false)`}},
		{"section given a scalar", "postgresql: 5\n",
			[]string{`config FILE line 1: postgresql: expected a mapping of keys (known keys in postgresql: listen,`, `found "5"`}},
		{"leaf given a list", "name: [a]\n", []string{"config FILE line 1: name: expected a string, found a list"}},
		{"duration given a mapping", "ttl: {a: 1}\n", []string{"config FILE line 1: ttl: expected a duration"}},
		{"list given a scalar", "store:\n  endpoints: http://e:2379\n",
			[]string{`config FILE line 2: store.endpoints: expected a list, found "http://e:2379" (write [a, b]`}},
		{"list item not a scalar", "postgresql:\n  pg_hba:\n    - [a]\n", []string{"config FILE line 3: postgresql.pg_hba: expected a value, found a list"}},
		{"map value not a scalar", "tags:\n  a: [1]\n", []string{"config FILE line 2: tags.a: expected a value, found a list"}},
		{"map value null", "tags:\n  a:\n", []string{"config FILE line 2: tags.a: expected a value, found nothing"}},
		{"map given a list", "tags: [a]\n", []string{"config FILE line 1: tags: expected a mapping of key: value pairs, found a list"}},
		{"duplicate key", "ttl: 4s\nname: a\nttl: 5s\n", []string{"config FILE line 3: ttl: duplicate key (first at line 1"}},
		{"duplicate nested key", "log:\n  level: info\n  level: debug\n", []string{"config FILE line 3: log.level: duplicate key (first at line 2"}},
		{"duplicate map key", "tags:\n  a: 1\n  a: 2\n", []string{"config FILE line 3: tags.a: duplicate key (first at line 2"}},
		{"complex key", "? [a]\n: b\n", []string{"config FILE line 1: keys must be plain names, found a list"}},
		{"merge key", "base: &b {level: info}\nlog:\n  <<: *b\n", []string{"config FILE line 1: base: unknown key", "config FILE line 3: log.<<: merge keys are not supported"}},
		{"top level list", "- a\n- b\n", []string{"config FILE line 1: the top level must be a mapping of keys (known keys: cluster,", "found a list"}},
		{"top level scalar", "hello\n", []string{`config FILE line 1: the top level must be a mapping`, `found "hello"`}},
		{"syntax error", "a: b: c\n", []string{"config FILE: yaml: mapping values are not allowed"}},
		{"unterminated", "name: \"n1\n", []string{"config FILE: yaml: "}},
		{"second document", "ttl: 4s\n---\nttl: 5s\n", []string{"config FILE line 2: a second YAML document"}},
		{"bad binary", "name: !!binary '%%%'\n", []string{"config FILE line 1: name: invalid !!binary value"}},
		{"every error reported", "ttl: x\nloop_interval: y\nbogus: 1\n",
			[]string{"line 1: ttl:", "line 2: loop_interval:", "line 3: bogus: unknown key"}},
		// Impossible values are refused naming the line they came from.
		{"port out of range", baseYAML + "postgresql:\n  listen: 127.0.0.1:70000\n",
			[]string{"config FILE line 8: postgresql.listen: port 70000 out of range 1-65535"}},
		{"relative data dir", "data_dir: data\nname: n1\n", []string{`config FILE line 1: data_dir: "data" is not an absolute path`}},
		{"peer map problem names the entry's line", baseYAML + "    clients:\n      n9: http://h:1\n",
			[]string{`config FILE line 8: store.embedded.clients.n9: "n9" is not in store.embedded.peers`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := loadYAML(t, tc.yaml, LoadOptions{})
			wantErr(t, err, path, tc.want...)
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.yaml")
	_, err := Load(LoadOptions{File: path, Hostname: noHostname})
	wantErr(t, err, path, "reading config: open FILE")
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error does not wrap os.ErrNotExist: %v", err)
	}
}

func TestLoadFileValues(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       func(*Config)
	}{
		{"empty file", "", nil},
		{"only comments", "# nothing here\n  # indented\n", nil},
		{"empty document", "---\n", nil},
		{"null top level", "~\n", nil},
		{"empty mapping", "{}\n", nil},
		{"commented-out section keeps defaults", "postgresql:\n  # listen: 0.0.0.0:5432\nlog:\n", nil},
		{"null leaf keeps default", "ttl:\nlog: {level: ~}\n", nil},
		{"duration in seconds", "ttl: 10\n", func(c *Config) { c.TTL = Duration(10 * time.Second) }},
		{"duration units", "ttl: 1m30s\nloop_interval: 500ms\n", func(c *Config) {
			c.TTL, c.LoopInterval = Duration(90*time.Second), Duration(500*time.Millisecond)
		}},
		{"size in bytes", "maximum_lag_on_failover: 1000\n", func(c *Config) { c.MaximumLagOnFailover = 1000 }},
		{"size with unit", "maximum_lag_on_failover: 16MB\n", func(c *Config) { c.MaximumLagOnFailover = 16 << 20 }},
		{"size with space and IEC unit", "maximum_lag_on_failover: 2 GiB\n", func(c *Config) { c.MaximumLagOnFailover = 2 << 30 }},
		{"bool spellings", "witness: yes\n", func(c *Config) { c.Witness = true }},
		{"string from other scalar types keeps its text", "postgresql:\n  superuser: {password: 0123}\n  replication: {password: 1.50}\n", func(c *Config) {
			c.PostgreSQL.Superuser.Password, c.PostgreSQL.Replication.Password = "0123", "1.50"
		}},
		{"map values of any scalar type", "tags: {nofailover: true, weight: 010, zone: eu-1, empty: ''}\n", func(c *Config) {
			c.Tags = map[string]string{"nofailover": "true", "weight": "010", "zone": "eu-1", "empty": ""}
		}},
		{"empty list and map", "tags: {}\npostgresql: {pg_hba: []}\n", func(c *Config) {
			c.Tags, c.PostgreSQL.PgHBA = map[string]string{}, []string{}
		}},
		{"binary string", "postgresql: {superuser: {password: !!binary aGk=}}\n", func(c *Config) { c.PostgreSQL.Superuser.Password = "hi" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The base settings come from flags, so the file is exactly tc.yaml.
			got, _, err := loadYAML(t, tc.yaml, LoadOptions{Sets: []string{"name=n1", "data_dir=/var/lib/holdfast", "store.embedded.peers.n1=http://127.0.0.1:2380"}})
			if err != nil {
				t.Fatal(err)
			}
			want := baseConfig()
			if tc.want != nil {
				tc.want(&want)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadAliases(t *testing.T) {
	y := `
name: n1
data_dir: /var/lib/holdfast
store:
  embedded:
    listen_peer: &peer 127.0.0.1:2390
    advertise_peer: *peer
    peers: &peers {n1: "http://127.0.0.1:2390"}
    clients: {n1: "http://127.0.0.1:2379"}
tags: *peers
`
	c, _, err := loadYAML(t, y, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Store.Embedded.AdvertisePeer != "127.0.0.1:2390" || c.Tags["n1"] != "http://127.0.0.1:2390" {
		t.Errorf("aliases not followed: %+v", c)
	}
}

func TestLoadEnv(t *testing.T) {
	env := []string{
		"PATH=/usr/bin",
		"HOLDFAST_CONFIG=/etc/holdfast.yaml", // the CLI's
		"HOLDFAST_TEST_PG_BIN=/usr/lib/postgresql/17/bin",
		// The project's scripts' and tests' variables reach agents too.
		"HOLDFAST_KUBE_REQUIRED=1", "HOLDFAST_CACHE=/c", "HOLDFAST_BENCH=1", "HOLDFAST_BENCH_RUNS=5", "HOLDFAST_API_TOKEN=t",
		"HOLDFAST_NAME=n2",
		"HOLDFAST_TTL=10",
		"HOLDFAST_WITNESS=false",
		"HOLDFAST_MAXIMUM_LAG_ON_FAILOVER=16MB",
		"HOLDFAST_POSTGRESQL_LISTEN=10.0.0.2:5433",
		"HOLDFAST_POSTGRESQL_SUPERUSER_PASSWORD= s3cret,with=stuff ",
		"HOLDFAST_STORE_EMBEDDED_LISTEN_PEER=10.0.0.2:2380",
		"HOLDFAST_STORE_EMBEDDED_PEERS=n1=http://10.0.0.1:2380, n2=http://10.0.0.2:2380",
		"HOLDFAST_POSTGRESQL_INITDB_ARGS=--data-checksums, --locale=C",
		`HOLDFAST_POSTGRESQL_PG_HBA=["host db1,db2 all 10.0.0.0/8 scram-sha-256"]`,
		`HOLDFAST_POSTGRESQL_PARAMETERS={shared_preload_libraries: "pg_stat_statements,auto_explain", max_connections: 200}`,
		"HOLDFAST_TAGS=",
	}
	c, _, err := loadYAML(t, baseYAML, LoadOptions{Env: env})
	if err != nil {
		t.Fatal(err)
	}
	want := baseConfig()
	want.Name = "n2"
	want.TTL = Duration(10 * time.Second)
	want.MaximumLagOnFailover = 16 << 20
	want.PostgreSQL.Listen = "10.0.0.2:5433"
	want.PostgreSQL.Superuser.Password = " s3cret,with=stuff "
	want.Store.Embedded.ListenPeer = "10.0.0.2:2380"
	want.Store.Embedded.Peers = map[string]string{"n1": "http://10.0.0.1:2380", "n2": "http://10.0.0.2:2380"}
	want.PostgreSQL.InitdbArgs = []string{"--data-checksums", "--locale=C"}
	want.PostgreSQL.PgHBA = []string{"host db1,db2 all 10.0.0.0/8 scram-sha-256"}
	want.PostgreSQL.Parameters = map[string]string{"shared_preload_libraries": "pg_stat_statements,auto_explain", "max_connections": "200"}
	want.Tags = map[string]string{}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestLoadEnvErrors(t *testing.T) {
	for _, tc := range []struct {
		env  string
		want []string
	}{
		{"HOLDFAST_TTL=ten", []string{`environment variable HOLDFAST_TTL: "ten" is not a duration (write e.g. "10s" or "500ms")`}},
		{"HOLDFAST_WITNESS=sometimes", []string{`environment variable HOLDFAST_WITNESS: "sometimes" is not a boolean`}},
		{"HOLDFAST_POSTGRESQL_LISTN=x", []string{"environment variable HOLDFAST_POSTGRESQL_LISTN: unknown variable; did you mean HOLDFAST_POSTGRESQL_LISTEN?"}},
		{"HOLDFAST_BOGUS=1", []string{"environment variable HOLDFAST_BOGUS: unknown variable"}},
		{"HOLDFAST_POSTGRESQL=1", []string{"environment variable HOLDFAST_POSTGRESQL: unknown variable"}},
		{"HOLDFAST_TAGS=a", []string{`environment variable HOLDFAST_TAGS: "a" is not key=value (write k1=v1,k2=v2)`}},
		{"HOLDFAST_TAGS={a: [1]}", []string{"environment variable HOLDFAST_TAGS: tags.a: expected a value, found a list"}},
		{"HOLDFAST_TAGS={a", []string{"environment variable HOLDFAST_TAGS: invalid YAML flow value: yaml:"}},
		{"HOLDFAST_POSTGRESQL_LISTEN=127.0.0.1:70000", []string{"environment variable HOLDFAST_POSTGRESQL_LISTEN: postgresql.listen: port 70000 out of range 1-65535"}},
		{"HOLDFAST_TTL=1s", []string{"environment variable HOLDFAST_TTL: ttl: 1s is too short (minimum 2s)"}},
	} {
		t.Run(tc.env, func(t *testing.T) {
			_, path, err := loadYAML(t, baseYAML, LoadOptions{Env: []string{tc.env}})
			wantErr(t, err, path, tc.want...)
		})
	}
	if _, _, err := loadYAML(t, baseYAML, LoadOptions{Env: []string{"HOLDFAST_TTLL=5s"}}); err == nil || !strings.Contains(err.Error(), "did you mean HOLDFAST_TTL?") {
		t.Errorf("no suggestion for HOLDFAST_TTLL: %v", err)
	}
}

func TestLoadSets(t *testing.T) {
	c, _, err := loadYAML(t, baseYAML+"tags: {zone: a, rack: r1}\n", LoadOptions{Sets: []string{
		"tags.nofailover=true",
		"tags.zone=b",
		"postgresql.parameters.auto_explain.log_min_duration=250ms",
		"postgresql.pg_hba=host all all 10.0.0.0/8 md5,local all all peer",
		"log.level=debug",
		"store.embedded.clients=n1=http://127.0.0.1:2379",
		"postgresql.replication.password=a=b",
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := baseConfig()
	want.Tags = map[string]string{"zone": "b", "rack": "r1", "nofailover": "true"}
	want.PostgreSQL.Parameters = map[string]string{"auto_explain.log_min_duration": "250ms"}
	want.PostgreSQL.PgHBA = []string{"host all all 10.0.0.0/8 md5", "local all all peer"}
	want.Log.Level = "debug"
	want.Store.Embedded.Clients = map[string]string{"n1": "http://127.0.0.1:2379"}
	want.PostgreSQL.Replication.Password = "a=b"
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
}

func TestLoadSetErrors(t *testing.T) {
	for _, tc := range []struct {
		set  string
		want []string
	}{
		{"ttl=ten", []string{`--set ttl: "ten" is not a duration (write e.g. "10s" or "500ms")`}},
		{"maximum_lag_on_failover=lots", []string{`--set maximum_lag_on_failover: "lots" is not a size`}},
		{"ttl", []string{`--set ttl: missing "=" (write --set key=value)`}},
		{"postgresql.listn=x", []string{"--set postgresql.listn: unknown key; did you mean postgresql.listen?"}},
		{"bogus=1", []string{"--set bogus: unknown key"}},
		{"store.embedded=x", []string{"--set store.embedded: store.embedded is a section, not a value: set one of its keys (store.embedded.listen_peer,"}},
		{"log.level.x=1", []string{"--set log.level.x: unknown key"}},
		{"postgresql.listen=127.0.0.1:70000", []string{"--set postgresql.listen: port 70000 out of range 1-65535"}},
		{"postgresql.parameters.bad name=1", []string{`--set postgresql.parameters.bad name: "bad name" is not a PostgreSQL parameter name`}},
		{"store.embedded.peers.n1=ftp://x", []string{`--set store.embedded.peers.n1: "ftp://x" is not an http(s)://host:port URL`}},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, path, err := loadYAML(t, baseYAML, LoadOptions{Sets: []string{tc.set}})
			wantErr(t, err, path, tc.want...)
		})
	}
}

// TestLoadPrecedence: defaults < file < env < sets, leaf by leaf.
func TestLoadPrecedence(t *testing.T) {
	file := baseYAML + `
ttl: 5s
loop_interval: 500ms
primary_start_timeout: 20s
tags: {a: "1", b: "2"}
log: {level: warn}
`
	env := []string{
		"HOLDFAST_TTL=6s",
		"HOLDFAST_LOOP_INTERVAL=600ms",
		"HOLDFAST_TAGS=c=3",
		"HOLDFAST_LOG_FORMAT=json",
	}
	sets := []string{"ttl=7s", "tags.d=4", "ttl=8s"}
	c, _, err := loadYAML(t, file, LoadOptions{Env: env, Sets: sets})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		key       string
		got, want any
	}{
		{"cluster (default)", c.Cluster, "holdfast"},
		{"maximum_lag_on_failover (default)", c.MaximumLagOnFailover, ByteSize(1 << 20)},
		{"primary_start_timeout (file)", c.PrimaryStartTimeout, Duration(20 * time.Second)},
		{"log.level (file)", c.Log.Level, "warn"},
		{"log.format (env over default)", c.Log.Format, "json"},
		{"loop_interval (env over file)", c.LoopInterval, Duration(600 * time.Millisecond)},
		{"ttl (last set over env over file)", c.TTL, Duration(8 * time.Second)},
		{"tags (env replaces the map, set adds an entry)", c.Tags, map[string]string{"c": "3", "d": "4"}},
	} {
		if !reflect.DeepEqual(tc.got, tc.want) {
			t.Errorf("%s = %v, want %v", tc.key, tc.got, tc.want)
		}
	}
}

func TestLoadWithoutFile(t *testing.T) {
	c, err := Load(LoadOptions{
		Env:      []string{"HOLDFAST_DATA_DIR=/d", "HOLDFAST_STORE_EMBEDDED_PEERS=db1=http://127.0.0.1:2380"},
		Hostname: func() (string, error) { return "DB1.example.com", nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "db1" {
		t.Errorf("name = %q, want the short lower-cased host name db1", c.Name)
	}
}

func TestLoadHostname(t *testing.T) {
	named := func(h string, err error) func() (string, error) { return func() (string, error) { return h, err } }
	_, path, err := loadYAML(t, "data_dir: /d\n", LoadOptions{Hostname: named("", errors.New("uname failed"))})
	wantErr(t, err, path, "name: not set, and the host name is unknown", "uname failed")

	_, path, err = loadYAML(t, "data_dir: /d\nstore: {embedded: {peers: {db-1: http://h:1}}}\n", LoadOptions{Hostname: named("db_1", nil)})
	wantErr(t, err, path, `name: "db_1" is not a valid name`, "name is not set, so the host name was used")

	_, _, err = loadYAML(t, baseYAML, LoadOptions{Hostname: func() (string, error) {
		t.Error("Hostname called although name is set")
		return "", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	full := baseConfig()
	full.Cluster = "prod-1"
	full.Witness = true
	full.Tags = map[string]string{"nofailover": "true", "n": "0123", "": "empty key", "multi": "a\nb\n"}
	full.TTL = Duration(90 * time.Second)
	full.LoopInterval = Duration(1500 * time.Millisecond)
	full.MaximumLagOnFailover = 1000
	full.PrimaryStartTimeout = 0
	full.Store.Embedded.AdvertisePeer = "10.0.0.1:2380"
	full.Store.Embedded.ListenPeer = "0.0.0.0:2380"
	full.Store.Embedded.Peers = map[string]string{"n1": "http://10.0.0.1:2380", "n2": "https://[::1]:2380"}
	full.Store.Embedded.Clients = map[string]string{}
	full.Store.Endpoints = []string{}
	full.PostgreSQL.Parameters = map[string]string{"work_mem": "4MB", "search_path": `"$user", public`}
	full.PostgreSQL.PgHBA = []string{"host all all 0.0.0.0/0 scram-sha-256", "# comment"}
	full.PostgreSQL.Superuser.Password = `it's "quoted": yes # not a comment`
	full.PostgreSQL.Replication.Password = "true"
	full.PostgreSQL.InitdbArgs = []string{"--data-checksums", " spaced ", "", "null", "~", "- dash"}
	full.PostgreSQL.OSUser = "\xff\xfe not utf-8"
	full.PostgreSQL.BinDir = "/usr/lib/postgresql/17/bin"
	full.PostgreSQL.ConnectAddress = ""
	full.PostgreSQL.Listen = ""
	full.API = API{Listen: "0.0.0.0:8443", ConnectAddress: "[fe80::1]:8443", AuthToken: "tok-en_1",
		TLS: TLS{CertFile: "/etc/holdfast/api.crt", KeyFile: "/etc/holdfast/api.key", ClientCAFile: "/etc/holdfast/ca.crt"}}
	full.Watchdog = Watchdog{Mode: WatchdogRequired, Device: "/dev/watchdog1", SafetyMargin: Duration(1500 * time.Millisecond)}

	etcd := baseConfig()
	etcd.Store.Mode = StoreEtcd
	etcd.Store.Endpoints = []string{"https://e1:2379", "https://e2:2379"}
	etcd.Store.Embedded = Embedded{}
	etcd.Store.Prefix = "/x/"
	etcd.Log = Log{Level: "debug", Format: "json"}
	etcd.MaximumLagOnFailover = 3 << 40

	for name, c := range map[string]Config{"base": baseConfig(), "full witness": full, "etcd": etcd} {
		t.Run(name, func(t *testing.T) {
			if err := c.Validate(); err != nil {
				t.Fatalf("test config is invalid: %v", err)
			}
			b, err := Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			got, _, err := loadYAML(t, string(b), LoadOptions{})
			if err != nil {
				t.Fatalf("Load(Marshal(c)): %v\n%s", err, b)
			}
			if !reflect.DeepEqual(got, c) {
				t.Errorf("round trip changed the config:\ngot  %+v\nwant %+v\nYAML:\n%s", got, c, b)
			}
		})
	}

	b, err := Marshal(baseConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ttl: 4s\n", "maximum_lag_on_failover: 1MiB\n", "  prefix: /holdfast\n", "n1: http://127.0.0.1:2380\n",
		"api:\n  listen: 127.0.0.1:8008\n", "  tls:\n    cert_file: \"\"\n", "watchdog:\n  mode: off\n  device: /dev/watchdog\n  safety_margin: 0s\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("Marshal output lacks %q:\n%s", want, b)
		}
	}
	if strings.Contains(string(b), "tags") {
		t.Errorf("Marshal wrote a nil map:\n%s", b)
	}
}

// TestLeaves guards the assumptions of Load and Marshal about the Config
// struct: every leaf has a distinct variable name and a supported type, and
// list and map defaults are nil (Marshal omits nil ones).
func TestLeaves(t *testing.T) {
	d := Defaults()
	root := reflect.ValueOf(&d).Elem()
	seen := map[string]string{}
	for _, lf := range leaves(root.Type(), "", nil, nil) {
		if other, dup := seen[envName(lf.path)]; dup {
			t.Errorf("%s and %s share the variable %s", lf.path, other, envName(lf.path))
		}
		seen[envName(lf.path)] = lf.path
		v := root.FieldByIndex(lf.index)
		switch lf.typ {
		case mapType, listType:
			if !v.IsNil() {
				t.Errorf("%s: default is not nil; Marshal would not round-trip a nil value", lf.path)
			}
		default:
			if err := setScalar(reflect.New(lf.typ).Elem(), "1"); err != nil {
				t.Errorf("%s: %v", lf.path, err)
			}
		}
	}
	for _, want := range []string{"HOLDFAST_POSTGRESQL_LISTEN", "HOLDFAST_TTL", "HOLDFAST_STORE_EMBEDDED_LISTEN_PEER", "HOLDFAST_POSTGRESQL_SUPERUSER_PASSWORD",
		"HOLDFAST_API_LISTEN", "HOLDFAST_API_CONNECT_ADDRESS", "HOLDFAST_API_AUTH_TOKEN", "HOLDFAST_API_TLS_CERT_FILE", "HOLDFAST_API_TLS_KEY_FILE", "HOLDFAST_API_TLS_CLIENT_CA_FILE",
		"HOLDFAST_WATCHDOG_MODE", "HOLDFAST_WATCHDOG_DEVICE", "HOLDFAST_WATCHDOG_SAFETY_MARGIN"} {
		if _, ok := seen[want]; !ok {
			t.Errorf("no leaf for %s", want)
		}
	}
}

func TestDurationAndByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		str  string
	}{
		{"4s", 4 * time.Second, "4s"},
		{"10", 10 * time.Second, "10s"},
		{"500ms", 500 * time.Millisecond, "500ms"},
		{"1m", time.Minute, "1m"},
		{"1h0m30s", time.Hour + 30*time.Second, "1h0m30s"},
		{"2h", 2 * time.Hour, "2h"},
		{"0", 0, "0s"},
		{"-3", -3 * time.Second, "-3s"},
	} {
		d, err := parseDuration(tc.in)
		if err != nil || d.D() != tc.want || d.String() != tc.str {
			t.Errorf("parseDuration(%q) = %v (%q), %v; want %v (%q)", tc.in, d.D(), d.String(), err, tc.want, tc.str)
		}
		if back, err := parseDuration(d.String()); err != nil || back != d {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", d.String(), back, err, d)
		}
	}
	for _, tc := range []struct {
		in   string
		want int64
		str  string
	}{
		{"1000", 1000, "1000B"},
		{"0", 0, "0B"},
		{"1kB", 1024, "1KiB"},
		{"1 MB", 1 << 20, "1MiB"},
		{"16MiB", 16 << 20, "16MiB"},
		{"1536kB", 1536 << 10, "1536KiB"},
		{"3GB", 3 << 30, "3GiB"},
		{"2TiB", 2 << 40, "2TiB"},
		{"17B", 17, "17B"},
		{"-1", -1, "-1B"},
	} {
		b, err := ParseByteSize(tc.in)
		if err != nil || b.Bytes() != tc.want || b.String() != tc.str {
			t.Errorf("ParseByteSize(%q) = %d (%q), %v; want %d (%q)", tc.in, b.Bytes(), b.String(), err, tc.want, tc.str)
		}
		if back, err := ParseByteSize(b.String()); err != nil || back != b {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", b.String(), back, err, b)
		}
	}
	for _, bad := range []string{"", "MB", "1mb", "1.5MB", "1 PB", "0x10"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded", bad)
		}
	}
}

// TestLoadAPI: the api section is read from the file, variables and flags
// like every other section, and its problems name where the value came from.
func TestLoadAPI(t *testing.T) {
	file := baseYAML + `
api:
  listen: 0.0.0.0:8008
  connect_address: 10.0.0.1:8008
  tls:
    cert_file: /etc/holdfast/api.crt
    key_file: /etc/holdfast/api.key
`
	c, _, err := loadYAML(t, file, LoadOptions{
		Env:  []string{"HOLDFAST_API_AUTH_TOKEN=from-env", "HOLDFAST_API_TLS_CLIENT_CA_FILE=/etc/holdfast/ca.crt"},
		Sets: []string{"api.connect_address=db1:8008"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := API{Listen: "0.0.0.0:8008", ConnectAddress: "db1:8008", AuthToken: "from-env",
		TLS: TLS{CertFile: "/etc/holdfast/api.crt", KeyFile: "/etc/holdfast/api.key", ClientCAFile: "/etc/holdfast/ca.crt"}}
	if c.API != want {
		t.Errorf("api = %+v, want %+v", c.API, want)
	}
	if got := c.APIURL(); got != "https://db1:8008" {
		t.Errorf("APIURL() = %q, want https://db1:8008", got)
	}

	for _, tc := range []struct {
		name, yaml string
		opts       LoadOptions
		want       []string
	}{
		{"unknown key", baseYAML + "api:\n  listne: a:1\n", LoadOptions{},
			[]string{"config FILE line 8: api.listne: unknown key (known keys in api: listen, connect_address, auth_token, tls)", "did you mean listen?"}},
		{"unknown tls key", baseYAML + "api:\n  tls: {ca_fil: /x}\n", LoadOptions{},
			[]string{"api.tls.ca_fil: unknown key (known keys in api.tls: cert_file, key_file, client_ca_file, ca_file)"}},
		{"bad listen in file", baseYAML + "api:\n  listen: localhost\n", LoadOptions{},
			[]string{`config FILE line 8: api.listen: "localhost" is not host:port (write e.g. 127.0.0.1:8008)`}},
		{"key without cert from a variable", baseYAML, LoadOptions{Env: []string{"HOLDFAST_API_TLS_KEY_FILE=/k"}},
			[]string{"api.tls.cert_file: required with api.tls.key_file"}},
		{"bad token from a flag", baseYAML, LoadOptions{Sets: []string{"api.auth_token=a b"}},
			[]string{"--set api.auth_token: must be printable ASCII without spaces"}},
		{"wildcard listen from a variable", baseYAML, LoadOptions{Env: []string{"HOLDFAST_API_LISTEN=0.0.0.0:8008"}},
			[]string{"api.connect_address: required when api.listen binds every interface"}},
		{"section is not a value", baseYAML, LoadOptions{Sets: []string{"api.tls=x"}},
			[]string{"--set api.tls: api.tls is a section, not a value: set one of its keys (api.tls.cert_file, api.tls.key_file, api.tls.client_ca_file, api.tls.ca_file)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := loadYAML(t, tc.yaml, tc.opts)
			wantErr(t, err, path, tc.want...)
		})
	}
}

// TestLoadWatchdog: the watchdog section is read from the file, variables
// and flags like every other section, and its problems name where the value
// came from.
func TestLoadWatchdog(t *testing.T) {
	c, _, err := loadYAML(t, baseYAML, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Watchdog{Mode: WatchdogOff, Device: "/dev/watchdog"}); c.Watchdog != want {
		t.Errorf("default watchdog = %+v, want %+v", c.Watchdog, want)
	}

	file := baseYAML + `
watchdog:
  mode: required
  device: /dev/watchdog1
  safety_margin: 500ms
`
	c, _, err = loadYAML(t, file, LoadOptions{
		Env:  []string{"HOLDFAST_WATCHDOG_MODE=automatic"},
		Sets: []string{"watchdog.safety_margin=1s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Watchdog{Mode: WatchdogAutomatic, Device: "/dev/watchdog1", SafetyMargin: Duration(time.Second)}); c.Watchdog != want {
		t.Errorf("watchdog = %+v, want %+v", c.Watchdog, want)
	}

	// "off" and "no" are booleans in YAML 1.1; holdfast reads the text.
	c, _, err = loadYAML(t, baseYAML+"watchdog: {mode: off}\n", LoadOptions{})
	if err != nil || c.Watchdog.Mode != WatchdogOff {
		t.Errorf("mode: off loaded as %q, %v", c.Watchdog.Mode, err)
	}

	for _, tc := range []struct {
		name, yaml string
		opts       LoadOptions
		want       []string
	}{
		{"unknown key", baseYAML + "watchdog:\n  modee: required\n", LoadOptions{},
			[]string{"config FILE line 8: watchdog.modee: unknown key (known keys in watchdog: mode, device, safety_margin)", "did you mean mode?"}},
		{"YAML 1.1 boolean is not a mode", baseYAML + "watchdog:\n  mode: no\n", LoadOptions{},
			[]string{`config FILE line 8: watchdog.mode: "no" is not a watchdog mode (write off, automatic or required)`}},
		{"bad mode from a variable", baseYAML, LoadOptions{Env: []string{"HOLDFAST_WATCHDOG_MODE=on"}},
			[]string{`environment variable HOLDFAST_WATCHDOG_MODE: watchdog.mode: "on" is not a watchdog mode`}},
		{"bad mode from a flag", baseYAML, LoadOptions{Sets: []string{"watchdog.mode=strict"}},
			[]string{`--set watchdog.mode: "strict" is not a watchdog mode`}},
		{"margin not a duration", baseYAML + "watchdog:\n  safety_margin: soon\n", LoadOptions{},
			[]string{`config FILE line 8: watchdog.safety_margin: "soon" is not a duration`}},
		{"margin too long for the ttl", baseYAML + "watchdog:\n  mode: required\n  safety_margin: 5s\n", LoadOptions{},
			[]string{"config FILE line 9: watchdog.safety_margin: 5s leaves no watchdog timeout for ttl 4s"}},
		{"relative device from a flag", baseYAML, LoadOptions{Sets: []string{"watchdog.mode=automatic", "watchdog.device=watchdog"}},
			[]string{`--set watchdog.device: "watchdog" is not an absolute path`}},
		{"section is not a value", baseYAML, LoadOptions{Sets: []string{"watchdog=required"}},
			[]string{"--set watchdog: watchdog is a section, not a value: set one of its keys (watchdog.mode, watchdog.device, watchdog.safety_margin)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := loadYAML(t, tc.yaml, tc.opts)
			wantErr(t, err, path, tc.want...)
		})
	}
}

// TestLoadInPod: in a pod (the chart's settings and downward-API
// variables) the member is named after its pod and others reach it by the
// pod's stable DNS name, never its IP.
func TestLoadInPod(t *testing.T) {
	file := `
cluster: pg
data_dir: /var/lib/holdfast/data
store: {mode: kubernetes}
kubernetes: {headless_service: pg-headless}
postgresql: {listen: 0.0.0.0:5432}
api: {listen: 0.0.0.0:8008}
`
	env := []string{"HOLDFAST_KUBERNETES_POD_NAME=pg-2", "HOLDFAST_KUBERNETES_NAMESPACE=db"}
	c, _, err := loadYAML(t, file, LoadOptions{Env: env, Hostname: func() (string, error) { return "ignored", nil }})
	if err != nil {
		t.Fatal(err)
	}
	dns := "pg-2.pg-headless.db.svc.cluster.local"
	if c.Name != "pg-2" || c.PostgreSQL.ConnectAddress != dns+":5432" || c.API.ConnectAddress != dns+":8008" {
		t.Fatalf("name %q, connect addresses %q and %q", c.Name, c.PostgreSQL.ConnectAddress, c.API.ConnectAddress)
	}
	if c.APIURL() != "http://"+dns+":8008" {
		t.Fatalf("API URL %s", c.APIURL())
	}

	for _, tc := range []struct{ yaml, want string }{
		{"cluster: pg\ndata_dir: /d\nstore: {mode: kubernetes}\n", "kubernetes.namespace: required with store.mode kubernetes"},
		{"cluster: pg\ndata_dir: /d\nkubernetes: {pod_name: pg-0, namespace: db}\npostgresql: {listen: 0.0.0.0:5432}\n", "kubernetes.headless_service: required with kubernetes.pod_name"},
		{"cluster: pg\ndata_dir: /d\nsynchronous_mode: sometimes\n", `synchronous_mode: "sometimes" is not a mode`},
		{"cluster: pg\ndata_dir: /d\nsynchronous_node_count: 0\n", "synchronous_node_count: 0 must be at least 1"},
		{"cluster: pg\ndata_dir: /d\nkubernetes: {role_label: 'bad label'}\n", `kubernetes.role_label: "bad label" is not a label key`},
	} {
		_, _, err := loadYAML(t, tc.yaml, LoadOptions{Hostname: func() (string, error) { return "pg-0", nil }})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want it to mention %q", tc.yaml, err, tc.want)
		}
	}
}

// A 1 MB value yields an error of a few hundred bytes, however it arrives
// and whichever check refuses it: the value is cut to quote.MaxBytes and
// its length given.
func TestLoadErrorsQuoteLongValuesShort(t *testing.T) {
	long := strings.Repeat("x", 1<<20)
	for _, tc := range []struct {
		name string
		yaml string
		opts LoadOptions
		want string
	}{
		{"file, validation", baseYAML + "log:\n  level: " + long + "\n", LoadOptions{}, `log.level: "xxx`},
		{"file, type", baseYAML + "ttl: " + long + "\n", LoadOptions{}, `ttl: "xxx`},
		{"file, boolean", baseYAML + "witness: " + long + "\n", LoadOptions{}, `witness: "xxx`},
		{"env", baseYAML, LoadOptions{Env: []string{"HOLDFAST_STORE_MODE=" + long}}, `store.mode: "xxx`},
		{"set, size", baseYAML, LoadOptions{Sets: []string{"maximum_lag_on_failover=" + long}}, `maximum_lag_on_failover: "xxx`},
		{"set, address", baseYAML, LoadOptions{Sets: []string{"postgresql.listen=" + long}}, `postgresql.listen: "xxx`},
		{"set, port", baseYAML, LoadOptions{Sets: []string{"api.listen=127.0.0.1:" + strings.Repeat("9", 1<<20)}}, "port 999"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, path, err := loadYAML(t, tc.yaml, tc.opts)
			wantErr(t, err, path, tc.want, " bytes)")
			if err != nil && len(err.Error()) > 1000 {
				t.Errorf("error is %d bytes long: %.300s...", len(err.Error()), err)
			}
		})
	}
}
