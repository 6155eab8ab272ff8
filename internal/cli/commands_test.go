package cli

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"strings"
	"testing"
)

// TestCommandSet: the operator commands are there on every system; proxy and
// sandbox are listed only on Linux, and elsewhere say so when called.
func TestCommandSet(t *testing.T) {
	root := newRoot(io.Discard, io.Discard)
	listed := map[string]bool{}
	for _, c := range root.Commands() {
		if !c.Hidden {
			listed[c.Name()] = true
		}
	}
	for _, name := range []string{"install", "manifest", "uninstall", "analyze", "proxy-config", "proxy-status", "create-remote-secret", "x", "gateway", "version", "demo-app", "discovery"} {
		if !listed[name] {
			t.Errorf("%s is not listed", name)
		}
	}
	onLinux := runtime.GOOS == "linux"
	for _, name := range []string{"proxy", "sandbox"} {
		if listed[name] != onLinux {
			t.Errorf("%s listed: %v, on %s", name, listed[name], runtime.GOOS)
		}
	}
	if !onLinux {
		var stderr bytes.Buffer
		code := Execute(context.Background(), []string{"proxy", "sidecar", "--pod", "p"}, io.Discard, &stderr)
		if code == 0 || !strings.Contains(stderr.String(), "runs only on Linux") {
			t.Errorf("isthmus proxy sidecar on %s: exit %d, %q", runtime.GOOS, code, stderr.String())
		}
	}
}
