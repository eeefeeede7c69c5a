package procstat

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestReadSelf(t *testing.T) {
	s, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PPID != os.Getppid() {
		t.Errorf("parent %d, want %d", s.PPID, os.Getppid())
	}
	if !Alive(os.Getpid()) {
		t.Error("this process is not alive")
	}
}

// A child that exited and was not reaped is a zombie: not alive; once
// reaped it does not exist.
func TestAliveZombie(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(time.Minute) // a bound for a broken test only
	for {
		s, err := Read(pid)
		if err != nil {
			t.Fatal(err)
		}
		if s.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child never exited (state %c)", s.State)
		}
		time.Sleep(time.Millisecond)
	}
	if Alive(pid) {
		t.Error("Alive says yes for a zombie")
	}
	_ = cmd.Wait()
	if _, err := Read(pid); err == nil {
		t.Error("a reaped process still has a state")
	}
}
