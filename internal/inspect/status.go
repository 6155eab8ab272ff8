package inspect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// MonitoringPort is the control plane's 15014 (/debug/syncz, /version).
const MonitoringPort = 15014

// ProxyStatus is one proxy as the control plane's /debug/syncz reports
// it (istiod's JSON), and the control plane pod that serves it.
type ProxyStatus struct {
	xds.SyncStatus
	Istiod string `json:"istiod"`
}

// Name is istioctl's POD.NAMESPACE.
func (p ProxyStatus) Name() string { return p.ProxyID }

// Sync is the state of one xDS type (cds, lds, eds, rds): SYNCED when
// the proxy acknowledged what it was last sent.
func (p ProxyStatus) Sync(typ string) string {
	sent, acked := p.Versions(typ)
	switch {
	case p.Nacked[typ] != "":
		return "NACKED"
	case sent == "":
		return "NOT SENT"
	case acked == sent:
		return "SYNCED"
	case acked == "":
		return "STALE (Never Acknowledged)"
	}
	return "STALE"
}

// Versions are what the proxy was last sent of one xDS type (cds, lds,
// eds, rds) and what it acknowledged.
func (p ProxyStatus) Versions(typ string) (sent, acked string) {
	switch typ {
	case "cds":
		return p.ClusterSent, p.ClusterAcked
	case "lds":
		return p.ListenerSent, p.ListenerAcked
	case "eds":
		return p.EndpointSent, p.EndpointAcked
	case "rds":
		return p.RouteSent, p.RouteAcked
	}
	return "", ""
}

// Synced says whether every type that was sent is acknowledged.
func (p ProxyStatus) Synced() bool {
	for _, t := range []string{"cds", "lds", "eds", "rds"} {
		if s := p.Sync(t); s != "SYNCED" && s != "NOT SENT" {
			return false
		}
	}
	return p.Sync("cds") == "SYNCED" && p.Sync("lds") == "SYNCED"
}

// ControlPlanes are the running istiod pods of the mesh namespace.
func (c *Cluster) ControlPlanes(ctx context.Context, namespace string) ([]corev1.Pod, error) {
	pods, err := c.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no running control plane (pods labelled app=istiod) in namespace %s of this cluster; run proxy-status against the primary cluster", namespace)
	}
	return out, nil
}

// Status asks every control plane pod for its proxies.
func (c *Cluster) Status(ctx context.Context, namespace string) ([]ProxyStatus, error) {
	pods, err := c.ControlPlanes(ctx, namespace)
	if err != nil {
		return nil, err
	}
	var out []ProxyStatus
	var errs []error
	for i := range pods {
		b, err := c.Get(ctx, &pods[i], MonitoringPort, "/debug/syncz")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var list []ProxyStatus
		if err := json.Unmarshal(b, &list); err != nil {
			errs = append(errs, fmt.Errorf("%s: /debug/syncz: %w", pods[i].Name, err))
			continue
		}
		for _, p := range list {
			p.Istiod = pods[i].Name
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ClusterID != out[j].ClusterID {
			return out[i].ClusterID < out[j].ClusterID
		}
		return out[i].Name() < out[j].Name()
	})
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// WriteStatus prints istioctl's proxy-status table.
func WriteStatus(w io.Writer, list []ProxyStatus) error {
	rows := make([][]string, 0, len(list))
	for _, p := range list {
		rows = append(rows, []string{p.Name(), p.ClusterID, p.Sync("cds"), p.Sync("lds"), p.Sync("eds"), p.Sync("rds"), p.Istiod, dash(p.IstioVersion)})
	}
	return table(w, "NAME\tCLUSTER\tCDS\tLDS\tEDS\tRDS\tISTIOD\tVERSION", rows)
}

// ControlPlaneVersion is what an istiod pod's /version says.
type ControlPlaneVersion struct {
	Pod     string `json:"pod"`
	Version string `json:"version"`
	Cluster string `json:"cluster"`
}

// Versions asks every control plane pod for its version.
func (c *Cluster) Versions(ctx context.Context, namespace string) ([]ControlPlaneVersion, error) {
	answers, pods, err := askControlPlanes[ControlPlaneVersion](ctx, c, namespace, "/version")
	for i := range answers {
		answers[i].Pod = pods[i]
	}
	return answers, err
}

// askControlPlanes GETs path from every control plane pod's monitoring
// port and decodes each answer; pods names the pod of each.
func askControlPlanes[T any](ctx context.Context, c *Cluster, namespace, path string) (answers []T, pods []string, err error) {
	running, err := c.ControlPlanes(ctx, namespace)
	if err != nil {
		return nil, nil, err
	}
	for i := range running {
		b, err := c.Get(ctx, &running[i], MonitoringPort, path)
		if err != nil {
			return nil, nil, err
		}
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", running[i].Name, path, err)
		}
		answers, pods = append(answers, v), append(pods, running[i].Name)
	}
	return answers, pods, nil
}

// Convergence is how fast changes reached the proxies of one control
// plane pod: from a change to each proxy's acknowledgement.
type Convergence struct {
	xds.Convergence
	Istiod string
}

// Convergence asks every control plane pod for its convergence figures.
func (c *Cluster) Convergence(ctx context.Context, namespace string) ([]Convergence, error) {
	answers, pods, err := askControlPlanes[xds.Convergence](ctx, c, namespace, "/debug/convergence")
	out := make([]Convergence, len(answers))
	for i := range answers {
		out[i] = Convergence{Convergence: answers[i], Istiod: pods[i]}
	}
	return out, err
}

// WriteConvergence prints one line per control plane pod below
// proxy-status's table.
func WriteConvergence(w io.Writer, list []Convergence) {
	for _, c := range list {
		if c.Samples == 0 {
			fmt.Fprintf(w, "convergence (%s): no change pushed yet\n", c.Istiod)
			continue
		}
		fmt.Fprintf(w, "convergence (%s): change to proxy acknowledgement p50 %s, p99 %s over the last %d\n",
			c.Istiod, c.P50.Round(time.Millisecond/10), c.P99.Round(time.Millisecond/10), c.Samples)
	}
}
