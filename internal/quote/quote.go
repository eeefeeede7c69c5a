// Package quote quotes values a user gave for error messages. An error
// message must stay readable whatever was sent: a 1 MB value must not
// become a 1 MB error (nor a 1 MB log line, nor a 1 MB HTTP answer).
package quote

import (
	"strconv"
	"unicode/utf8"
)

// MaxBytes is how many bytes of a value Value quotes before cutting it.
const MaxBytes = 100

// Value returns s quoted as fmt's %q would quote it. A value longer than
// MaxBytes is cut at a character boundary at or before MaxBytes and
// followed by its full length: "aaaa..."... (1048576 bytes). Use it, with
// %s, wherever an error message quotes what a user wrote.
func Value(s string) string {
	if len(s) <= MaxBytes {
		return strconv.Quote(s)
	}
	cut := cutAt(s)
	return strconv.Quote(s[:cut]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// Raw returns s as it is, unquoted, cut like Value when it is longer than
// MaxBytes: for text that is already quoted (raw JSON) or that cannot
// contain anything but plain characters (digits).
func Raw(s string) string {
	if len(s) <= MaxBytes {
		return s
	}
	return s[:cutAt(s)] + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// cutAt is where a value longer than MaxBytes is cut: at most MaxBytes, at
// the start of a character, so the quoted part stays valid UTF-8.
func cutAt(s string) int {
	cut := MaxBytes
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return cut
}
