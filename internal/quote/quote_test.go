package quote

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestValue(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", `""`},
		{"pg-1", `"pg-1"`},
		{"a\nb", `"a\nb"`},
		{strings.Repeat("x", MaxBytes), `"` + strings.Repeat("x", MaxBytes) + `"`},
		{strings.Repeat("x", MaxBytes+1), `"` + strings.Repeat("x", MaxBytes) + `"... (101 bytes)`},
		{strings.Repeat("x", 1<<20), `"` + strings.Repeat("x", MaxBytes) + `"... (1048576 bytes)`},
	} {
		if got := Value(c.in); got != c.want {
			t.Errorf("Value(%d bytes) = %s, want %s", len(c.in), got, c.want)
		}
	}
}

// A multi-byte character straddling the cut is dropped whole, never split
// into an invalid sequence.
func TestValueCutsAtACharacterBoundary(t *testing.T) {
	s := strings.Repeat("x", MaxBytes-1) + "é" + strings.Repeat("y", 10)
	got := Value(s)
	if want := `"` + strings.Repeat("x", MaxBytes-1) + `"... (111 bytes)`; got != want {
		t.Errorf("Value = %s, want %s", got, want)
	}
	if !utf8.ValidString(got) {
		t.Errorf("Value returned invalid UTF-8: %q", got)
	}
}

func TestRaw(t *testing.T) {
	if got := Raw(`[1,2]`); got != `[1,2]` {
		t.Errorf("Raw short = %s", got)
	}
	if got, want := Raw(strings.Repeat("7", 1000)), strings.Repeat("7", MaxBytes)+"... (1000 bytes)"; got != want {
		t.Errorf("Raw long = %s, want %s", got, want)
	}
}
