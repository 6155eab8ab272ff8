// Package kubebin builds the sandbox's Kubernetes and etcd binaries from
// their Go modules and caches them by version outside any checkout, so a
// machine pays the cold build (8m07s on 2 cores after make build, 2026-12-07) once.
//
// The tools module (go.mod, go.sum and two small mains) is embedded in the
// isthmus binary, so `isthmus sandbox up` can build on any machine with Go.
// Kubernetes' components are one multi-call program, kube, and one go build
// makes it and etcd: the go command compiles the packages they share once,
// keeps every core busy and links the two at once.
package kubebin

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Version is the Kubernetes release the embedded tools module pins.
const Version = "v1.37.2"

// EtcdVersion is the etcd release the embedded tools module pins.
const EtcdVersion = "v3.7.0"

// DefaultCacheDir is where binaries are cached unless ISTHMUS_CACHE says otherwise.
const DefaultCacheDir = "/var/cache/isthmus"

// Estimate is the cold build's time on 2 cores, told to the user up front.
const Estimate = 9 * time.Minute

// Program is one executable the build makes.
type Program struct {
	Name string // file name in the cache
	Pkg  string // main package in the tools module
}

// Programs are what one go build makes: kube, the multi-call program of the
// Kubernetes components, and etcd.
var Programs = []Program{
	{"kube", "./kube"},
	{"etcd", "./etcd"},
}

// Binary is one program the sandbox runs, by the name it runs it.
type Binary struct {
	Name    string // file name in the cache
	Program string // the Program it is: itself, or the one its name links to
	Release string // the version it reports
	// Version is the arguments that make it print Release.
	Version []string
}

// Binaries lists what the sandbox and its users run from the cache.
var Binaries = []Binary{
	{"kube-apiserver", "kube", Version, []string{"--version"}},
	{"kube-controller-manager", "kube", Version, []string{"--version"}},
	{"kube-scheduler", "kube", Version, []string{"--version"}},
	{"kube-proxy", "kube", Version, []string{"--version"}},
	{"kubectl", "kube", Version, []string{"version", "--client"}},
	{"etcd", "etcd", EtcdVersion, []string{"--version"}},
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

// Ensure returns the cached binaries, building them when one is missing or
// they were built from a different tools module, build command or layout.
// progress receives one line per step worth telling a person about.
func Ensure(ctx context.Context, cacheRoot string, progress func(string)) (Set, error) {
	root := filepath.Join(cacheRoot, "kube", Version)
	set := Set{Dir: filepath.Join(root, "bin")}
	stamp := stamp()
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
	progress(fmt.Sprintf("building Kubernetes %s (%s, one program) and etcd %s from source (first run on this machine, up to ~%s on 2 cores; log: %s)",
		Version, strings.Join(names("kube"), ", "), EtcdVersion, Estimate, logPath))
	start := time.Now()
	out := filepath.Join(root, "build")
	if err := build(ctx, src, out, logFile, progress); err != nil {
		return set, fmt.Errorf("build Kubernetes %s and etcd %s failed (%w); the build log is %s", Version, EtcdVersion, err, logPath)
	}
	if err := set.install(out); err != nil {
		return set, err
	}
	if err := set.check(ctx); err != nil {
		return set, err
	}
	progress(fmt.Sprintf("built Kubernetes and etcd in %s", time.Since(start).Round(time.Second)))
	if err := os.WriteFile(set.stampPath(), []byte(stamp), 0o644); err != nil {
		return set, fmt.Errorf("write build stamp: %w", err)
	}
	return set, nil
}

// names lists the binaries that are the given program.
func names(program string) []string {
	var n []string
	for _, b := range Binaries {
		if b.Program == program {
			n = append(n, b.Name)
		}
	}
	return n
}

func (s Set) stampPath() string { return filepath.Join(s.Dir, ".stamp") }

func (s Set) readStamp() string {
	b, _ := os.ReadFile(s.stampPath())
	return string(b)
}

// has reports whether name is an executable file, or a link to one.
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

// install moves the built programs from dir into the set and names each
// binary that is a program by another name as a link to it, replacing
// whatever an older layout left there.
func (s Set) install(dir string) error {
	for _, p := range Programs {
		if err := os.Rename(filepath.Join(dir, p.Name), s.Path(p.Name)); err != nil {
			return fmt.Errorf("install %s: %w", p.Name, err)
		}
	}
	for _, b := range Binaries {
		if b.Program == b.Name {
			continue
		}
		tmp := s.Path("." + b.Name + ".tmp")
		_ = os.Remove(tmp)
		if err := os.Symlink(b.Program, tmp); err != nil {
			return fmt.Errorf("install %s: %w", b.Name, err)
		}
		if err := os.Rename(tmp, s.Path(b.Name)); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("install %s: %w", b.Name, err)
		}
	}
	return nil
}

// check runs each binary as the sandbox will, by its name, and wants its
// release (without the v: etcd prints "etcd Version: 3.6.4") in what it prints.
func (s Set) check(ctx context.Context) error {
	for _, b := range Binaries {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		out, err := exec.CommandContext(cctx, s.Path(b.Name), b.Version...).CombinedOutput()
		cancel()
		if err != nil || !bytes.Contains(out, []byte(strings.TrimPrefix(b.Release, "v"))) {
			return fmt.Errorf("built %s does not run as %s: %s %s: %v: %s", b.Program, b.Name, b.Name, strings.Join(b.Version, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

//go:embed module/go.mod.txt
var goMod []byte

//go:embed module/go.sum.txt
var goSum []byte

//go:embed module/kube.go.txt
var kubeMain []byte

//go:embed module/etcd.go.txt
var etcdMain []byte

//go:embed dispatch.go
var dispatch []byte

// moduleFiles returns the tools module: each file's path in it and content.
func moduleFiles() map[string][]byte {
	return map[string][]byte{
		"go.mod":           goMod,
		"go.sum":           goSum,
		"kube/main.go":     kubeMain,
		"kube/dispatch.go": bytes.Replace(dispatch, []byte("package kubebin\n"), []byte("package main\n"), 1),
		"etcd/main.go":     etcdMain,
	}
}

func writeModule(dir string) error {
	for to, b := range moduleFiles() {
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

// stamp identifies what Ensure builds: the tools module, the build command
// and the cache's layout. A cache stamped otherwise is rebuilt.
func stamp() string {
	h := sha256.New()
	files := moduleFiles()
	for _, name := range slices.Sorted(maps.Keys(files)) {
		fmt.Fprintf(h, "file %s %d\n", name, len(files[name]))
		h.Write(files[name])
	}
	fmt.Fprintf(h, "build %q %q\n", buildEnv, buildArgs("OUT"))
	for _, p := range Programs {
		fmt.Fprintf(h, "program %s %s\n", p.Name, p.Pkg)
	}
	for _, b := range Binaries {
		fmt.Fprintf(h, "binary %s %s %s\n", b.Name, b.Program, b.Release)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// ldflags stamps the Kubernetes version so components report v1.37.2, not v0.0.0-master.
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

// buildEnv is added to the go command's environment: static binaries, as
// Kubernetes and etcd release them, and as make build builds isthmus's.
var buildEnv = []string{"CGO_ENABLED=0"}

// buildArgs is the go command that builds every Program into the directory out.
// -v names each package as it is compiled: the log shows where the build is.
// The linker leaves out debug information (-w), so the compiler does not
// write it (-dwarf=false: a fifth less compile time). The flags, the tag
// and the tools module's versions are make build's (the Makefile's
// GCFLAGS and GOFLAGS, isthmus's go.mod): the two builds then share the
// go command's cache for every package they both compile (the standard
// library, client-go, apimachinery, gRPC, protobuf: about 900 packages; the
// 600 beyond the standard library cost 330 CPU-seconds cold, BENCHMARKS.md)
// instead of compiling them twice.
func buildArgs(out string) []string {
	args := []string{"build", "-v", "-trimpath", "-tags=grpcnotrace", "-gcflags=all=-dwarf=false", "-ldflags", ldflags(), "-o", out + string(filepath.Separator)}
	for _, p := range Programs {
		args = append(args, p.Pkg)
	}
	return args
}

// build runs one go build for every Program, telling progress every minute
// how far it got.
func build(ctx context.Context, src, out string, log *os.File, progress func(string)) error {
	if err := os.RemoveAll(out); err != nil {
		return fmt.Errorf("clear build directory: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("create build directory: %w", err)
	}
	args := buildArgs(out)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = src
	cmd.Env = append(os.Environ(), buildEnv...)
	fmt.Fprintf(log, "=== %s %s go %s\n", time.Now().Format(time.RFC3339), strings.Join(buildEnv, " "), strings.Join(args, " "))
	compiled := &lineCounter{w: log}
	cmd.Stdout, cmd.Stderr = log, compiled
	start := time.Now()
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			fmt.Fprintf(log, "=== %s go build: %v after %s\n", time.Now().Format(time.RFC3339), err, time.Since(start).Round(time.Second))
			return err
		case <-tick.C:
			progress(fmt.Sprintf("still building: %s, %d packages compiled", time.Since(start).Round(time.Minute), compiled.n.Load()))
		}
	}
}

// lineCounter passes output on and counts its lines (with -v, one per package compiled).
type lineCounter struct {
	w io.Writer
	n atomic.Int64
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n.Add(int64(bytes.Count(p, []byte("\n"))))
	return c.w.Write(p)
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
