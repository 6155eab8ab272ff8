package launch

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// Process is a control plane run on this host (cpscale runs isthmus's
// with it too). It runs in a process group of its own, so stopping it
// stops whatever it runs under (ip netns exec, a shell); it may be started
// again once stopped, as the reconnect storm restarts it.
type Process struct {
	Argv []string
	// Env is added to this process's environment.
	Env []string
	Dir string
	// Log is the file its output is appended to, across restarts.
	Log string
	// Ready answers 200 once it serves.
	Ready string

	cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts it; ctx's end kills it.
func (p *Process) Start(ctx context.Context) error {
	p.cmd = exec.CommandContext(ctx, p.Argv[0], p.Argv[1:]...)
	log, err := os.OpenFile(p.Log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	p.cmd.Dir = p.Dir
	p.cmd.Env = append(os.Environ(), p.Env...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return err
	}
	cmd, exited := p.cmd, make(chan struct{})
	p.exited = exited
	go func() { _ = cmd.Wait(); log.Close(); close(exited) }()
	return nil
}

// Pid is the started process's.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once the started process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// WaitReady waits for Ready to answer 200, or the process to exit.
func (p *Process) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(p.Ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited (%s)", p.cmd.ProcessState)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready on %s after %s", p.Ready, timeout)
}

// running says whether it was started and has not exited: once reaped,
// its pid (and group id) may be another's.
func (p *Process) running() bool {
	if p.cmd == nil || p.cmd.Process == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Kill stops it at once (SIGKILL to its group), as a crash would.
func (p *Process) Kill() {
	if !p.running() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

// Stop asks it to shut down (SIGTERM to its group) and kills it if it
// has not within grace.
func (p *Process) Stop(grace time.Duration) {
	if !p.running() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.Kill()
	}
}
