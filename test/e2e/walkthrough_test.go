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

// guideScript is every ```sh block of a markdown file, in order: what a
// reader runs (```shell blocks need a real cloud and are left out).
func guideScript(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	in := false
	for line := range strings.Lines(string(b)) {
		switch {
		case !in && strings.TrimSpace(line) == "```sh":
			in = true
		case in && strings.TrimSpace(line) == "```":
			in = false
		case in:
			script.WriteString(line)
		}
	}
	if script.Len() == 0 {
		t.Fatalf("%s has no sh blocks", path)
	}
	return script.String()
}

// TestWalkthrough replays the seed's walkthrough on the sandbox with the
// seed's files as the real-cluster guide says
// (examples/primary-remote-multinetwork/real-clusters.md: build and push
// the images to a registry of one's own, replay.sh with that hub, each
// east-west gateway fenced to the other cluster), then checks what the
// user of the seed checks, and more.
func TestWalkthrough(t *testing.T) {
	e := upSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	work := t.TempDir()
	images := filepath.Join(work, "image")
	// The sandbox's registry under a name of its own (not docker.io, which
	// it also stands in for); crane talks plain HTTP to it.
	prelude := `set -euo pipefail
isthmus() { "$ISTHMUS" "$@"; }
kubectl() { "$KUBECTL" "$@"; }
crane() { go run github.com/google/go-containerregistry/cmd/crane@v0.22.1 --insecure "$@"; }
`
	guide := exec.CommandContext(ctx, "bash", "-c", prelude+guideScript(t, filepath.Join(examples, "real-clusters.md")))
	guide.Dir = "../.."
	guide.Env = append(os.Environ(), "ISTHMUS="+bin, "KUBECONFIG="+e.kubeconfig, "KUBECTL="+e.kubectlBin, "WORK="+work,
		"HUB="+walkthroughHub, "TAG=e2e", "IMAGE_DIR="+images, "PRIMARY=cluster-eks", "REMOTE=cluster-aks",
		// Each cluster's egress is its node address (198.18.N.1).
		"EKS_GATEWAY_FROM=198.18.2.1/32", "AKS_GATEWAY_FROM=198.18.1.1/32")
	var out bytes.Buffer
	guide.Stdout, guide.Stderr = &out, &out
	start := time.Now()
	err := guide.Run()
	t.Logf("real-clusters.md's commands (%s):\n%s", time.Since(start).Round(time.Second), out.String())
	if err != nil {
		t.Fatalf("real-clusters.md's commands: %v", err)
	}
	for _, step := range []string{"1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "3.1", "3.2", "3.3", "4"} {
		if !strings.Contains(out.String(), "== Step "+step+":") {
			t.Errorf("replay.sh did not run step %s", step)
		}
	}
	w := &walkthrough{e: e, kc: []string{"--kubeconfig", e.kubeconfig}, images: images}
	// The areas run in this order: each starts from the mesh the ones
	// before it leave (policies stay applied, for instance).
	// WALKTHROUGH_AREAS=mesh,istioctl runs only those after the replay
	// (to work on one area, and for make bench's resilience figures).
	only := map[string]bool{}
	for _, a := range strings.Split(os.Getenv("WALKTHROUGH_AREAS"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			only[a] = true
		}
	}
	for _, a := range []struct {
		name string
		run  func(*testing.T, *walkthrough)
	}{
		{"images", imagesArea}, {"mesh", meshArea}, {"fence", fenceArea}, {"ingress", ingressArea},
		{"security", func(t *testing.T, w *walkthrough) {
			t.Run("security: the control plane's trust boundary, attacked from sleep's pod and asked of the API servers", func(t *testing.T) {
				securityBoundary(t, w.e)
			})
		}},
		{"policy", policyArea}, {"traffic", trafficArea}, {"kinds", kindsArea}, {"vm", vmArea}, {"egress", egressArea},
		{"istiod", istiodArea}, {"istioctl", istioctlArea}, {"telemetry", telemetryArea}, {"tracing", tracingArea},
		{"operations", operationsArea}, {"resilience", resilienceArea}, {"check", checkArea}, {"dashboard", dashboardArea}, {"clusters", clustersArea},
		// cloud runs last: the old address of cluster-eks's gateway stops serving.
		{"cloud", cloudArea},
	} {
		if len(only) == 0 || only[a.name] {
			a.run(t, w)
		}
	}
}

// walkthrough is the replayed walkthrough the areas share.
type walkthrough struct {
	e *sandboxEnv
	// kc points isthmus's own commands at the sandbox.
	kc []string
	// images is the make image output the mesh was installed from.
	images string
}

// walkthroughHub is where the walkthrough's images are pushed and pulled
// from: the sandbox's registry under a name of its own, as a platform
// team's registry would be.
const walkthroughHub = "198.18.0.2:5000/mesh"

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
