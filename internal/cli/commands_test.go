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
	for _, name := range []string{"install", "manifest", "uninstall", "analyze", "proxy-config", "proxy-status", "remote-clusters", "create-remote-secret", "x", "gateway", "version", "demo-app", "discovery", "check", "dashboard"} {
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

// TestUnknownCommandsFail: a word a command group does not know is an
// error (cobra alone prints help and exits 0), and proxy-config's views
// answer to istioctl's names.
func TestUnknownCommandsFail(t *testing.T) {
	for _, args := range [][]string{{"nope"}, {"x", "nope"}, {"proxy-config", "bootstrapp", "pod"}, {"gateway", "addr"}} {
		var stderr bytes.Buffer
		code := Execute(context.Background(), args, io.Discard, &stderr)
		if code == 0 || !strings.Contains(stderr.String(), `unknown command "`+args[len(args)-1]) && !strings.Contains(stderr.String(), `unknown command "`+args[1]) {
			t.Errorf("isthmus %s: exit %d, %q", strings.Join(args, " "), code, stderr.String())
		}
	}
	var stderr bytes.Buffer
	if code := Execute(context.Background(), []string{"gateway", "addr"}, io.Discard, &stderr); code == 0 || !strings.Contains(stderr.String(), `did you mean "address"`) {
		t.Errorf("gateway addr: exit %d, %q", code, stderr.String())
	}
	if code := Execute(context.Background(), []string{"proxy-config"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("proxy-config alone prints its help: exit %d", code)
	}
	root := newRoot(io.Discard, io.Discard)
	for alias, view := range map[string]string{"cluster": "clusters", "c": "clusters", "listener": "listeners", "l": "listeners",
		"route": "routes", "r": "routes", "endpoint": "endpoints", "ep": "endpoints", "s": "secret"} {
		c, _, err := root.Find([]string{"pc", alias, "pod"})
		if err != nil || c.Name() != view {
			t.Errorf("proxy-config %s finds %v (%v), want %s", alias, c.Name(), err, view)
		}
	}
}
