package local

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestStoreWarning(t *testing.T) {
	layout := func(members, witnesses int, external []string) Layout {
		l, err := NewLayout("pg", members, witnesses, external)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if w := StoreWarning(layout(2, 0, nil)); !strings.Contains(w, "with one member down it loses its majority") ||
		!strings.Contains(w, "--witnesses 1") || !strings.Contains(w, "--members 3") {
		t.Errorf("2 members, no witness: warning %q", w)
	}
	for _, tc := range []struct {
		members, witnesses int
		external           []string
	}{{1, 0, nil}, {3, 0, nil}, {2, 1, nil}, {4, 0, nil}, {2, 0, []string{"http://127.0.0.1:2379"}}} {
		if w := StoreWarning(layout(tc.members, tc.witnesses, tc.external)); w != "" {
			t.Errorf("%d members, %d witnesses, external %v: unexpected warning %q", tc.members, tc.witnesses, tc.external, w)
		}
	}
}

func TestCheckGiven(t *testing.T) {
	l, err := NewLayout("pg", 3, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    UpOptions
		want string // "" = accepted
	}{
		{UpOptions{}, ""},
		{UpOptions{Cluster: "pg", Members: 3}, ""},
		{UpOptions{Cluster: "other"}, `/d already holds cluster "pg"; --cluster "other" names another (leave --cluster out to start "pg", or give another --dir for a new cluster "other")`},
		{UpOptions{Members: 2}, `/d already holds cluster "pg" with 3 database members; --members 2 cannot change it`},
	} {
		err := l.checkGiven("/d", tc.o)
		if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("checkGiven(%+v) = %v, want %q", tc.o, err, tc.want)
		}
	}
}

// The lock refuses a second holder, naming the first, and is free again
// once released.
func TestLockDir(t *testing.T) {
	dir := t.TempDir()
	first, err := lockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lockDir(dir)
	if want := "another holdfast up (pid " + strconv.Itoa(os.Getpid()) + ") is creating or starting the cluster in " + dir; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("second lock: %v, want an error containing %q", err, want)
	}
	first.release()
	again, err := lockDir(dir)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.release()
}
