package discovery

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/dashboard"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/discovery/traffic"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// meshView is the live topology page's data: what this control plane
// knows of the mesh now (every replica knows the same clusters and
// gateways; the traffic is what the proxies connected to it pushed, so
// the page reads a replica that serves a share of them).
type meshView struct {
	cfg     Config
	local   *meshCluster
	secrets *remotesecret.Controller
	reg     *registry.Registry
	xds     *xds.Server
	traffic *traffic.Graph
}

func (v meshView) Mesh(context.Context) (*dashboard.Mesh, error) {
	m := &dashboard.Mesh{Time: time.Now().UTC()}
	networks := map[string]string{v.cfg.ClusterID: v.cfg.Network}
	type gwKey struct{ cluster, service string }
	gws := map[gwKey]*dashboard.Gateway{}
	for _, g := range v.reg.Gateways() {
		if g.Cluster == "" {
			continue // meshNetworks' gateways: addresses without a cluster
		}
		if networks[g.Cluster] == "" {
			networks[g.Cluster] = g.Network
		}
		k := gwKey{g.Cluster, g.Service}
		gw := gws[k]
		if gw == nil {
			ns, name, _ := strings.Cut(g.Service, "/")
			gw = &dashboard.Gateway{Cluster: g.Cluster, Network: g.Network, Namespace: ns, Name: name,
				Ready: v.ready(g.Cluster, name+"."+ns+".svc."+v.cfg.Domain)}
			gws[k] = gw
		}
		gw.Addresses = append(gw.Addresses, g.Address)
	}
	for _, gw := range gws {
		m.Gateways = append(m.Gateways, *gw)
	}
	sort.Slice(m.Gateways, func(i, j int) bool {
		return m.Gateways[i].Cluster+m.Gateways[i].Name < m.Gateways[j].Cluster+m.Gateways[j].Name
	})
	m.Clusters = append(m.Clusters, dashboard.Cluster{ID: v.cfg.ClusterID, Network: v.cfg.Network, Primary: true,
		State: dashboard.State(syncState(v.local.Synced()))})
	for _, s := range v.secrets.Statuses() {
		m.Clusters = append(m.Clusters, dashboard.Cluster{ID: s.ID, Network: networks[s.ID], State: dashboard.State(s.State),
			StaleSince: s.StaleSince, Error: s.Error})
	}
	for w, n := range v.traffic.Reporters() {
		m.Workloads = append(m.Workloads, dashboard.Workload{Cluster: w.Cluster, Namespace: w.Namespace, Name: w.Name, Proxies: n})
	}
	sort.Slice(m.Workloads, func(i, j int) bool {
		a, b := m.Workloads[i], m.Workloads[j]
		return a.Cluster+"/"+a.Namespace+"/"+a.Name < b.Cluster+"/"+b.Namespace+"/"+b.Name
	})
	for _, e := range v.traffic.Edges() {
		m.Edges = append(m.Edges, dashboard.Edge{
			Source:      dashboard.Endpoint{Cluster: e.Source.Cluster, Namespace: e.Source.Namespace, Workload: known(e.Source.Name)},
			Destination: dashboard.Endpoint{Cluster: e.Destination.Cluster, Namespace: e.Destination.Namespace, Workload: known(e.Destination.Name), Service: e.Service},
			RPS:         e.RPS, ErrorRate: e.ErrorRate, Reporter: e.Reporter})
	}
	c := v.xds.Convergence()
	m.Convergence = dashboard.Convergence{P50Seconds: c.P50.Seconds(), P99Seconds: c.P99.Seconds(), Samples: c.Samples}
	return m, nil
}

// ready reports whether a gateway's Service has a ready endpoint in its cluster.
func (v meshView) ready(cluster, hostname string) bool {
	for _, ep := range v.reg.Endpoints(hostname) {
		if ep.Cluster == cluster && ep.Ready {
			return true
		}
	}
	return false
}

// known maps Istio's "unknown" (a peer without a sidecar) to the page's
// empty workload.
func known(name string) string {
	if name == "unknown" {
		return ""
	}
	return name
}
