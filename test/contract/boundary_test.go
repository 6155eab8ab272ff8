package contract

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// The proxy and the control plane meet only on the wire (xDS and the
// certificate API), so either can be swapped for Envoy or istiod; offline
// validation stands without the control plane. Tests included: tests of
// one against the other live here, in test/contract.
func TestPackageBoundaries(t *testing.T) {
	rules := []struct{ from, mustNot string }{
		{"internal/proxy", "internal/discovery"},
		{"internal/discovery", "internal/proxy"},
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
}

func under(pkg, dir string) bool { return pkg == dir || strings.HasPrefix(pkg, dir+"/") }
