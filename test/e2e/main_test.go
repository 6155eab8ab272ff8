// Package e2e runs isthmus as a user would, on the real sandbox: real
// kube-apiservers in real network namespaces, driven through the binary.
// The tests need root; `go test -short` skips them.
package e2e

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// bin is the isthmus binary built for this test run.
var bin string

// proxyBin is the isthmus-proxy binary of the same build: what injected
// pods run, so what the tests that start proxies on the host run.
var proxyBin string

// imageDir holds the images built for this run (make image's IMAGE_DIR):
// oci/ is loaded into every sandbox, digests.txt names them.
var imageDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("e2e: skipped in -short mode")
		os.Exit(0)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests run the sandbox and need root; run `make test` as root, or `go test -short` to skip them")
		os.Exit(1)
	}
	if _, err := os.Stat("/run/netns/isthmus-inet"); err == nil {
		fmt.Fprintln(os.Stderr, "e2e: a sandbox is already running on this machine; stop it with `isthmus sandbox down` first (there is one sandbox per machine)")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "isthmus-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Readable by everyone: one test runs the binary as an unprivileged user.
	os.Chmod(dir, 0o755)
	// The binary and the images come from one make run, so the version the
	// installer renders (HUB/isthmus:VERSION) is the tag of the images.
	imageDir = filepath.Join(dir, "image")
	build := exec.Command("make", "-C", "../..", "build", "image", "IMAGE_DIR="+imageDir)
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build isthmus and its images:", err)
		os.Exit(1)
	}
	bin, proxyBin = filepath.Join(dir, "isthmus"), filepath.Join(dir, "isthmus-proxy")
	for _, dst := range []string{bin, proxyBin} {
		src := "../../bin/" + filepath.Base(dst)
		if b, err := os.ReadFile(src); err != nil || os.WriteFile(dst, b, 0o755) != nil {
			fmt.Fprintf(os.Stderr, "e2e: copy %s: %v\n", src, err)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is what one isthmus invocation did.
type result struct {
	stdout, stderr string
	err            error
}

// isthmus runs the binary with a deadline and returns its output.
func isthmus(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	// Not t.Context(): cleanups (sandbox down) run after it is canceled.
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	t.Logf("isthmus %v -> err=%v\nstdout:\n%s\nstderr:\n%s", args, err, out.String(), errb.String())
	return result{stdout: out.String(), stderr: errb.String(), err: err}
}
