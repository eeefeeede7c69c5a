package config

import (
	"reflect"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as a config file. Load must not
// panic; when it accepts the file the result must pass Validate and survive
// a Marshal/Load round trip unchanged. Each input is loaded twice: alone,
// and with flags that supply the settings a valid config needs, so that
// mutated files get past validation more often.
func FuzzLoad(f *testing.F) {
	for _, seed := range []string{
		"",
		"# only a comment\n",
		"---\n",
		baseYAML,
		baseYAML + "ttl: 10\nloop_interval: 500ms\nmaximum_lag_on_failover: 16MB\ntags: {nofailover: true}\n",
		baseYAML + "witness: true\npostgresql: ~\n",
		baseYAML + "postgresql:\n  listen: 0.0.0.0:5432\n  connect_address: 10.0.0.1:5432\n  parameters: {work_mem: 4MB}\n  pg_hba: [\"host all all 0.0.0.0/0 md5\"]\n",
		"name: n1\ndata_dir: /d\nstore: {mode: etcd, endpoints: [\"http://e:2379\"]}\n",
		"ttl: 1m\nlog: {level: debug, format: json}\npostgresql: {superuser: {password: !!binary aGk=}, initdb_args: [a, 'b c']}\n",
		"a: &x [1, 2]\nb: *x\n",
		"ttl: 4s\nttl: 5s\n",
		"- 1\n",
	} {
		f.Add([]byte(seed))
	}
	host := func() (string, error) { return "fuzz-host", nil }
	base := []string{"name=n1", "data_dir=/var/lib/holdfast", "store.embedded.peers.n1=http://127.0.0.1:2380"}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, sets := range [][]string{nil, base} {
			c, err := load(LoadOptions{File: "fuzz.yaml", Sets: sets, Hostname: host}, data)
			if err != nil {
				continue
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Load accepted a config that Validate refuses: %v", err)
			}
			b, err := Marshal(c)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			c2, err := load(LoadOptions{File: "fuzz.yaml", Hostname: host}, b)
			if err != nil {
				t.Fatalf("Load(Marshal(c)): %v\n%s", err, b)
			}
			if !reflect.DeepEqual(c, c2) {
				t.Fatalf("round trip changed the config:\nwas %+v\nnow %+v\nYAML:\n%s", c, c2, b)
			}
		}
	})
}

// FuzzMarshalStrings checks that Marshal writes any string — including
// ones no YAML file could hold directly, as variables and flags can set
// them — so that Load reads it back unchanged.
func FuzzMarshalStrings(f *testing.F) {
	for _, s := range []string{"", "true", "0123", "a\nb\n", " x ", "\xff", "#", "- a", "'\"", "\x00\t\r\u2028\ufeff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c := baseConfig()
		c.PostgreSQL.Superuser.Password = s
		c.PostgreSQL.InitdbArgs = []string{s}
		c.Tags = map[string]string{s: s}
		b, err := Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		c2, err := load(LoadOptions{File: "fuzz.yaml", Hostname: noHostname}, b)
		if err != nil {
			t.Fatalf("Load(Marshal(c)): %v\n%s", err, b)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed %q:\nnow %+v\nYAML:\n%s", s, c2, b)
		}
	})
}
