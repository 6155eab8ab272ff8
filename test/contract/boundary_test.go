package contract

import (
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The proxy and the control plane meet only on the wire (xDS and the
// certificate API), so either can be swapped for Envoy or istiod; offline
// validation stands without the control plane. Tests included: tests of
// one against the other live here, in test/contract. The proxy's own
// binary is checked as a whole (proxyBinary).
func TestPackageBoundaries(t *testing.T) {
	rules := []struct{ from, mustNot string }{
		{"internal/proxy", "internal/discovery"},
		{"internal/discovery", "internal/proxy"},
		{"internal/proxycli", "internal/discovery"},
		{"internal/discovery", "internal/proxycli"},
		{"internal/validation", "internal/discovery"},
	}
	cmd := exec.Command("go", "list", "-json", "../../internal/...")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const module = "github.com/isthmus-mesh/isthmus/"
	dec := json.NewDecoder(out)
	seen := 0
	for {
		var p struct {
			ImportPath                         string
			Imports, TestImports, XTestImports []string
		}
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		seen++
		for _, r := range rules {
			if !under(p.ImportPath, module+r.from) {
				continue
			}
			for _, imp := range append(append(p.Imports, p.TestImports...), p.XTestImports...) {
				if under(imp, module+r.mustNot) {
					t.Errorf("%s imports %s: %s must not depend on %s (move a test of both to test/contract)", strings.TrimPrefix(p.ImportPath, module), strings.TrimPrefix(imp, module), r.from, r.mustNot)
				}
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if seen < 20 {
		t.Fatalf("go list saw %d packages; the check looked at the wrong tree", seen)
	}
	proxyBinary(t)
}

// proxyBinary: isthmus-proxy, what every sidecar and gateway runs, links
// the proxy and what it shares with the rest of isthmus, and neither the
// control plane, the installer, the sandbox nor Kubernetes' API and client
// packages: each would be pages of every pod's memory (README, "Two
// binaries"). A package of the module that is not listed here fails the
// test until it is, so that adding one to the proxy is a decision.
func proxyBinary(t *testing.T) {
	const module = "github.com/isthmus-mesh/isthmus/"
	shared := []string{"cmd/isthmus-proxy", "internal/proxy", "internal/proxycli", "internal/cliroot",
		"internal/nds", "internal/httpfield", "internal/rungroup", "internal/version"}
	forbidden := []string{"k8s.io", "sigs.k8s.io", "istio.io/client-go", "istio.io/istio"}
	// A container of the standard library alone, without init work: the
	// telemetry's cache of peer metadata.
	allowed := []string{"k8s.io/utils/lru", "k8s.io/utils/internal/third_party/forked/golang/golang-lru"}
	cmd := exec.Command("go", "list", "-deps", "../../cmd/isthmus-proxy")
	cmd.Env = append(os.Environ(), "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps cmd/isthmus-proxy: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list saw %d packages in isthmus-proxy; the check looked at the wrong tree", len(deps))
	}
	// Every Envoy message the control plane can send is registered in the
	// proxy binary: config_dump (istioctl proxy-config) renders each Any,
	// and one unknown type fails the whole dump.
	cp := exec.Command("go", "list", "-deps", "../../internal/discovery/...")
	cp.Env = cmd.Env
	cpOut, err := cp.Output()
	if err != nil {
		t.Fatalf("go list -deps internal/discovery/...: %v", err)
	}
	for _, pkg := range strings.Fields(string(cpOut)) {
		payload := false
		for _, dir := range []string{"config", "extensions", "type"} {
			payload = payload || strings.HasPrefix(pkg, "github.com/envoyproxy/go-control-plane/envoy/"+dir+"/")
		}
		if payload && !slices.Contains(deps, pkg) {
			t.Errorf("the control plane links %s and isthmus-proxy does not: its messages are unknown to the proxy's config_dump (import it in internal/proxy/admin)", pkg)
		}
	}
	for _, pkg := range deps {
		if own, ok := strings.CutPrefix(pkg, module); ok {
			if !anyUnder(own, shared) {
				t.Errorf("isthmus-proxy links %s: the proxy binary holds only %s (the rest of isthmus is the isthmus binary's; list a package here only if a proxy needs it)", own, strings.Join(shared, ", "))
			}
			continue
		}
		if anyUnder(pkg, forbidden) && !anyUnder(pkg, allowed) {
			t.Errorf("isthmus-proxy links %s: the proxy binary links nothing of Kubernetes' modules or Istio's clients (megabytes of every sidecar's memory)", pkg)
		}
	}
}

func anyUnder(pkg string, dirs []string) bool {
	for _, d := range dirs {
		if under(pkg, d) {
			return true
		}
	}
	return false
}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }

// TestProxyBinaryDropsUnusedMethods: built as make builds it (grpc's
// grpcnotrace tag, Makefile), isthmus-proxy keeps only the methods some
// code can call. A package that calls reflect's Method or MethodByName with
// a name known only at run time (text/template's and html/template's
// execution, which golang.org/x/net/trace brought in) makes the linker keep
// every exported method of every type instead: 5 MB more code in every
// sidecar's memory. The witness is the ErrorName method of Envoy's
// validation errors, which nothing calls.
func TestProxyBinaryDropsUnusedMethods(t *testing.T) {
	if testing.Short() {
		t.Skip("builds isthmus-proxy")
	}
	bin := filepath.Join(t.TempDir(), "isthmus-proxy")
	cmd := exec.Command("go", "build", "-trimpath", "-tags", "grpcnotrace", "-o", bin, "../../cmd/isthmus-proxy")
	cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/isthmus-proxy: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	validators := 0
	for _, s := range syms {
		if !strings.HasPrefix(s.Name, "github.com/envoyproxy/go-control-plane/") {
			continue
		}
		if strings.HasSuffix(s.Name, ".ValidateAll") {
			validators++
		}
		if strings.HasSuffix(s.Name, "ValidationError).ErrorName") {
			kept = append(kept, s.Name)
		}
	}
	if validators == 0 {
		t.Fatal("no ValidateAll method of Envoy's messages in isthmus-proxy: the witness looks at the wrong binary (the proxy validates every resource it receives)")
	}
	if len(kept) > 0 {
		t.Errorf("isthmus-proxy keeps %d uncalled methods such as %s: something in its closure calls reflect's MethodByName with a run-time name (go build -ldflags=-dumpdep shows what reaches it); keep it out of the proxy", len(kept), kept[0])
	}
}
