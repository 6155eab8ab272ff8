package dashboard

import (
	"sort"
	"time"
)

// Merge is the mesh as every control plane replica sees it together: each
// proxy pushes its metrics to the one replica it is connected to, so the
// workloads and rates are summed; a cluster is shown in the worst state
// any replica reports (a replica that cannot reach it is news); gateways
// are the union; an edge's source view wins over its destination view
// wherever either was reported; convergence is the slowest replica's,
// over all samples.
func Merge(replicas []*Mesh) *Mesh {
	out := &Mesh{}
	clusters := map[string]int{}
	type gwKey struct{ cluster, namespace, name string }
	gateways := map[gwKey]int{}
	workloads := map[Workload]int{}
	type edgeKey struct {
		src, dst Endpoint
		reporter string
	}
	edges := map[edgeKey]int{}
	for _, m := range replicas {
		if m == nil {
			continue
		}
		if m.Time.After(out.Time) {
			out.Time = m.Time
		}
		for _, c := range m.Clusters {
			i, ok := clusters[c.ID]
			if !ok {
				clusters[c.ID] = len(out.Clusters)
				out.Clusters = append(out.Clusters, c)
				continue
			}
			if have := &out.Clusters[i]; severity(c.State) > severity(have.State) {
				network, primary := have.Network, have.Primary
				*have = c
				have.Network, have.Primary = or(c.Network, network), c.Primary || primary
			}
		}
		for _, g := range m.Gateways {
			k := gwKey{g.Cluster, g.Namespace, g.Name}
			if i, ok := gateways[k]; ok {
				out.Gateways[i].Ready = out.Gateways[i].Ready || g.Ready
				continue
			}
			gateways[k] = len(out.Gateways)
			out.Gateways = append(out.Gateways, g)
		}
		for _, w := range m.Workloads {
			n := w.Proxies
			w.Proxies = 0
			workloads[w] += n
		}
		for _, e := range m.Edges {
			k := edgeKey{e.Source, e.Destination, e.Reporter}
			i, ok := edges[k]
			if !ok {
				edges[k] = len(out.Edges)
				out.Edges = append(out.Edges, e)
				continue
			}
			have := &out.Edges[i]
			total := have.RPS + e.RPS
			if total > 0 {
				have.ErrorRate = (have.ErrorRate*have.RPS + e.ErrorRate*e.RPS) / total
			}
			have.RPS = total
		}
		c := m.Convergence
		out.Convergence.P50Seconds = max(out.Convergence.P50Seconds, c.P50Seconds)
		out.Convergence.P99Seconds = max(out.Convergence.P99Seconds, c.P99Seconds)
		out.Convergence.Samples += c.Samples
	}
	// Each replica keeps the source's view of an edge over the
	// destination's; across replicas (the source's proxy on one, the
	// destination's on another) the same holds.
	kept := out.Edges[:0]
	for _, e := range out.Edges {
		if e.Reporter == "destination" {
			if _, seen := edges[edgeKey{e.Source, e.Destination, "source"}]; seen {
				continue
			}
		}
		kept = append(kept, e)
	}
	out.Edges = kept
	for w, n := range workloads {
		w.Proxies = n
		out.Workloads = append(out.Workloads, w)
	}
	sort.Slice(out.Workloads, func(i, j int) bool {
		a, b := out.Workloads[i], out.Workloads[j]
		return a.Cluster+"/"+a.Namespace+"/"+a.Name < b.Cluster+"/"+b.Namespace+"/"+b.Name
	})
	if out.Time.IsZero() {
		out.Time = time.Now().UTC()
	}
	return out
}

// severity orders states from healthy to broken.
func severity(s State) int {
	switch s {
	case StateSynced:
		return 0
	case StateSyncing:
		return 1
	case StateTimeout:
		return 2
	case StateStale:
		return 3
	default:
		return 4
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
