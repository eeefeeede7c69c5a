package cli

import (
	"bytes"
	"strings"
	"testing"
)

// The session-mode TLS flags are refused in passthrough mode, before the
// proxy looks for a store: there TLS is end to end, and a certificate
// given to the proxy would silently do nothing.
func TestProxySessionFlagsNeedSessionMode(t *testing.T) {
	for _, args := range [][]string{
		{"--tls-cert-file", "/x/proxy.crt", "--tls-key-file", "/x/proxy.key"},
		{"--tls-require"},
		{"--server-sslmode", "verify-full"},
		{"--mode", "passthrough", "--server-ca-file", "/x/ca.crt"},
		{"--pool-mode", "transaction"},
		{"--mode", "passthrough", "--pool-size", "4"},
		{"--session-loop=false"},
	} {
		var out, errb bytes.Buffer
		code := Main(append([]string{"proxy"}, args...), &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), "needs --mode=session") {
			t.Errorf("proxy %s: exit %d, %q; want a failure saying the flag needs --mode=session", strings.Join(args, " "), code, errb.String())
		}
	}
}

// Bad pooling flags are refused before the proxy looks for a store.
func TestProxyPoolFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--mode", "session", "--pool-mode", "statement"}, `--pool-mode "statement": want session or transaction`},
		{[]string{"--mode", "session", "--pool-mode", "transaction", "--pool-size", "0"}, "both must be positive"},
		{[]string{"--mode", "session", "--pool-mode", "transaction", "--pool-idle-timeout", "0s"}, "--pool-idle-timeout 0s, --pool-lifetime 1h0m0s: both must be positive"},
		{[]string{"--mode", "session", "--pool-mode", "transaction", "--pool-lifetime", "-1m"}, "both must be positive"},
		{[]string{"--mode", "passthrough", "--pool-idle-timeout", "1m"}, "--pool-idle-timeout needs --mode=session"},
	} {
		var out, errb bytes.Buffer
		code := Main(append([]string{"proxy"}, c.args...), &out, &errb)
		if code == 0 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("proxy %s: exit %d, %q; want a failure saying %q", strings.Join(c.args, " "), code, errb.String(), c.want)
		}
	}
}
