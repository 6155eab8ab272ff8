package process

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestStartAliveStop(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{
		Name: "sleeper",
		Path: "/bin/sh",
		Args: []string{"-c", "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done"},
		Log:  filepath.Join(dir, "logs", "sleeper.log"),
		PID:  filepath.Join(dir, "run", "sleeper.pid"),
	}
	pid, err := Start(spec)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := Alive(spec.PID); !ok || got != pid {
		t.Fatalf("Alive = %d %v, want %d true", got, ok, pid)
	}
	if err := Stop(t.Context(), spec.PID, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, ok := Alive(spec.PID); ok {
		t.Fatal("process alive after Stop")
	}
	if _, err := os.Stat(spec.PID); !os.IsNotExist(err) {
		t.Fatal("pid file left after Stop")
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, _ := os.ReadFile(spec.Log)
		if strings.Contains(string(b), "started") && strings.Contains(string(b), "bye") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks output of a graceful stop: %q", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAliveRejectsARecycledPID(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "x.pid")
	// Our own pid with a start time that is not ours stands for a recycled pid.
	os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+" 1"), 0o644)
	if _, ok := Alive(pidFile); ok {
		t.Fatal("a pid whose start time differs was taken for the recorded process")
	}
}
