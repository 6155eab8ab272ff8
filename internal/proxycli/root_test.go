//go:build linux

package proxycli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
)

// TestCommandLines: isthmus-proxy takes a pod's args as isthmus does
// (proxy init|sidecar|router) and version, and nothing of the rest of
// isthmus; a word it does not know is an error, not help and exit 0.
func TestCommandLines(t *testing.T) {
	root := newRoot(new(slog.LevelVar), io.Discard, io.Discard)
	for _, args := range [][]string{{"proxy", "init"}, {"proxy", "sidecar"}, {"proxy", "router"}, {"version"}} {
		if c, _, err := root.Find(args); err != nil || c.Name() != args[len(args)-1] {
			t.Errorf("isthmus-proxy %s: not found (%v)", strings.Join(args, " "), err)
		}
	}
	for _, args := range [][]string{{"discovery"}, {"install"}, {"proxy", "sidcar"}} {
		var stderr bytes.Buffer
		if code := Execute(context.Background(), args, io.Discard, &stderr); code == 0 || !strings.Contains(stderr.String(), "unknown command") {
			t.Errorf("isthmus-proxy %s: exit %d, %q", strings.Join(args, " "), code, stderr.String())
		}
	}
	var stdout bytes.Buffer
	if code := Execute(context.Background(), []string{"proxy", "init", "--dry-run", "-b", "8080"}, &stdout, io.Discard); code != 0 || !strings.Contains(stdout.String(), "--dport 8080 -j ISTIO_IN_REDIRECT") {
		t.Errorf("proxy init --dry-run: exit %d, rules:\n%s", code, stdout.String())
	}
	stdout.Reset()
	if code := Execute(context.Background(), []string{"version"}, &stdout, io.Discard); code != 0 || !strings.HasPrefix(stdout.String(), "isthmus-proxy version: ") {
		t.Errorf("version: exit %d, %q", code, stdout.String())
	}
}

// TestSidecarNeedsItsPod: the sidecar's flags and environment are read as
// isthmus proxy sidecar reads them; without its pod it refuses to start.
func TestSidecarNeedsItsPod(t *testing.T) {
	for _, k := range []string{"INSTANCE_IP", "POD_NAME", "POD_NAMESPACE", "ISTIO_KUBE_APP_PROBERS", "ISTIO_METAJSON_LABELS"} {
		t.Setenv(k, "")
	}
	defer slog.SetDefault(slog.Default())
	var stderr bytes.Buffer
	code := Execute(context.Background(), []string{"proxy", "sidecar", "--plaintext", "--ip", "10.0.0.1", "--labels-file", "/nonexistent"}, io.Discard, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), "the proxy needs its pod IP, name and namespace") {
		t.Errorf("sidecar without its pod: exit %d, %q", code, stderr.String())
	}
}

// TestVerbose: -v logs debug detail, and the handler logs at the level
// the proxy is given, so the admin port's /logging changes what is written.
func TestVerbose(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	var stderr bytes.Buffer
	level := new(slog.LevelVar)
	root := newRoot(level, io.Discard, &stderr)
	root.SetArgs([]string{"version", "-v"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	slog.Debug("seen")
	if !strings.Contains(stderr.String(), "msg=seen") {
		t.Errorf("-v: debug is not logged to the root's stderr: %q", stderr.String())
	}
	level.Set(slog.LevelInfo) // what /logging?level=info does
	if slog.Default().Enabled(context.Background(), slog.LevelDebug) {
		t.Error("the handler does not follow the level the proxy holds")
	}
}
