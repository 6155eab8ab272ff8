package e2e

import (
	"bytes"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestSandboxNeedsRoot: an unprivileged user gets a clear refusal, not a
// half-built sandbox.
func TestSandboxNeedsRoot(t *testing.T) {
	cmd := exec.Command(bin, "sandbox", "--state-dir", t.TempDir(), "up")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		t.Fatal("sandbox up succeeded as an unprivileged user")
	}
	if !strings.Contains(stderr.String(), "the sandbox needs root") {
		t.Fatalf("unclear refusal: %q", stderr.String())
	}
}
