package pgauth

import (
	"bytes"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// RFC 7677 section 3: user "user", password "pencil".
const (
	rfcPassword     = "pencil"
	rfcSalt         = "W22ZaJ0SNY7soEsUEjb6gQ=="
	rfcClientNonce  = "rOprNGfwEbeRWgbNEkqO"
	rfcServerNonce  = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	rfcClientFirst  = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
	rfcServerFirst  = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
	rfcClientFinal  = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
	rfcServerFinal  = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	testUser        = "alice"
	testPassword    = "correct horse"
	testMockSecret  = "0123456789abcdef-mock-secret"
	testIterations  = 4096
	testSaltLiteral = "salt-of-alice..."
)

func rfcVerifier(t testing.TB) Verifier {
	t.Helper()
	salt, err := base64.StdEncoding.DecodeString(rfcSalt)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(rfcPassword, salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// fixedRand is a random source that repeats one byte.
type fixedRand byte

func (r fixedRand) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(r)
	}
	return len(p), nil
}

func newTestServer(t testing.TB, user string, v *Verifier) *Server {
	t.Helper()
	s, err := NewServer(ServerOptions{Username: user, Verifier: v, MockSecret: []byte(testMockSecret), Rand: fixedRand(7)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRFC7677ServerSide(t *testing.T) {
	v := rfcVerifier(t)
	s := newTestServer(t, "user", &v)
	s.serverNonce = func() (string, error) { return rfcServerNonce, nil }
	first, err := s.ClientFirst([]byte(rfcClientFirst))
	if err != nil || string(first) != rfcServerFirst {
		t.Fatalf("server-first = %q, %v; want %q", first, err, rfcServerFirst)
	}
	final, cred, err := s.ClientFinal([]byte(rfcClientFinal))
	if err != nil || string(final) != rfcServerFinal {
		t.Fatalf("server-final = %q, %v; want %q", final, err, rfcServerFinal)
	}
	salt, _ := base64.StdEncoding.DecodeString(rfcSalt)
	salted, _ := pbkdf2.Key(sha256.New, rfcPassword, salt, 4096, KeyLen)
	if cred.ClientKey != DeriveClientKey(salted) {
		t.Error("the recovered ClientKey is not HMAC(SaltedPassword, \"Client Key\")")
	}
	if cred.Username != "user" || cred.Verifier.Encode() != v.Encode() {
		t.Errorf("credentials: %q %s", cred.Username, cred.Verifier)
	}
}

func TestRFC7677ClientSide(t *testing.T) {
	v := rfcVerifier(t)
	salt, _ := base64.StdEncoding.DecodeString(rfcSalt)
	salted, _ := pbkdf2.Key(sha256.New, rfcPassword, salt, 4096, KeyLen)
	c := newClient(Credentials{Username: "user", ClientKey: DeriveClientKey(salted), Verifier: v}, rfcClientNonce, "user")
	if string(c.First()) != rfcClientFirst {
		t.Fatalf("client-first = %q", c.First())
	}
	final, err := c.ServerFirst([]byte(rfcServerFirst))
	if err != nil || string(final) != rfcClientFinal {
		t.Fatalf("client-final = %q, %v; want %q", final, err, rfcClientFinal)
	}
	if err := c.ServerFinal([]byte(rfcServerFinal)); err != nil {
		t.Fatal(err)
	}
}

func TestVerifierRoundTripAndVector(t *testing.T) {
	v := rfcVerifier(t)
	// StoredKey and ServerKey of RFC 7677's example, computed independently
	// (as PostgreSQL would store "pencil" with that salt).
	const want = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
	if v.Encode() != want {
		t.Fatalf("verifier = %s\nwant       %s", v, want)
	}
	p, err := ParseVerifier(want)
	if err != nil || p.Encode() != want || p.Iterations != 4096 || len(p.Salt) != 16 {
		t.Fatalf("ParseVerifier round trip: %+v %v", p, err)
	}
}

func TestParseVerifierErrors(t *testing.T) {
	good := rfcVerifier(t).Encode()
	stored := strings.Split(strings.Split(good, "$")[2], ":")[0]
	for _, tc := range []struct {
		in, want string
		notSCRAM bool
	}{
		{"md5e7a0ce4d3d8a5c2b8a9f0d1e2c3b4a59", "not a SCRAM-SHA-256 secret", true},
		{"", "not a SCRAM-SHA-256 secret", true},
		{"pencil", "not a SCRAM-SHA-256 secret", true},
		{"SCRAM-SHA-256$4096:c2FsdA==", "no '$' between", false},
		{"SCRAM-SHA-256$4096$a:b", "no ':' between iterations and salt", false},
		{strings.Replace(good, "$4096:", "$0:", 1), "iteration count", false},
		{strings.Replace(good, "$4096:", "$-1:", 1), "iteration count", false},
		{strings.Replace(good, "$4096:", "$04096:", 1), "iteration count", false},
		{strings.Replace(good, "$4096:", "$99999999999:", 1), "iteration count", false},
		{strings.Replace(good, "$4096:", "$x:", 1), "iteration count", false},
		{strings.Replace(good, rfcSalt, "!!!", 1), "salt is not non-empty base64", false},
		{strings.Replace(good, rfcSalt, "", 1), "salt is not non-empty base64", false},
		{strings.Replace(good, "$"+stored, "$c2FsdA==", 1), "StoredKey: 4 bytes, want 32", false},
		{strings.Replace(good, "$"+stored, "$%%%", 1), "StoredKey: not base64", false},
		{good[:len(good)-1], "ServerKey: not base64", false},
		{good[:len(good)-4], "ServerKey: 30 bytes, want 32", false},
		{strings.Replace(good, stored+":", stored, 1), "no ':' between StoredKey and ServerKey", false},
	} {
		_, err := ParseVerifier(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "parse SCRAM verifier: ") {
			t.Errorf("ParseVerifier(%q) = %v, want an error with %q", tc.in, err, tc.want)
			continue
		}
		if errors.Is(err, ErrNotSCRAM) != tc.notSCRAM {
			t.Errorf("ParseVerifier(%q): errors.Is(ErrNotSCRAM) = %v", tc.in, !tc.notSCRAM)
		}
		if len(stored) > 0 && strings.Contains(err.Error(), stored) {
			t.Errorf("ParseVerifier's error quotes the secret: %v", err)
		}
	}
}

// passwordClient is an independent, password-driven SCRAM client (the
// part a driver does), to drive Server the way a real client would.
type passwordClient struct {
	password, nonce, bare string
	salted, authMessage   []byte
}

func newPasswordClient(password string) *passwordClient {
	return &passwordClient{password: password, nonce: "fyko+d2lbbFgONRv9qkxdawL", bare: "n=,r=fyko+d2lbbFgONRv9qkxdawL"}
}

func (c *passwordClient) first() []byte { return []byte("n,," + c.bare) }

func (c *passwordClient) final(t testing.TB, serverFirst []byte) []byte {
	t.Helper()
	sf, err := parseServerFirst(string(serverFirst))
	if err != nil {
		t.Fatal(err)
	}
	if c.salted, err = pbkdf2.Key(sha256.New, c.password, sf.salt, sf.iterations, KeyLen); err != nil {
		t.Fatal(err)
	}
	withoutProof := "c=biws,r=" + sf.nonce
	c.authMessage = []byte(c.bare + "," + string(serverFirst) + "," + withoutProof)
	ck := DeriveClientKey(c.salted)
	stored := sha256.Sum256(ck[:])
	sig := hmacBytes(stored[:], c.authMessage)
	proof := make([]byte, KeyLen)
	for i := range proof {
		proof[i] = ck[i] ^ sig[i]
	}
	return []byte(withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof))
}

func (c *passwordClient) serverSignatureOK(serverFinal []byte) bool {
	want := "v=" + base64.StdEncoding.EncodeToString(hmacBytes(hmacSHA256(c.salted, serverKeyLabel), c.authMessage))
	return string(serverFinal) == want
}

func testVerifier(t testing.TB, password string) Verifier {
	t.Helper()
	v, err := NewVerifier(password, []byte(testSaltLiteral), testIterations)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// exchange runs a password client through a Server for user.
func exchange(t *testing.T, user string, v *Verifier, password string) (serverFirst []byte, cred Credentials, err error) {
	t.Helper()
	s := newTestServer(t, user, v)
	c := newPasswordClient(password)
	serverFirst, err = s.ClientFirst(c.first())
	if err != nil {
		t.Fatalf("client-first: %v", err)
	}
	final, cred, err := s.ClientFinal(c.final(t, serverFirst))
	if err == nil && !c.serverSignatureOK(final) {
		t.Errorf("the server's signature does not check out: %q", final)
	}
	return serverFirst, cred, err
}

func TestServerRightPassword(t *testing.T) {
	v := testVerifier(t, testPassword)
	_, cred, err := exchange(t, testUser, &v, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Matches(cred.ClientKey) || cred.Username != testUser {
		t.Errorf("credentials %q do not match the verifier", cred.Username)
	}
	// The recovered key logs in, through a fresh exchange, as the client.
	c, err := NewClient(cred, fixedRand(9))
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, testUser, &v)
	sf, err := s.ClientFirst(c.First())
	if err != nil {
		t.Fatal(err)
	}
	cf, err := c.ServerFirst(sf)
	if err != nil {
		t.Fatal(err)
	}
	sfin, cred2, err := s.ClientFinal(cf)
	if err != nil || cred2.ClientKey != cred.ClientKey {
		t.Fatalf("login with the recovered key: %v", err)
	}
	if err := c.ServerFinal(sfin); err != nil {
		t.Fatal(err)
	}
}

func TestServerWrongPasswordAndUnknownUserLookAlike(t *testing.T) {
	v := testVerifier(t, testPassword)
	realFirst, _, wrongErr := exchange(t, testUser, &v, "wrong")
	if !errors.Is(wrongErr, ErrAuthFailed) {
		t.Fatalf("wrong password: %v", wrongErr)
	}
	mockFirst, _, unknownErr := exchange(t, "nobody", nil, testPassword)
	if !errors.Is(unknownErr, ErrAuthFailed) {
		t.Fatalf("unknown user: %v", unknownErr)
	}
	// Same shape of server-first: nonce, a 16-byte salt, the default count.
	re, _ := parseServerFirst(string(realFirst))
	mo, _ := parseServerFirst(string(mockFirst))
	if len(re.nonce) != len(mo.nonce) || len(re.salt) != len(mo.salt) || re.iterations != mo.iterations {
		t.Errorf("server-first differs in shape: %q vs %q", realFirst, mockFirst)
	}
	// The same unknown user always gets the same salt; another gets another.
	again, _, _ := exchange(t, "nobody", nil, "x")
	other, _, _ := exchange(t, "nobody2", nil, "x")
	if string(again) != string(mockFirst) {
		t.Errorf("mock salt not deterministic: %q vs %q", mockFirst, again)
	}
	if o, _ := parseServerFirst(string(other)); bytes.Equal(o.salt, mo.salt) {
		t.Error("two unknown users share a mock salt")
	}
	// The client sees the same answer, naming the user it asked for.
	a, b := ErrorResponse(testUser, wrongErr), ErrorResponse(testUser, unknownErr)
	if a.Code != b.Code || a.Message != b.Message || a.Detail != b.Detail || a.Code != "28P01" || a.Severity != "FATAL" || a.Message != `password authentication failed for user "alice"` || a.Detail != "" {
		t.Errorf("responses differ or are not PostgreSQL's: %+v vs %+v", a, b)
	}
	// The log text tells them apart.
	if strings.Contains(wrongErr.Error(), "mock") || !strings.Contains(unknownErr.Error(), "mock") {
		t.Errorf("log texts: %v / %v", wrongErr, unknownErr)
	}
}

// TestMockFailsEvenWithTheRightProof: an exchange without a real verifier
// fails at the end even if the proof were right for the mock verifier.
func TestMockFailsEvenWithTheRightProof(t *testing.T) {
	mock := MockVerifier([]byte(testMockSecret), "ghost", DefaultIterations)
	s := newTestServer(t, "ghost", nil)
	// Forge a proof from the mock's StoredKey: impossible for a client,
	// which would need the ClientKey, but the server must refuse anyway.
	var ck ClientKey // any key: we only need a proof that matches StoredKey
	for i := range ck {
		ck[i] = byte(i)
	}
	mock.StoredKey = storedKeyOf(ck)
	s.verifier = mock
	c := newClient(Credentials{Username: "ghost", ClientKey: ck, Verifier: mock}, "abc", "")
	sf, err := s.ClientFirst(c.First())
	if err != nil {
		t.Fatal(err)
	}
	cf, err := c.ServerFirst(sf)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ClientFinal(cf); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("mock exchange with a matching proof: %v", err)
	}
}

func TestServerRefusals(t *testing.T) {
	v := testVerifier(t, testPassword)
	flip := func(final []byte) []byte {
		s := string(final)
		i := strings.LastIndex(s, ",p=") + 3
		p, _ := base64.StdEncoding.DecodeString(s[i:])
		p[0] ^= 1
		return []byte(s[:i] + base64.StdEncoding.EncodeToString(p))
	}
	replace := func(old, new string) func([]byte) []byte {
		return func(b []byte) []byte { return []byte(strings.Replace(string(b), old, new, 1)) }
	}
	for _, tc := range []struct {
		name       string
		first      string              // client-first, "" for a good one
		final      func([]byte) []byte // edits a good client-final
		want       error               // ErrAuthFailed or ErrProtocol
		wantDetail string
	}{
		{name: "tampered proof", final: flip, want: ErrAuthFailed},
		{name: "wrong nonce", final: replace("r=fyko", "r=fykO"), want: ErrProtocol, wantDetail: "nonce does not match"},
		{name: "truncated nonce", final: replace("r=fyko+", "r="), want: ErrProtocol, wantDetail: "nonce does not match"},
		{name: "channel binding data differs", final: replace("c=biws", "c=eSws"), want: ErrProtocol, wantDetail: "does not repeat the gs2 header"},
		{name: "c= not base64", final: replace("c=biws", "c=b!ws"), want: ErrProtocol, wantDetail: "not base64"},
		{name: "no proof", final: func(b []byte) []byte { return b[:strings.LastIndex(string(b), ",p=")] }, want: ErrProtocol},
		{name: "proof not last", final: func(b []byte) []byte { return append(b, ",x=1"...) }, want: ErrProtocol, wantDetail: "not the proof"},
		{name: "short proof", final: func(b []byte) []byte { return []byte(string(b[:strings.LastIndex(string(b), ",p=")]) + ",p=AAAA") }, want: ErrProtocol, wantDetail: "3 bytes, want 32"},
		{name: "garbage extension", final: replace(",p=", ",???,p="), want: ErrProtocol, wantDetail: "garbage"},
		{name: "empty", final: func([]byte) []byte { return nil }, want: ErrProtocol},
		{name: "channel binding required", first: "p=tls-server-end-point,,n=,r=abc", want: ErrProtocol, wantDetail: `channel binding ("tls-server-end-point")`},
		{name: "authzid", first: "n,a=bob,n=,r=abc", want: ErrProtocol, wantDetail: "authorization identity"},
		{name: "mandatory extension", first: "n,,m=ext,n=,r=abc", want: ErrProtocol, wantDetail: "extension"},
		{name: "no gs2 header", first: "n=,r=abc", want: ErrProtocol, wantDetail: "channel binding flag"},
		{name: "no nonce", first: "n,,n=", want: ErrProtocol, wantDetail: "no nonce"},
		{name: "empty nonce", first: "n,,n=,r=", want: ErrProtocol, wantDetail: "nonce is empty"},
		{name: "nonce with control char", first: "n,,n=,r=a\x01b", want: ErrProtocol, wantDetail: "printable"},
		{name: "username missing", first: "n,,r=abc", want: ErrProtocol, wantDetail: "'n='"},
		{name: "garbage after nonce", first: "n,,n=,r=abc,zzz", want: ErrProtocol, wantDetail: "garbage"},
		{name: "gs2 without authzid comma", first: "n,", want: ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newTestServer(t, testUser, &v)
			c := newPasswordClient(testPassword)
			first := c.first()
			if tc.first != "" {
				first = []byte(tc.first)
			}
			sf, err := s.ClientFirst(first)
			if tc.first != "" {
				checkErr(t, err, tc.want, tc.wantDetail)
				if _, _, err := s.ClientFinal([]byte("c=biws,r=abc,p=AAAA")); err == nil {
					t.Error("ClientFinal after a failed ClientFirst succeeded")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = s.ClientFinal(tc.final(c.final(t, sf)))
			checkErr(t, err, tc.want, tc.wantDetail)
		})
	}
}

func checkErr(t *testing.T, err, want error, detail string) {
	t.Helper()
	if !errors.Is(err, want) || !strings.Contains(err.Error(), detail) {
		t.Fatalf("error %v; want %v with %q", err, want, detail)
	}
	r := ErrorResponse(testUser, err)
	if want == ErrProtocol && (r.Code != "08P01" || r.Message != "malformed SCRAM message" || !strings.Contains(r.Detail, detail)) {
		t.Errorf("client sees %+v", r)
	}
}

func TestServerOrderAndOptions(t *testing.T) {
	v := testVerifier(t, testPassword)
	s := newTestServer(t, testUser, &v)
	if _, _, err := s.ClientFinal([]byte("c=biws,r=x,p=AAAA")); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Errorf("ClientFinal first: %v", err)
	}
	if r := ErrorResponse(testUser, errors.New("boom")); r.Code != "XX000" || strings.Contains(r.Message, "boom") {
		t.Errorf("internal error response: %+v", r)
	}
	for _, o := range []ServerOptions{
		{MockSecret: []byte(testMockSecret), Rand: fixedRand(1)},
		{Username: "u", MockSecret: []byte("short"), Rand: fixedRand(1)},
		{Username: "u", MockSecret: []byte(testMockSecret)},
	} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("NewServer(%+v) accepted", o)
		}
	}
	failing := failingRand{}
	s, _ = NewServer(ServerOptions{Username: "u", MockSecret: []byte(testMockSecret), Rand: failing})
	if _, err := s.ClientFirst([]byte("n,,n=,r=abc")); err == nil || errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "random") {
		t.Errorf("failing random source: %v", err)
	}
}

type failingRand struct{}

func (failingRand) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestClientRefusals(t *testing.T) {
	v := testVerifier(t, testPassword)
	_, cred, err := exchange(t, testUser, &v, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	goodRound := func(t *testing.T, serverV Verifier) (*Client, []byte, error) {
		c, err := NewClient(cred, fixedRand(3))
		if err != nil {
			t.Fatal(err)
		}
		s := newTestServer(t, testUser, &serverV)
		sf, err := s.ClientFirst(c.First())
		if err != nil {
			t.Fatal(err)
		}
		cf, err := c.ServerFirst(sf)
		if err != nil {
			return c, nil, err
		}
		final, _, err := s.ClientFinal(cf)
		return c, final, err
	}
	t.Run("impostor server", func(t *testing.T) {
		bad := v
		bad.ServerKey[0] ^= 1
		c, final, err := goodRound(t, bad)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.ServerFinal(final); !errors.Is(err, ErrServerSignature) {
			t.Fatalf("impostor accepted: %v", err)
		}
	})
	t.Run("password changed", func(t *testing.T) {
		changed := testVerifier(t, "new password")
		changed.Salt = []byte("another salt....")
		if _, _, err := goodRound(t, changed); !errors.Is(err, ErrStaleCredentials) {
			t.Fatalf("stale credentials: %v", err)
		}
	})
	t.Run("inconsistent credentials", func(t *testing.T) {
		bad := cred
		bad.ClientKey[0] ^= 1
		if _, err := NewClient(bad, fixedRand(3)); err == nil {
			t.Fatal("NewClient accepted a ClientKey that does not match StoredKey")
		}
	})
	for _, tc := range []struct{ name, first, final, detail string }{
		{name: "nonce not extended", first: "r=AwMDAwMDAwMDAwMDAwMDAwMD,s=c2FsdC1vZi1hbGljZS4uLg==,i=4096", detail: "does not extend"},
		{name: "other nonce", first: "r=zzz,s=c2FsdC1vZi1hbGljZS4uLg==,i=4096", detail: "does not extend"},
		{name: "no salt", first: "r=AwMDAwMDAwMDAwMDAwMDAwMDx,x=1,i=4096", detail: "'s='"},
		{name: "bad iterations", first: "r=AwMDAwMDAwMDAwMDAwMDAwMDx,s=c2FsdA==,i=0", detail: "iteration"},
		{name: "extension required", first: "m=x,r=a,s=b,i=1", detail: "extension"},
		{name: "server error", final: "e=invalid-proof", detail: `"invalid-proof"`},
		{name: "no verifier", final: "x=1", detail: "'v='"},
		{name: "short signature", final: "v=AAAA", detail: "3 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(cred, fixedRand(3))
			if err != nil {
				t.Fatal(err)
			}
			if tc.first != "" {
				_, err = c.ServerFirst([]byte(tc.first))
			} else {
				c.state = clientAwaitFinal
				err = c.ServerFinal([]byte(tc.final))
			}
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("error %v; want ErrProtocol with %q", err, tc.detail)
			}
		})
	}
}

func TestClientKeyIsRedacted(t *testing.T) {
	var k ClientKey
	k[0] = 0xab
	for _, f := range []string{"%v", "%s", "%x", "%#v", "%+v"} {
		if s := sprintf(f, k); strings.Contains(s, "ab") {
			t.Errorf("%s prints the key: %s", f, s)
		}
	}
	v := rfcVerifier(t)
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		s := sprintf(f, Credentials{Username: "u", ClientKey: k, Verifier: v})
		if strings.Contains(s, "171") || strings.Contains(s, "ab") || strings.Contains(s, "W22Z") || strings.Contains(s, "88") {
			t.Errorf("%s prints a secret of the credentials: %s", f, s)
		}
	}
}
