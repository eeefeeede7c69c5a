package backup

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/osuser"
	"github.com/holdfast/holdfast/internal/testutil"
	"github.com/holdfast/holdfast/internal/testutil/pgtest"
	"github.com/holdfast/holdfast/internal/testutil/testca"
)

// tlsServerWait bounds how long the test waits for the TLS server to
// accept a client (it is started by the member's Run; a loaded machine is
// slow).
const tlsServerWait = 2 * time.Minute

// tlsFiles are one member's certificate, key and the CA, written under dir.
type tlsFiles struct{ cert, key, ca string }

// writeTLS issues a certificate for cn naming hosts (server and client
// use) and writes it, its key (0600) and the CA's certificate under dir,
// owned by acct.
func writeTLS(t *testing.T, ca *testca.CA, dir, cn string, hosts []string, acct osuser.Account) tlsFiles {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(cn, nil, hosts, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
	if err != nil {
		t.Fatal(err)
	}
	f := tlsFiles{filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key"), filepath.Join(dir, "ca.crt")}
	for path, b := range map[string][]byte{f.cert: certPEM, f.key: keyPEM, f.ca: ca.CertPEM} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := acct.Chown(path); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestCheckTLS: files that do not load are refused with the file named,
// and the common name defaults to the certificate's.
func TestCheckTLS(t *testing.T) {
	ca, err := testca.New("holdfast-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := writeTLS(t, ca, dir, "holdfast", []string{"localhost"}, osuser.Account{})
	other := writeTLS(t, ca, dir, "other", []string{"localhost"}, osuser.Account{})
	noCN := writeTLS(t, ca, dir, "", []string{"localhost"}, osuser.Account{})
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := CheckTLS(TLSOptions{CertFile: good.cert, KeyFile: good.key, CAFile: good.ca, Port: 8432})
	if err != nil || len(o.ClientCN) != 1 || o.ClientCN[0] != "holdfast" {
		t.Fatalf("CheckTLS(good) = %+v, %v; want client CN holdfast", o, err)
	}
	if o, err := CheckTLS(TLSOptions{CertFile: noCN.cert, KeyFile: noCN.key, CAFile: good.ca, ClientCN: []string{"a", "b"}}); err != nil || len(o.ClientCN) != 2 {
		t.Fatalf("CheckTLS with client_cn set = %+v, %v; want them kept", o, err)
	}
	for _, c := range []struct {
		name string
		o    TLSOptions
		want string
	}{
		{"missing certificate", TLSOptions{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: good.key, CAFile: good.ca}, "nope.crt"},
		{"key of another certificate", TLSOptions{CertFile: good.cert, KeyFile: other.key, CAFile: good.ca}, "other.key"},
		{"missing CA", TLSOptions{CertFile: good.cert, KeyFile: good.key, CAFile: filepath.Join(dir, "nope-ca.crt")}, "nope-ca.crt"},
		{"CA without a certificate", TLSOptions{CertFile: good.cert, KeyFile: good.key, CAFile: garbage}, "holds no PEM certificate"},
		{"no common name", TLSOptions{CertFile: noCN.cert, KeyFile: noCN.key, CAFile: good.ca}, "client_cn"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := CheckTLS(c.o)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "backup.tls: ") {
				t.Fatalf("CheckTLS = %v; want an error naming %q", err, c.want)
			}
		})
	}

	// NewMember refuses them before it writes anything.
	repo, data := filepath.Join(dir, "repo"), filepath.Join(dir, "data")
	for _, d := range []string{repo, data} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	_, err = NewMember(MemberOptions{Cluster: "c", Member: "m", DataDir: data, PGData: filepath.Join(data, "pg"), Host: "127.0.0.1", Port: 5432,
		User: "postgres", Repo: PosixRepo(repo), Stanza: "c", RetentionFull: 1,
		TLS: &TLSOptions{CertFile: good.cert, KeyFile: other.key, CAFile: good.ca, Port: 8432}})
	if err == nil {
		t.Fatal("NewMember with a key of another certificate: no error")
	}
	if ents, _ := os.ReadDir(data); len(ents) != 0 {
		t.Errorf("NewMember refused the TLS files but wrote %d entries into the data dir", len(ents))
	}
}

// TestTLSServer: a member's agent-supervised pgBackRest TLS server lets
// another host's pgBackRest reach this member's PostgreSQL — the path a
// replica's backup from a standby takes to a primary on another host —
// with mutual TLS; a client certificate of another common name is refused,
// and the server comes back after it is killed. Real PostgreSQL and
// pgBackRest; the "other host" is the name localhost, which the primary's
// certificate names (the member registers 127.0.0.1).
func TestTLSServer(t *testing.T) {
	if _, err := FindBinary(); err != nil {
		t.Skip(err)
	}
	acct, err := osuser.Resolve("postgres")
	if err != nil {
		t.Skipf("no postgres account: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, port := pgtest.Start(ctx, t, "tls-primary", "super-secret")
	dir := testutil.Dir(t)
	ca, err := testca.New("holdfast-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "certs")
	if err := acct.MkdirOwned(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	member := writeTLS(t, ca, certs, "holdfast", []string{"localhost"}, acct)
	stranger := writeTLS(t, ca, certs, "stranger", []string{"localhost"}, acct)
	repo, data := filepath.Join(dir, "repo"), filepath.Join(dir, "member")
	for _, d := range []string{repo, data} {
		if err := acct.MkdirOwned(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var pgdata string
	c, err := (&Member{o: MemberOptions{User: "postgres", Password: "super-secret"}}).connect(ctx, "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT current_setting('data_directory')").Scan(&pgdata); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	tlsPort := testutil.FreePort(t)
	m, err := NewMember(MemberOptions{Cluster: "c", Member: "m", DataDir: data, PGData: pgdata, Host: "127.0.0.1", Port: port,
		User: "postgres", Password: "super-secret", Repo: PosixRepo(repo), Stanza: "c", RetentionFull: 1, Account: acct,
		Load: func(context.Context) (cluster.View, error) { return cluster.View{}, nil },
		TLS:  &TLSOptions{CertFile: member.cert, KeyFile: member.key, CAFile: member.ca, Port: tlsPort}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { m.Run(runCtx); close(ran) }()
	defer func() { stop(); <-ran }()

	// A client elsewhere: pg1 is the member's PostgreSQL behind its TLS
	// server; stanza-create reads the system identifier through it.
	client := func(name string, f tlsFiles) Tool {
		work := filepath.Join(dir, name)
		for _, d := range []string{work, work + "/log", work + "/lock", work + "/spool"} {
			if err := acct.MkdirOwned(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		conf, err := RenderConf(Settings{Repo: PosixRepo(repo), Stanza: "c", RetentionFull: 1, WorkDir: work,
			PG: []PGCluster{{Path: pgdata, Port: port, User: "postgres", Host: "localhost",
				TLS: &ClientTLS{Port: tlsPort, CertFile: f.cert, KeyFile: f.key, CAFile: f.ca}}}})
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(work, "pgbackrest.conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := acct.Chown(path); err != nil {
			t.Fatal(err)
		}
		return Tool{Config: path, Stanza: "c", Account: acct}
	}
	ok := client("client", member)
	createThrough := func(what string) {
		t.Helper()
		deadline := time.Now().Add(tlsServerWait)
		for {
			err := ok.StanzaCreate(ctx)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: stanza-create through the TLS server: %v", what, err)
			}
			time.Sleep(time.Second)
		}
	}
	createThrough("first start")
	st, err := ok.Info(ctx)
	if err != nil || !st.Exists() {
		t.Fatalf("the stanza created through the TLS server: %+v, %v", st, err)
	}

	if err := client("stranger", stranger).StanzaCreate(ctx); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("a client certificate of another common name: %v; want pgBackRest's access denied", err)
	}

	// The agent supervises the server: killed, it runs again.
	out, err := os.ReadFile(m.serverConfFile())
	if err != nil || !strings.Contains(string(out), "tls-server-auth=holdfast=c\n") {
		t.Fatalf("server configuration: %v\n%s", err, out)
	}
	m.mu.Lock()
	proc := m.tlsServer
	m.mu.Unlock()
	if proc == nil {
		t.Fatal("no TLS server process recorded while it served")
	}
	if err := proc.Kill(); err != nil {
		t.Fatalf("kill the TLS server (pid %d): %v", proc.Pid, err)
	}
	createThrough("after the server was killed")
}

// TestRenderConfRemotePrimary: a primary on another host is reached
// through its TLS server with this member's certificate; without TLS it
// is refused.
func TestRenderConfRemotePrimary(t *testing.T) {
	s := Settings{Repo: PosixRepo("/repo"), Stanza: "c", RetentionFull: 1, WorkDir: "/w", BackupStandby: true,
		PG: []PGCluster{{Path: "/d", Port: 5432, User: "postgres"}, {Path: "/p", Port: 5432, User: "postgres", Host: "pg-0.hl.ns.svc",
			TLS: &ClientTLS{Port: 8432, CertFile: "/t/tls.crt", KeyFile: "/t/tls.key", CAFile: "/t/ca.crt"}}}}
	conf, err := RenderConf(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"backup-standby=y\n", "pg2-host=pg-0.hl.ns.svc\n", "pg2-host-type=tls\n", "pg2-host-port=8432\n",
		"pg2-host-cert-file=/t/tls.crt\n", "pg2-host-key-file=/t/tls.key\n", "pg2-host-ca-file=/t/ca.crt\n", "pg2-path=/p\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("no %q in\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "pg1-host") {
		t.Errorf("the local data directory got a host:\n%s", conf)
	}
	s.PG[1].TLS = nil
	if _, err := RenderConf(s); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Errorf("a remote primary without TLS: %v", err)
	}
}

// TestTailBuffer: only the end of a long output is kept.
func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 5}
	b.Write([]byte("abc"))
	if b.String() != "abc" {
		t.Fatalf("%q", b.String())
	}
	b.Write([]byte("defgh"))
	if b.String() != "...defgh" {
		t.Fatalf("%q, want ...defgh", b.String())
	}
}
