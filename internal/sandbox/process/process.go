// Package process runs the sandbox's long-lived components as detached
// processes, each in its network namespace, with its output in a log file
// and its identity in a pid file, so that a later `isthmus sandbox down`
// (another process) can find and stop exactly what `up` started.
package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// Spec describes one component process.
type Spec struct {
	Name  string
	Path  string
	Args  []string
	Env   []string // added to a minimal environment
	Dir   string
	NetNS string // network namespace name; empty runs in the host's
	Log   string // stdout and stderr, appended
	PID   string // pid file
}

// Start launches the process detached from the caller's session and records it.
func Start(s Spec) (int, error) {
	for _, d := range []string{filepath.Dir(s.Log), filepath.Dir(s.PID), s.Dir} {
		if d == "" {
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, fmt.Errorf("start %s: %w", s.Name, err)
		}
	}
	logf, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("start %s: open log: %w", s.Name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s starting %s %s\n", time.Now().Format(time.RFC3339), s.Path, strings.Join(s.Args, " "))
	cmd := exec.Command(s.Path, s.Args...)
	cmd.Dir = s.Dir
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=/root"}, s.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start := cmd.Start
	if s.NetNS != "" {
		start = func() error { return network.Do(s.NetNS, cmd.Start) }
	}
	if err := start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", s.Name, err)
	}
	pid := cmd.Process.Pid
	// Reap the child if it dies while we still run; after we exit, init does.
	go func() { _ = cmd.Wait() }()
	st, err := startTime(pid)
	if err != nil {
		return pid, fmt.Errorf("start %s: %w (see %s)", s.Name, err, s.Log)
	}
	if err := os.WriteFile(s.PID, []byte(fmt.Sprintf("%d %d\n", pid, st)), 0o644); err != nil {
		return pid, fmt.Errorf("start %s: write pid file: %w", s.Name, err)
	}
	return pid, nil
}

// Alive reads a pid file and reports whether that very process still runs
// (a recycled pid with another start time does not count).
func Alive(pidFile string) (int, bool) {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return 0, false
	}
	var pid int
	var st uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &st); err != nil {
		return 0, false
	}
	now, err := startTime(pid)
	if err != nil || now != st {
		return pid, false
	}
	return pid, true
}

// Stop sends SIGTERM, waits up to grace, then SIGKILLs, and removes the pid file.
func Stop(ctx context.Context, pidFile string, grace time.Duration) error {
	pid, ok := Alive(pidFile)
	if !ok {
		_ = os.Remove(pidFile)
		return nil
	}
	if err := Kill(ctx, pid, grace); err != nil {
		return err
	}
	_ = os.Remove(pidFile)
	return nil
}

// Kill terminates pid: SIGTERM, up to grace to exit, then SIGKILL.
func Kill(ctx context.Context, pid int, grace time.Duration) error {
	st, err := startTime(pid)
	if err != nil {
		return nil // already gone
	}
	gone := func() bool {
		now, err := startTime(pid)
		return err != nil || now != st
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if gone() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for range 100 {
		if gone() {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d survived SIGKILL", pid)
}

// errGone says the process no longer exists (or is a zombie).
var errGone = errors.New("process is gone")

// startTime returns the start time of a live, non-zombie process, in clock ticks since boot.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, errGone
	}
	// The command name may contain spaces; fields are counted after its closing ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errGone
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 || f[0] == "Z" || f[0] == "X" {
		return 0, errGone
	}
	return strconv.ParseUint(f[19], 10, 64)
}
