// Package kubebin builds the sandbox's Kubernetes and etcd binaries from
// their Go modules and caches them by version outside any checkout, so a
// machine pays the ~9 minute cold build once.
//
// The tools module (go.mod, go.sum and two small mains) is embedded in the
// isthmus binary, so `isthmus sandbox up` can build on any machine with Go.
package kubebin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Version is the Kubernetes release the embedded tools module pins.
const Version = "v1.34.4"

// DefaultCacheDir is where binaries are cached unless ISTHMUS_CACHE says otherwise.
const DefaultCacheDir = "/var/cache/isthmus"

//go:embed module
var module embed.FS

// Binary is one program the sandbox runs.
type Binary struct {
	Name    string // file name in the cache
	Pkg     string // package path built from the tools module
	Release string // the version it reports
	// Estimate is the cold-build time on 2 cores, told to the user up front.
	Estimate time.Duration
}

// Binaries lists what Ensure builds, the slowest first: later ones reuse its compiled packages.
var Binaries = []Binary{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", Version, 6 * time.Minute},
	{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", Version, 2 * time.Minute},
	{"kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", Version, 30 * time.Second},
	{"kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", Version, 30 * time.Second},
	{"kubectl", "k8s.io/kubernetes/cmd/kubectl", Version, 30 * time.Second},
	{"etcd", "./etcd", "v3.6.4", 30 * time.Second},
}

// Set is a directory holding every binary of Binaries.
type Set struct{ Dir string }

// Path returns the absolute path of the named binary.
func (s Set) Path(name string) string { return filepath.Join(s.Dir, name) }

// CacheDir returns the cache root from ISTHMUS_CACHE or the default.
func CacheDir() string {
	if d := os.Getenv("ISTHMUS_CACHE"); d != "" {
		return d
	}
	return DefaultCacheDir
}

// Ensure returns the cached binaries, building those that are missing or
// were built from a different tools module. progress receives one line per
// step worth telling a person about.
func Ensure(ctx context.Context, cacheRoot string, progress func(string)) (Set, error) {
	root := filepath.Join(cacheRoot, "kube", Version)
	set := Set{Dir: filepath.Join(root, "bin")}
	stamp, err := moduleStamp()
	if err != nil {
		return set, err
	}
	if set.complete(stamp) {
		return set, nil
	}
	if err := os.MkdirAll(set.Dir, 0o755); err != nil {
		return set, fmt.Errorf("create binary cache: %w", err)
	}
	unlock, err := lock(filepath.Join(root, "lock"))
	if err != nil {
		return set, err
	}
	defer unlock()
	if set.complete(stamp) { // another process built them while we waited
		return set, nil
	}
	if _, err := exec.LookPath("go"); err != nil {
		return set, errors.New("the sandbox builds Kubernetes " + Version + " from source and needs the Go toolchain on PATH (go 1.26 or newer)")
	}
	src := filepath.Join(root, "src")
	if err := writeModule(src); err != nil {
		return set, err
	}
	logPath := filepath.Join(root, "build.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return set, fmt.Errorf("open build log: %w", err)
	}
	defer logFile.Close()
	// An old stamp must not vouch for a half-rebuilt set.
	_ = os.Remove(set.stampPath())
	for _, b := range Binaries {
		progress(fmt.Sprintf("building %s %s (first run on this machine, up to ~%s; log: %s)", b.Name, b.Release, b.Estimate, logPath))
		start := time.Now()
		if err := build(ctx, src, set.Dir, b, logFile); err != nil {
			return set, fmt.Errorf("build %s %s failed (%w); the build log is %s", b.Name, b.Release, err, logPath)
		}
		progress(fmt.Sprintf("built %s in %s", b.Name, time.Since(start).Round(time.Second)))
	}
	if err := os.WriteFile(set.stampPath(), []byte(stamp), 0o644); err != nil {
		return set, fmt.Errorf("write build stamp: %w", err)
	}
	return set, nil
}

func (s Set) stampPath() string { return filepath.Join(s.Dir, ".stamp") }

func (s Set) readStamp() string {
	b, _ := os.ReadFile(s.stampPath())
	return string(b)
}

func (s Set) has(name string) bool {
	fi, err := os.Stat(s.Path(name))
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func (s Set) complete(stamp string) bool {
	if s.readStamp() != stamp {
		return false
	}
	for _, b := range Binaries {
		if !s.has(b.Name) {
			return false
		}
	}
	return true
}

// moduleStamp identifies the embedded tools module, so a changed module rebuilds.
func moduleStamp() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(module, "module", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := module.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read embedded tools module: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// files maps embedded names to their place in the written module.
var files = map[string]string{
	"go.mod.txt":   "go.mod",
	"go.sum.txt":   "go.sum",
	"tools.go.txt": "tools.go",
	"etcd.go.txt":  "etcd/main.go",
}

func writeModule(dir string) error {
	for from, to := range files {
		b, err := module.ReadFile("module/" + from)
		if err != nil {
			return fmt.Errorf("read embedded %s: %w", from, err)
		}
		p := filepath.Join(dir, to)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("write tools module: %w", err)
		}
		if old, err := os.ReadFile(p); err == nil && bytes.Equal(old, b) {
			continue
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("write tools module: %w", err)
		}
	}
	return nil
}

// ldflags stamps the Kubernetes version so components report v1.34.4, not v0.0.0-master.
func ldflags() string {
	minor := strings.Split(strings.TrimPrefix(Version, "v"), ".")[1]
	flags := []string{"-s", "-w"}
	for _, p := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", p+".gitVersion="+Version,
			"-X", p+".gitMajor=1",
			"-X", p+".gitMinor="+minor,
			"-X", p+".gitTreeState=clean")
	}
	return strings.Join(flags, " ")
}

func build(ctx context.Context, src, outDir string, b Binary, log *os.File) error {
	tmp := filepath.Join(outDir, "."+b.Name+".tmp")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags(), "-o", tmp, b.Pkg)
	cmd.Dir = src
	fmt.Fprintf(log, "=== %s %s: go build %s\n", time.Now().Format(time.RFC3339), b.Name, b.Pkg)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, filepath.Join(outDir, b.Name))
}

// lock takes an exclusive file lock so two processes never build at once.
func lock(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("take build lock %s: %w", path, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
