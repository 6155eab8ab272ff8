package dashboard

import (
	"math"
	"testing"
	"time"
)

func TestMergeReplicas(t *testing.T) {
	stale := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	sleep := Endpoint{Cluster: "cluster-eks", Namespace: "multicluster", Workload: "sleep"}
	v2 := Endpoint{Cluster: "cluster-aks", Namespace: "multicluster", Workload: "profile-v2", Service: "profile.multicluster.svc.cluster.local"}
	a := &Mesh{Time: stale,
		Clusters:    []Cluster{{ID: "cluster-eks", Network: "network1", Primary: true, State: StateSynced}, {ID: "cluster-aks", Network: "network2", State: StateSynced}},
		Gateways:    []Gateway{{Cluster: "cluster-aks", Namespace: "istio-system", Name: "istio-eastwestgateway", Addresses: []string{"198.18.2.10"}}},
		Workloads:   []Workload{{Cluster: "cluster-eks", Namespace: "multicluster", Name: "sleep", Proxies: 1}},
		Edges:       []Edge{{Source: sleep, Destination: v2, RPS: 10, ErrorRate: 0, Reporter: "source"}},
		Convergence: Convergence{P50Seconds: 0.01, P99Seconds: 0.05, Samples: 10}}
	b := &Mesh{Time: stale.Add(time.Second),
		Clusters:  []Cluster{{ID: "cluster-eks", Network: "network1", Primary: true, State: StateSynced}, {ID: "cluster-aks", State: StateStale, StaleSince: &stale}},
		Gateways:  []Gateway{{Cluster: "cluster-aks", Namespace: "istio-system", Name: "istio-eastwestgateway", Addresses: []string{"198.18.2.10"}, Ready: true}},
		Workloads: []Workload{{Cluster: "cluster-eks", Namespace: "multicluster", Name: "sleep", Proxies: 2}},
		Edges: []Edge{{Source: sleep, Destination: v2, RPS: 30, ErrorRate: 0.1, Reporter: "source"},
			// profile-v2's sidecar on this replica saw the calls too.
			{Source: sleep, Destination: v2, RPS: 39, Reporter: "destination"}},
		Convergence: Convergence{P50Seconds: 0.02, P99Seconds: 0.03, Samples: 5}}
	m := Merge([]*Mesh{a, nil, b})
	if !m.Time.Equal(b.Time) {
		t.Errorf("time %v, want the latest replica's", m.Time)
	}
	if len(m.Clusters) != 2 || m.Clusters[1].State != StateStale || m.Clusters[1].Network != "network2" || m.Clusters[1].StaleSince == nil {
		t.Errorf("clusters %+v: want cluster-aks stale (one replica says so) and still on network2", m.Clusters)
	}
	if len(m.Gateways) != 1 || !m.Gateways[0].Ready {
		t.Errorf("gateways %+v, want one, ready (one replica sees a ready pod)", m.Gateways)
	}
	if len(m.Workloads) != 1 || m.Workloads[0].Proxies != 3 {
		t.Errorf("workloads %+v, want sleep with its 3 proxies over both replicas", m.Workloads)
	}
	if len(m.Edges) != 1 || m.Edges[0].RPS != 40 || math.Abs(m.Edges[0].ErrorRate-3.0/40) > 1e-9 {
		t.Errorf("edges %+v, want 40 rps with 3 of them errors (the source's view, not also the destination's)", m.Edges)
	}
	if c := m.Convergence; c.P50Seconds != 0.02 || c.P99Seconds != 0.05 || c.Samples != 15 {
		t.Errorf("convergence %+v, want the slowest replica's quantiles over 15 samples", c)
	}
}
