package pgauth

import (
	"encoding/base64"
	"fmt"
	"testing"
)

func sprintf(format string, a ...any) string { return fmt.Sprintf(format, a...) }

func FuzzParseVerifier(f *testing.F) {
	f.Add(rfcVerifier(f).Encode())
	f.Add("md5abc")
	f.Add("SCRAM-SHA-256$1:AA==$:")
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVerifier(s)
		if err != nil {
			return
		}
		if v.Iterations < 1 || len(v.Salt) == 0 {
			t.Fatalf("accepted %q as %+v", s, v)
		}
		again, err := ParseVerifier(v.Encode())
		if err != nil || again.Encode() != v.Encode() {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}

// FuzzServer feeds arbitrary client messages to a Server: it must never
// panic, and must never accept a proof for a user without a verifier.
func FuzzServer(f *testing.F) {
	f.Add([]byte(rfcClientFirst), []byte(rfcClientFinal), true)
	f.Add([]byte("p=tls-server-end-point,,n=,r=a"), []byte("c=,r=,p="), false)
	f.Add([]byte("y,,n=,r=abc,x=1"), []byte("c=eSws,r=abc,x=2,p=AAAA"), true)
	v := rfcVerifier(f) // PBKDF2 once, not per input
	f.Fuzz(func(t *testing.T, first, final []byte, known bool) {
		var vp *Verifier
		if known {
			vp = &v
		}
		s := newTestServer(t, "user", vp)
		if _, err := s.ClientFirst(first); err != nil {
			return
		}
		_, cred, err := s.ClientFinal(final)
		if err == nil && (!known || !v.Matches(cred.ClientKey)) {
			t.Fatalf("accepted %q / %q", first, final)
		}
	})
}

// FuzzClient feeds arbitrary server messages to a Client: never a panic,
// never a success without the right server signature.
func FuzzClient(f *testing.F) {
	f.Add([]byte("r=BwcHBwcHBwcHBwcHBwcHBwcHBwcHx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"), []byte(rfcServerFinal))
	f.Add([]byte("r=a,s=b,i=c,d"), []byte("e=other-error"))
	v := rfcVerifier(f)
	var k ClientKey // all zero, with a verifier to match
	v.StoredKey = storedKeyOf(k)
	f.Fuzz(func(t *testing.T, first, final []byte) {
		c, err := NewClient(Credentials{Username: "user", ClientKey: k, Verifier: v}, fixedRand(7))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ServerFirst(first); err != nil {
			return
		}
		if err := c.ServerFinal(final); err == nil {
			want := "v=" + b64(hmacBytes(v.ServerKey[:], c.authMessage))
			if string(final) != want {
				t.Fatalf("accepted server-final %q", final)
			}
		}
	})
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
