// Command istiod builds Istio's own control plane, pilot-discovery, from the
// istio.io/istio Go module and caches it outside any checkout, as the
// sandbox caches the Kubernetes binaries: the walkthrough's differential
// test (test/e2e/walkthrough_istiod_test.go) runs it beside isthmus and
// compares their EDS. It prints the binary's path.
//
// istio.io/istio is only ever a build of this cached binary, never a
// dependency of isthmus's go.mod. `go install pkg@version` refuses a module
// whose go.mod has replace directives; this version has none (were a later
// one to have them, build it from a throwaway module that requires it and
// copies them).
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

// Version is the istio.io/istio pseudo-version the Go module proxy serves
// here (no tagged release is served).
const Version = "v0.0.0-20260827124520-eed52ebb66ad"

const pkg = "istio.io/istio/pilot/cmd/pilot-discovery"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	path, err := ensure(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "istiod:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// cacheRoot is ISTHMUS_CACHE, else the sandbox's default cache.
func cacheRoot() string {
	if d := os.Getenv("ISTHMUS_CACHE"); d != "" {
		return d
	}
	return "/var/cache/isthmus"
}

// ensure returns the cached binary, building it first if it is missing.
// A file lock keeps two builds (make test's and a test's) from racing.
func ensure(ctx context.Context) (string, error) {
	dir := filepath.Join(cacheRoot(), "istio", Version)
	bin := filepath.Join(dir, "pilot-discovery")
	if executable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("take build lock: %w", err)
	}
	if executable(bin) { // built by another process while we waited
		return bin, nil
	}
	// go install writes into GOBIN under the command's name; a directory
	// beside the cache entry makes the final rename atomic.
	tmp, err := os.MkdirTemp(dir, ".build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	logPath := filepath.Join(dir, "build.log")
	log, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer log.Close()
	fmt.Fprintf(os.Stderr, "building Istio's pilot-discovery %s (first run on this machine, ~8 min on 2 cores; log: %s)\n", Version, logPath)
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "install", pkg+"@"+Version)
	// Outside any module: @version ignores the current one anyway, and
	// GOFLAGS such as -mod=vendor would not apply to it.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=-buildvcs=false")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install %s@%s: %v (log: %s)", pkg, Version, err, logPath)
	}
	if err := os.Rename(filepath.Join(tmp, "pilot-discovery"), bin); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "built pilot-discovery in %s\n", time.Since(start).Round(time.Second))
	return bin, nil
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
