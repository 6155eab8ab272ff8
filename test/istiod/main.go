// Command istiod builds Istio's own binaries from the istio.io/istio Go
// module and caches them outside any checkout, as the sandbox caches the
// Kubernetes binaries: the walkthrough's differential test
// (test/e2e/walkthrough_istiod_test.go) runs pilot-discovery beside
// isthmus and compares their EDS, and its istioctl test
// (walkthrough_istioctl_test.go) points Istio's own istioctl at the
// mesh; the scale benchmark (bench/cpscale) measures isthmus against
// pilot-discovery too. Both run it through test/istiod/launch. Its
// arguments name the binaries (default pilot-discovery); it prints their
// paths, one per line.
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

// packages are the binaries it builds, by name.
var packages = map[string]string{
	"pilot-discovery": "istio.io/istio/pilot/cmd/pilot-discovery",
	"istioctl":        "istio.io/istio/istioctl/cmd/istioctl",
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	names := os.Args[1:]
	if len(names) == 0 {
		names = []string{"pilot-discovery"}
	}
	for _, name := range names {
		pkg, ok := packages[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "istiod: unknown binary %q (pilot-discovery or istioctl)\n", name)
			os.Exit(2)
		}
		path, err := ensure(ctx, name, pkg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "istiod:", err)
			os.Exit(1)
		}
		fmt.Println(path)
	}
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
func ensure(ctx context.Context, name, pkg string) (string, error) {
	dir := filepath.Join(cacheRoot(), "istio", Version)
	bin := filepath.Join(dir, name)
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
	logPath := filepath.Join(dir, name+".build.log")
	log, err := os.Create(logPath)
	if err != nil {
		return "", err
	}
	defer log.Close()
	fmt.Fprintf(os.Stderr, "building Istio's %s %s (first run on this machine, ~4-8 min on 2 cores; log: %s)\n", name, Version, logPath)
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
	if err := os.Rename(filepath.Join(tmp, name), bin); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "built %s in %s\n", name, time.Since(start).Round(time.Second))
	return bin, nil
}

func executable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
