package network

import (
	"fmt"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// BenchmarkSplitHorizon: one service of 10,000 endpoints, half on another
// network behind its gateway, as a sidecar's EDS sees it on every push.
func BenchmarkSplitHorizon(b *testing.B) {
	gws := []registry.Gateway{{Network: "network2", Cluster: "cluster-aks", Address: "198.18.2.10", Port: 15443}}
	eps := make([]registry.Endpoint, 0, 10000)
	for i := range 10000 {
		network, cluster := "network1", "cluster-eks"
		if i%2 == 1 {
			network, cluster = "network2", "cluster-aks"
		}
		e := ep(fmt.Sprintf("100.%d.%d.%d", 64+i%2, i/256%256, i%256), network, cluster, true)
		e.Locality = registry.Locality{Region: "r" + fmt.Sprint(i%3)}
		eps = append(eps, e)
	}
	view := View{Network: "network1"}
	b.ReportAllocs()
	for b.Loop() {
		if out := SplitHorizon(view, eps, "http", gws, nil); len(out) == 0 {
			b.Fatal("no endpoints")
		}
	}
}
