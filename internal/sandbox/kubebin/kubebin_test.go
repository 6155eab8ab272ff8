package kubebin

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/mod/modfile"
)

func TestDispatch(t *testing.T) {
	isCommand := func(name string) bool { return name == "kube-apiserver" || name == "kubectl" }
	for _, tc := range []struct {
		argv    []string
		command string
		args    []string
	}{
		// Started through a link: arguments pass unchanged.
		{[]string{"/var/cache/isthmus/kube/v1.37.2/bin/kube-apiserver", "--version"}, "kube-apiserver", []string{"/var/cache/isthmus/kube/v1.37.2/bin/kube-apiserver", "--version"}},
		{[]string{"kubectl"}, "kubectl", []string{"kubectl"}},
		// A link's name wins over a first argument that is also a command.
		{[]string{"kubectl", "kube-apiserver"}, "kubectl", []string{"kubectl", "kube-apiserver"}},
		// Started by its own name: the command moves to argv[0].
		{[]string{"/cache/bin/kube", "kubectl", "version", "--client"}, "kubectl", []string{"kubectl", "version", "--client"}},
		{[]string{"kube", "kube-apiserver"}, "kube-apiserver", []string{"kube-apiserver"}},
	} {
		command, args, ok := Dispatch(tc.argv, isCommand)
		if !ok || command != tc.command || !slices.Equal(args, tc.args) {
			t.Errorf("Dispatch(%q) = %q, %q, %v; want %q, %q", tc.argv, command, args, ok, tc.command, tc.args)
		}
	}
	for _, argv := range [][]string{nil, {"kube"}, {"kube", "etcd"}, {"kube", "--version", "kubectl"}, {"/cache/bin/kube-apiserver.old"}} {
		if command, args, ok := Dispatch(argv, isCommand); ok {
			t.Errorf("Dispatch(%q) = %q, %q; want no command", argv, command, args)
		}
	}
}

// The multi-call program's commands are exactly the binaries that link to it.
func TestKubeCommandsAreTheBinaries(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "kube/main.go", kubeMain, 0)
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	ast.Inspect(f, func(n ast.Node) bool {
		spec, ok := n.(*ast.ValueSpec)
		if !ok || len(spec.Names) != 1 || spec.Names[0].Name != "commands" {
			return true
		}
		for _, elt := range spec.Values[0].(*ast.CompositeLit).Elts {
			name, err := strconv.Unquote(elt.(*ast.KeyValueExpr).Key.(*ast.BasicLit).Value)
			if err != nil {
				t.Fatal(err)
			}
			commands = append(commands, name)
		}
		return false
	})
	slices.Sort(commands)
	want := names("kube")
	slices.Sort(want)
	if !slices.Equal(commands, want) {
		t.Errorf("kube/main.go's commands are %q; the binaries that link to kube are %q", commands, want)
	}
}

func TestBinariesArePrograms(t *testing.T) {
	programs := map[string]bool{}
	for _, p := range Programs {
		programs[p.Name] = true
		if want := "./" + p.Name; p.Pkg != want {
			t.Errorf("program %s is built from %s; go build -o DIR names it after its package, so it must be %s", p.Name, p.Pkg, want)
		}
		if _, ok := moduleFiles()[strings.TrimPrefix(p.Pkg, "./")+"/main.go"]; !ok {
			t.Errorf("program %s: the tools module has no %s/main.go", p.Name, p.Pkg)
		}
	}
	seen := map[string]bool{}
	for _, b := range Binaries {
		if !programs[b.Program] {
			t.Errorf("binary %s is program %q, which is not built", b.Name, b.Program)
		}
		if seen[b.Name] {
			t.Errorf("binary %s listed twice", b.Name)
		}
		seen[b.Name] = true
		if len(b.Version) == 0 || b.Release == "" {
			t.Errorf("binary %s: no way to check its release", b.Name)
		}
	}
	// What the sandbox starts and what its users call by path.
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl"} {
		if !seen[name] {
			t.Errorf("no binary %s", name)
		}
	}
}

// The dispatcher is written into the tools module as package main, the
// standard library its only import.
func TestDispatchFileIsPackageMain(t *testing.T) {
	src := moduleFiles()["kube/dispatch.go"]
	f, err := parser.ParseFile(token.NewFileSet(), "dispatch.go", src, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name.Name != "main" {
		t.Errorf("kube/dispatch.go is package %s", f.Name.Name)
	}
	for _, imp := range f.Imports {
		if p, _ := strconv.Unquote(imp.Path.Value); strings.Contains(strings.Split(p, "/")[0], ".") {
			t.Errorf("kube/dispatch.go imports %s", p)
		}
	}
}

func TestStampCoversModuleAndLayout(t *testing.T) {
	base := stamp()
	if base != stamp() {
		t.Fatal("stamp is not stable")
	}
	change := func(what string, f func()) {
		t.Helper()
		f()
		if stamp() == base {
			t.Errorf("changing %s leaves the stamp as it was", what)
		}
	}
	saved := slices.Clone(Binaries)
	change("a binary's program", func() { Binaries[0].Program = "kube-apiserver" })
	Binaries = saved
	savedMain := kubeMain
	change("the multi-call main", func() { kubeMain = append(slices.Clone(kubeMain), '\n') })
	kubeMain = savedMain
	if stamp() != base {
		t.Fatal("stamp did not come back")
	}
}

// An older cache (every binary a program of its own, another stamp) is not
// complete; installing a build replaces its files with the programs and
// links to them, which check runs by name.
func TestInstallOverOldLayout(t *testing.T) {
	s := Set{Dir: t.TempDir()}
	for _, b := range Binaries {
		if err := os.WriteFile(s.Path(b.Name), []byte("#!/bin/sh\necho old\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(s.stampPath(), []byte("old stamp"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := stamp()
	if s.complete(st) {
		t.Fatal("complete with an old stamp")
	}
	if err := s.check(context.Background()); err == nil {
		t.Fatal("check passes binaries that print no release")
	}
	// Stand-ins for the programs print what the real ones print, and the name they were run by.
	build := t.TempDir()
	releases := map[string]string{"kube": "Kubernetes " + Version, "etcd": "etcd Version: " + strings.TrimPrefix(EtcdVersion, "v")}
	for _, p := range Programs {
		script := "#!/bin/sh\necho \"$(basename \"$0\") " + releases[p.Name] + "\"\n"
		if err := os.WriteFile(filepath.Join(build, p.Name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.install(build); err != nil {
		t.Fatal(err)
	}
	if err := s.check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.stampPath(), []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	if !s.complete(st) {
		t.Fatal("not complete after install")
	}
	for _, b := range Binaries {
		target, err := os.Readlink(s.Path(b.Name))
		switch {
		case b.Program == b.Name && err == nil:
			t.Errorf("%s is a link to %s", b.Name, target)
		case b.Program != b.Name && target != b.Program:
			t.Errorf("%s links to %q (%v), want %s", b.Name, target, err, b.Program)
		}
		out, err := exec.Command(s.Path(b.Name)).Output()
		if err != nil || !strings.HasPrefix(string(out), b.Name+" ") {
			t.Errorf("%s runs as %q (%v)", b.Name, out, err)
		}
	}
	if err := os.Remove(s.Path("kube")); err != nil {
		t.Fatal(err)
	}
	if s.complete(st) {
		t.Error("complete with the program its links name gone")
	}
}

// The tools module keeps every module it shares with isthmus's go.mod at
// isthmus's version and builds the Kubernetes release of isthmus's
// client-go, so make build and the Kubernetes build share their compiled
// packages (about 900; a fifth of a cold make demo's compile time). A
// version moved on one side only would compile them twice on a fresh
// machine, and nothing else would say so.
func TestToolsModuleKeepsIsthmusVersions(t *testing.T) {
	own, err := os.ReadFile("../../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	isthmus, err := modfile.ParseLax("go.mod", own, nil)
	if err != nil {
		t.Fatal(err)
	}
	tools, err := modfile.ParseLax("module/go.mod.txt", goMod, nil)
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{}
	for _, r := range isthmus.Require {
		versions[r.Mod.Path] = r.Mod.Version
	}
	shared := 0
	for _, r := range tools.Require {
		switch r.Mod.Path {
		case "k8s.io/kubernetes":
			if r.Mod.Version != Version {
				t.Errorf("the tools module builds Kubernetes %s, Version says %s", r.Mod.Version, Version)
			}
		case "go.etcd.io/etcd/server/v3":
			if r.Mod.Version != EtcdVersion {
				t.Errorf("the tools module builds etcd %s, EtcdVersion says %s", r.Mod.Version, EtcdVersion)
			}
		}
		v, ok := versions[r.Mod.Path]
		if !ok {
			continue
		}
		shared++
		if v != r.Mod.Version {
			t.Errorf("%s is at %s in the tools module and at %s in isthmus's go.mod: go get the higher in both, then go mod tidy in both", r.Mod.Path, r.Mod.Version, v)
		}
	}
	if shared < 50 {
		t.Errorf("only %d modules in both go.mod files: the test reads the wrong ones", shared)
	}
	// Kubernetes v1.N.P's own libraries are v0.N.P.
	staging := "v0." + strings.TrimPrefix(Version, "v1.")
	if v := versions["k8s.io/client-go"]; v != staging {
		t.Errorf("isthmus's client-go is %s, the sandbox's Kubernetes %s (its client-go %s)", v, Version, staging)
	}
	for _, r := range tools.Replace {
		if strings.HasPrefix(r.Old.Path, "k8s.io/") && r.New.Version != staging {
			t.Errorf("the tools module replaces %s with %s; Kubernetes %s's is %s", r.Old.Path, r.New.Version, Version, staging)
		}
	}
}

// The Kubernetes build compiles with make build's flags and tag: with
// others, the packages the two share would be compiled twice (the go
// command's cache keys on them), which nothing else would show.
func TestBuildArgsAreMakeBuilds(t *testing.T) {
	mk, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	args := buildArgs("out")
	for _, line := range []string{"GCFLAGS := -gcflags=all=-dwarf=false", "export GOFLAGS += -tags=grpcnotrace"} {
		if !strings.Contains(string(mk), "\n"+line+"\n") {
			t.Errorf("the Makefile no longer says %q: give the Kubernetes build (buildArgs) what it says now", line)
		}
		if flag := line[strings.LastIndex(line, " ")+1:]; !slices.Contains(args, flag) {
			t.Errorf("buildArgs %v lacks make build's %s", args, flag)
		}
	}
}
