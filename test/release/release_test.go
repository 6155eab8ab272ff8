// Package release checks what make release ships: the isthmus binary
// cross-builds for Linux, macOS and Windows, each file is an executable for
// its system and architecture, and only the Linux one holds the proxy and
// the sandbox. (isthmus-proxy is not released on its own: pods get it in
// the image, and `isthmus proxy` is the same commands.)
package release

import (
	"debug/elf"
	"debug/macho"
	"debug/pe"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

const module = "github.com/isthmus-mesh/isthmus"

// linuxOnly are symbols of the Linux-only commands (internal/cli's
// *_linux.go wiring: the proxy's tree is internal/proxycli's) and prefixes
// of the packages only they use.
var linuxOnly = []string{
	module + "/internal/proxycli.Command",
	module + "/internal/cli.newSandboxCmd",
	module + "/internal/proxycli.",
	module + "/internal/sandbox.",
	module + "/internal/sandbox/",
	module + "/internal/proxy.",
	module + "/internal/proxy/origdst.",
	module + "/internal/proxy/rawtcp.",
	module + "/internal/proxy/iptables.",
}

// operatorCommands must be in every build's help.
var operatorCommands = []string{"install", "manifest", "uninstall", "analyze", "proxy-config", "proxy-status", "create-remote-secret", "gateway", "version", "demo-app", "discovery", "x"}

func TestCrossBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-builds the binary six times")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go on PATH")
	}
	out, err := exec.Command(goTool, "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "go.mod") {
		t.Fatalf("go env GOMOD: %q, %v", out, err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	const version = "v0.0.0-releasetest"
	for _, target := range []struct{ goos, goarch string }{
		{"linux", "amd64"}, {"linux", "arm64"},
		{"darwin", "amd64"}, {"darwin", "arm64"},
		{"windows", "amd64"}, {"windows", "arm64"},
	} {
		t.Run(target.goos+"-"+target.goarch, func(t *testing.T) {
			bin := filepath.Join(t.TempDir(), "isthmus-"+target.goos+"-"+target.goarch)
			if target.goos == "windows" {
				bin += ".exe"
			}
			// make release's flags; no -s, so the symbol table stays to look at.
			build := exec.Command(goTool, "build", "-trimpath", "-gcflags=all=-dwarf=false", "-ldflags", "-w -X "+module+"/internal/version.Version="+version, "-o", bin, "./cmd/isthmus")
			build.Dir = root
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+target.goos, "GOARCH="+target.goarch)
			start := time.Now()
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build for %s/%s: %v\n%s", target.goos, target.goarch, err, out)
			}
			t.Logf("built in %v", time.Since(start).Round(time.Millisecond))

			symbols := checkFormat(t, bin, target.goos, target.goarch)
			if len(symbols) < 1000 {
				t.Fatalf("only %d symbols: the check below would prove nothing", len(symbols))
			}
			for _, want := range []string{module + "/internal/cli.newInstallCmd", module + "/internal/cli.newAnalyzeCmd", module + "/internal/cli.newProxyConfigCmd"} {
				if !symbols[want] {
					t.Errorf("no symbol %s: the operator commands are missing", want)
				}
			}
			for name := range symbols {
				for _, p := range linuxOnly {
					if strings.HasPrefix(name, p) && target.goos != "linux" {
						t.Errorf("the %s build holds %s: Linux-only code is back in the cross-platform commands", target.goos, name)
					}
				}
			}
			if target.goos == "linux" {
				for _, want := range linuxOnly[:2] {
					if !symbols[want] {
						t.Errorf("the Linux build has no %s", want)
					}
				}
			}
			if target.goos == runtime.GOOS && target.goarch == runtime.GOARCH {
				runHost(t, bin, version)
			}
		})
	}
}

// checkFormat opens bin as its system's executable format, checks its
// machine, and returns its symbol names.
func checkFormat(t *testing.T, bin, goos, goarch string) map[string]bool {
	t.Helper()
	symbols := map[string]bool{}
	switch goos {
	case "linux":
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatalf("not ELF: %v", err)
		}
		defer f.Close()
		want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[goarch]
		if f.Type != elf.ET_EXEC || f.Machine != want {
			t.Fatalf("ELF %v %v, want ET_EXEC %v", f.Type, f.Machine, want)
		}
		syms, err := f.Symbols()
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range syms {
			symbols[s.Name] = true
		}
	case "darwin":
		f, err := macho.Open(bin)
		if err != nil {
			t.Fatalf("not Mach-O: %v", err)
		}
		defer f.Close()
		want := map[string]macho.Cpu{"amd64": macho.CpuAmd64, "arm64": macho.CpuArm64}[goarch]
		if f.Type != macho.TypeExec || f.Cpu != want {
			t.Fatalf("Mach-O %v %v, want executable %v", f.Type, f.Cpu, want)
		}
		if f.Symtab == nil {
			t.Fatal("Mach-O without a symbol table")
		}
		for _, s := range f.Symtab.Syms {
			// Mach-O prefixes C-level names with an underscore.
			symbols[strings.TrimPrefix(s.Name, "_")] = true
		}
	case "windows":
		f, err := pe.Open(bin)
		if err != nil {
			t.Fatalf("not PE: %v", err)
		}
		defer f.Close()
		want := map[string]uint16{"amd64": pe.IMAGE_FILE_MACHINE_AMD64, "arm64": pe.IMAGE_FILE_MACHINE_ARM64}[goarch]
		if f.Machine != want || f.Characteristics&pe.IMAGE_FILE_EXECUTABLE_IMAGE == 0 {
			t.Fatalf("PE machine %#x characteristics %#x, want an executable for %#x", f.Machine, f.Characteristics, want)
		}
		for _, s := range f.Symbols {
			symbols[s.Name] = true
		}
	}
	return symbols
}

// runHost runs the binary built for this machine: its version, and its
// help listing the operator commands and, on Linux, proxy and sandbox.
func runHost(t *testing.T, bin, version string) {
	t.Helper()
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "client version: "+version) {
		t.Errorf("isthmus version: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("isthmus --help: %v\n%s", err, out)
	}
	listed := map[string]bool{}
	inCommands := false
	for _, line := range strings.Split(string(out), "\n") {
		switch {
		case strings.HasPrefix(line, "Available Commands:"):
			inCommands = true
		case inCommands && strings.HasPrefix(line, "  "):
			listed[strings.Fields(line)[0]] = true
		case inCommands:
			inCommands = false
		}
	}
	want := append([]string{}, operatorCommands...)
	if runtime.GOOS == "linux" {
		want = append(want, "proxy", "sandbox")
	}
	for _, c := range want {
		if !listed[c] {
			t.Errorf("isthmus --help does not list %s:\n%s", c, out)
		}
	}
}
