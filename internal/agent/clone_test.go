package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/decide"
	"github.com/holdfast/holdfast/internal/pg"
)

type recordingCloner struct{ got []pg.Source }

func (r *recordingCloner) Clone(_ context.Context, src pg.Source) error {
	r.got = append(r.got, src)
	return nil
}

// A clone goes through Options.Cloner when one is set (the replica from a
// backup), and through the engine's own clone otherwise.
func TestCloneUsesCloner(t *testing.T) {
	obs := decide.Observation{View: cluster.View{Members: map[string]cluster.MemberInfo{
		"pg-0": {Name: "pg-0", Host: "10.0.0.1", Port: 5432}}}}
	act := decide.Action{Kind: decide.ActClone, Target: "pg-0"}
	defaults := cluster.Config{TTL: 3 * time.Second, LoopInterval: time.Second}
	rc := &recordingCloner{}
	a := New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-1"}, Defaults: defaults,
		DB: &fakeDB{}, Store: &fakeStore{}, Cloner: rc})
	if err := a.execute(context.Background(), obs, act); err != nil {
		t.Fatal(err)
	}
	if len(rc.got) != 1 || rc.got[0] != (pg.Source{Host: "10.0.0.1", Port: 5432}) {
		t.Fatalf("the cloner got %v", rc.got)
	}
	plain := New(Options{Cluster: "c", Self: cluster.MemberInfo{Name: "pg-1"}, Defaults: defaults,
		DB: &fakeDB{}, Store: &fakeStore{}})
	if err := plain.execute(context.Background(), obs, act); err == nil || !strings.HasSuffix(err.Error(), "not here") {
		t.Fatalf("without a cloner the engine's clone runs (fakeDB says \"not here\"): %v", err)
	}
}
