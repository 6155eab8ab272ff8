package inspect

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
)

// RemoteCluster is one cluster a control plane pod watches, as its
// /debug/clusterz says.
type RemoteCluster struct {
	remotesecret.Status
	Istiod string `json:"istiod"`
}

// RemoteClusters asks every control plane pod which clusters it watches
// and whether each is synced (istioctl remote-clusters).
func (c *Cluster) RemoteClusters(ctx context.Context, namespace string) ([]RemoteCluster, error) {
	answers, pods, err := askControlPlanes[[]remotesecret.Status](ctx, c, namespace, "/debug/clusterz")
	var out []RemoteCluster
	for i, list := range answers {
		for _, s := range list {
			out = append(out, RemoteCluster{Status: s, Istiod: pods[i]})
		}
	}
	return out, err
}

// WriteRemoteClusters prints istioctl's remote-clusters table (the
// control plane's own cluster has no secret); a cluster in error says why
// in a column of its own.
func WriteRemoteClusters(w io.Writer, list []RemoteCluster) error {
	rows := make([][]string, 0, len(list))
	for _, r := range list {
		msg := r.Error
		if msg == "" {
			msg = r.staleness()
		}
		rows = append(rows, []string{r.ID, r.Secret, r.State, r.Istiod, msg})
	}
	return table(w, "NAME\tSECRET\tSTATUS\tISTIOD\tERROR", rows)
}

// staleness says since when a cluster's API server has not answered ("":
// it answers).
func (r RemoteCluster) staleness() string {
	if r.StaleSince == nil {
		return ""
	}
	return fmt.Sprintf("API server not answering since %s (%s): its last-known endpoints are served",
		r.StaleSince.UTC().Format(time.TimeOnly), time.Since(*r.StaleSince).Round(time.Second))
}

// WriteStale prints one line per stale cluster (the same cluster seen by
// several control plane pods once), after proxy-status's table: proxies
// of that cluster keep their configuration, but it no longer follows the
// cluster's changes.
func WriteStale(w io.Writer, list []RemoteCluster) {
	seen := map[string]bool{}
	for _, r := range list {
		if r.StaleSince == nil || seen[r.ID] {
			continue
		}
		seen[r.ID] = true
		fmt.Fprintf(w, "cluster %s is stale: %s\n", r.ID, r.staleness())
	}
}
