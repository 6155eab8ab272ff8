package inspect

import (
	"context"
	"io"

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
		rows = append(rows, []string{r.ID, r.Secret, r.State, r.Istiod, r.Error})
	}
	return table(w, "NAME\tSECRET\tSTATUS\tISTIOD\tERROR", rows)
}
