package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// examples holds the walkthrough's files, the seed's under their own names.
const examples = "../../examples/primary-remote-multinetwork"

// profileAnswer is what the demo's profile says about a call.
type profileAnswer struct {
	Name     string `json:"name"`
	ServedBy struct{ Cluster, Pod string }
	Caller   string `json:"callerXFCC"`
}

// answers parses one profile answer per line; other lines are skipped.
func answers(out string) []profileAnswer {
	var as []profileAnswer
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var a profileAnswer
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &a) == nil && a.ServedBy.Cluster != "" {
			as = append(as, a)
		}
	}
	return as
}

// TestWalkthrough replays the seed's walkthrough on the sandbox with the
// seed's files (examples/primary-remote-multinetwork/replay.sh), then
// checks what the user of the seed checks, and more.
func TestWalkthrough(t *testing.T) {
	e := upSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	replay := exec.CommandContext(ctx, "bash", filepath.Join(examples, "replay.sh"))
	replay.Env = append(os.Environ(), "ISTHMUS="+bin, "KUBECONFIG="+e.kubeconfig, "KUBECTL="+e.kubectlBin, "WORK="+t.TempDir())
	var out bytes.Buffer
	replay.Stdout, replay.Stderr = &out, &out
	start := time.Now()
	err := replay.Run()
	t.Logf("replay.sh (%s):\n%s", time.Since(start).Round(time.Second), out.String())
	if err != nil {
		t.Fatalf("replay.sh: %v", err)
	}
	for _, step := range []string{"1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "3.1", "3.2", "3.3", "4"} {
		if !strings.Contains(out.String(), "== Step "+step+":") {
			t.Errorf("replay.sh did not run step %s", step)
		}
	}
	w := &walkthrough{e: e, kc: []string{"--kubeconfig", e.kubeconfig}}
	// The areas run in this order: each starts from the mesh the ones
	// before it leave (policies stay applied, for instance).
	imagesArea(t, w)
	meshArea(t, w)
	ingressArea(t, w)
	t.Run("security: the control plane's trust boundary, attacked from sleep's pod and asked of the API servers", func(t *testing.T) {
		securityBoundary(t, e)
	})
	policyArea(t, w)
	trafficArea(t, w)
	operationsArea(t, w)
}

// walkthrough is the replayed walkthrough the areas share.
type walkthrough struct {
	e *sandboxEnv
	// kc points isthmus's own commands at the sandbox.
	kc []string
}

// sleepExec runs a shell script in sleep's container in cluster-eks.
func (w *walkthrough) sleepExec(t *testing.T, script string) string {
	t.Helper()
	o, err := w.e.kubectl("cluster-eks", "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c", script)
	if err != nil {
		t.Fatalf("%v\n%s", err, o)
	}
	return o
}

// servedBy calls profile n times from sleep (args: curl's extra
// arguments) and counts the answers by the cluster that served them.
func (w *walkthrough) servedBy(t *testing.T, n int, args string) map[string]int {
	t.Helper()
	by := map[string]int{}
	for _, a := range answers(w.sleepExec(t, fmt.Sprintf("for i in $(seq %d); do curl -sS --max-time 5 %s http://profile:8080/profile?id=4; echo; done", n, args))) {
		by[a.ServedBy.Cluster]++
	}
	return by
}
