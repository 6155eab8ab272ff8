package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/istiocrd"
)

// controlPlane is an `isthmus discovery` process run out of cluster with
// one cluster's credentials, as a developer runs it.
type controlPlane struct {
	xds, secure, monitoring string
	// serverName is on the certificate of the secure port.
	serverName string
	// log is the file its output goes to.
	log  string
	stop func()
}

// startDiscovery runs the control plane for cluster on loopback and waits until it is ready.
func (e *sandboxEnv) startDiscovery(t *testing.T, cluster, network string, extra ...string) *controlPlane {
	t.Helper()
	return e.startDiscoveryOn(t, "127.0.0.1", cluster, network, extra...)
}

// startDiscoveryOn listens on host (198.18.0.1 is where the sandbox's pods
// reach the host).
func (e *sandboxEnv) startDiscoveryOn(t *testing.T, host, cluster, network string, extra ...string) *controlPlane {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), cluster+".kubeconfig")
	r := isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "kubeconfig", "--cluster", cluster)
	if err := os.WriteFile(kubeconfig, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	cp := &controlPlane{
		xds:        fmt.Sprintf("%s:%d", host, freePort(t)),
		secure:     fmt.Sprintf("%s:%d", host, freePort(t)),
		monitoring: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
	}
	cp.serverName = "istiod.istio-system.svc"
	for i, a := range extra {
		if a == "--namespace" && i+1 < len(extra) {
			cp.serverName = "istiod." + extra[i+1] + ".svc"
		}
	}
	logPath := filepath.Join(t.TempDir(), "discovery.log")
	cp.log = logPath
	logf, _ := os.Create(logPath)
	// Every port its own, so several control planes can run at once; a
	// later --webhook-addr in extra wins.
	args := append([]string{"discovery", "--kubeconfig", kubeconfig, "--cluster-id", cluster, "--network", network,
		"--xds-addr", cp.xds, "--secure-addr", cp.secure, "--monitoring-addr", cp.monitoring, "--remote-sync-timeout", "5s",
		"--webhook-addr", fmt.Sprintf("%s:%d", host, freePort(t))}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	cp.stop = func() {
		once.Do(func() {
			// A clean stop, as Kubernetes stops a pod: the control plane
			// hands its leader Lease over, so the next one in the same
			// namespace leads at once.
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			b, _ := os.ReadFile(logPath)
			t.Logf("discovery %v log:\n%s", extra, b)
		})
	}
	t.Cleanup(cp.stop)
	eventually(t, "control plane of "+cluster+" ready", func() bool { return cp.get("/ready") != "" })
	return cp
}

// get fetches a monitoring path; "" unless it answered 200.
func (cp *controlPlane) get(path string) string {
	resp, err := http.Get("http://" + cp.monitoring + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return ""
	}
	return string(b)
}

// installIstioCRDs applies the CRDs the control plane reads (embedded in
// the binary) and waits until the API serves them.
func (e *sandboxEnv) installIstioCRDs(t *testing.T, cluster string) {
	t.Helper()
	crds := filepath.Join(t.TempDir(), "crds.yaml")
	if err := os.WriteFile(crds, istiocrd.YAML, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := e.kubectl(cluster, "", "apply", "--server-side", "-f", crds); err != nil {
		t.Fatalf("install Istio CRDs: %v %s", err, out)
	}
	eventually(t, "Istio CRDs established", func() bool {
		_, err := e.kubectl(cluster, "", "get", "gateways.networking.istio.io", "-A")
		return err == nil
	})
}
