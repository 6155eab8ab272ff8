package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/test/istiod/launch"
)

// controlPlane is one of the two control planes measured, run out of
// cluster on this host against the sandbox's API servers.
type controlPlane struct {
	name string
	// xds is its plaintext ADS address, pprof its profile endpoint (""
	// when it has none here), metrics its Prometheus page (both expose
	// the Go runtime's memory there).
	xds, pprof, metrics string
	*launch.Process
}

// waitReady waits for it to serve.
func (p *controlPlane) waitReady(timeout time.Duration) error {
	if err := p.WaitReady(timeout); err != nil {
		return fmt.Errorf("%s %w; its log ends:\n%s", p.name, err, p.logTail())
	}
	return nil
}

func (p *controlPlane) logTail() string {
	b, _ := os.ReadFile(p.Log)
	return tailOf(string(b), 3000)
}

// isthmusControlPlane runs `isthmus discovery` for the first cluster with
// an admin kubeconfig (it keeps its CA Secret and leader Lease there) and
// remote secrets for the others, as the walkthrough installs it.
func isthmusControlPlane(ctx context.Context, dir string, clusters []cluster) (*controlPlane, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	primary := clusters[0]
	kc, err := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", primary.name).Output()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig of %s: %w", primary.name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kubeconfig"), kc, 0o600); err != nil {
		return nil, err
	}
	for _, r := range clusters[1:] {
		rk, err := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", r.name).Output()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig of %s: %w", r.name, err)
		}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-" + r.name, Namespace: "istio-system",
			Labels: map[string]string{"istio/multiCluster": "true"}}, StringData: map[string]string{r.name: string(rk)}}
		if _, err := primary.cs.CoreV1().Secrets("istio-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	return &controlPlane{
		name: "isthmus", xds: "127.0.0.1:25010", pprof: "http://127.0.0.1:25014/debug/pprof/", metrics: "http://127.0.0.1:25014/metrics",
		Process: &launch.Process{Dir: dir, Log: filepath.Join(dir, "log"), Ready: "http://127.0.0.1:25014/ready",
			Argv: []string{*isthmusBin, "discovery", "--kubeconfig", filepath.Join(dir, "kubeconfig"), "--cluster-id", primary.name,
				"--network", primary.network, "--xds-addr", "127.0.0.1:25010", "--secure-addr", "127.0.0.1:25012",
				"--webhook-addr", "127.0.0.1:25017", "--monitoring-addr", "127.0.0.1:25014"},
			Env: []string{"GOMAXPROCS=2"}},
	}, nil
}

// istiodControlPlane runs Istio's own pilot-discovery for the first
// cluster, read-only in every cluster (test/istiod/launch).
func istiodControlPlane(ctx context.Context, dir string, clusters []cluster) (*controlPlane, error) {
	bin, err := launch.Binary(ctx, "")
	if err != nil {
		return nil, err
	}
	o := &launch.Istiod{Binary: bin, Dir: dir, AdminKubeconfig: *kubeconfig,
		Name: "istiod-bench", Role: "istiod-bench", CAName: "cpscale",
		Mesh: "trustDomain: cluster.local\n", MeshNetworks: "networks: {}\n",
		Addrs: launch.Addrs{GRPC: "127.0.0.1:26010", HTTP: "127.0.0.1:26080",
			SecureGRPC: "127.0.0.1:26012", HTTPS: "127.0.0.1:26017", Monitoring: "127.0.0.1:26014"}}
	for _, c := range clusters {
		o.Clusters = append(o.Clusters, launch.Cluster{ID: c.name, Client: c.cs})
	}
	if err := o.Prepare(ctx); err != nil {
		return nil, err
	}
	return &controlPlane{
		name: "istiod", xds: o.Addrs.GRPC, pprof: "http://" + o.Addrs.HTTP + "/debug/pprof/", metrics: "http://" + o.Addrs.Monitoring + "/metrics",
		Process: &launch.Process{Dir: dir, Log: filepath.Join(dir, "log"), Ready: o.ReadyURL(),
			Argv: o.Argv(), Env: append(append([]string{"GOMAXPROCS=2"}, o.Env()...), extraEnv(*istiodEnv)...)},
	}, nil
}

// extraEnv is a --istiod-env list as environment entries.
func extraEnv(list string) []string {
	if list == "" {
		return nil
	}
	return strings.Split(list, ",")
}
