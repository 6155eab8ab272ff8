package xds

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// benchRegistry: 2 clusters on 2 networks, 1000 services, 10,000 endpoints.
func benchRegistry() *registry.Registry {
	reg := registry.New()
	for c, cl := range []string{"cluster-eks", "cluster-aks"} {
		reg.SetGateways(cl, []registry.Gateway{{Network: fmt.Sprintf("network%d", c+1), Cluster: cl, Address: fmt.Sprintf("198.18.%d.10", c+1), Port: 15443}})
		for i := range 500 {
			host := fmt.Sprintf("svc-%d.ns-%d.svc.cluster.local", i, i%20)
			reg.SetService(cl, host, &registry.Service{Namespace: fmt.Sprintf("ns-%d", i%20), Name: fmt.Sprintf("svc-%d", i), Hostname: host,
				Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
			var eps []registry.Endpoint
			for e := range 10 {
				eps = append(eps, registry.Endpoint{Address: fmt.Sprintf("100.%d.%d.%d", 64+c, i/200, e+(i%200)), Ports: map[string]int32{"http": 8080},
					Cluster: cl, Network: fmt.Sprintf("network%d", c+1), TLSMode: "istio", Ready: true})
			}
			reg.SetEndpoints(cl, host, eps)
		}
	}
	return reg
}

// BenchmarkGenerateSidecarView: one full generation for the sidecars of a
// network (shared by all of them), 1000 clusters and load assignments.
func BenchmarkGenerateSidecarView(b *testing.B) {
	reg := benchRegistry()
	s := NewServer(ServerConfig{Registry: reg})
	p := &proxyview.Proxy{ID: "sidecar~1~a.b~b.svc.cluster.local", Type: proxyview.Sidecar, Network: "network1"}
	b.ReportAllocs()
	for b.Loop() {
		s.generate(p)
	}
}

// BenchmarkSidecarViewsHeap: the heap four sidecar views (four
// localities of one network) keep, per view: what each further namespace
// or locality of sidecars costs the control plane.
func BenchmarkSidecarViewsHeap(b *testing.B) {
	reg := benchRegistry()
	s := NewServer(ServerConfig{Registry: reg})
	var per uint64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		keep := make([]*shared, 4)
		for i := range keep {
			keep[i] = s.generate(&proxyview.Proxy{ID: "sidecar~1~a.b~b.svc.cluster.local", Type: proxyview.Sidecar, Network: "network1",
				Locality: registry.Locality{Region: fmt.Sprint("region-", i)}})
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(keep)
		per = (after.HeapAlloc - min(after.HeapAlloc, before.HeapAlloc)) / uint64(len(keep))
	}
	b.ReportMetric(float64(per), "heap-B/view")
}

// BenchmarkPush1000Proxies: a registry change pushed to 1000 connected sidecars.
func BenchmarkPush1000Proxies(b *testing.B) {
	reg := benchRegistry()
	s := NewServer(ServerConfig{Registry: reg})
	connect1000(s)
	b.ReportAllocs()
	for b.Loop() {
		s.pushAll(true, nil, time.Time{})
	}
}

// BenchmarkPushEndpoints1000Proxies: one service's endpoints changed,
// pushed to 1000 connected sidecars.
func BenchmarkPushEndpoints1000Proxies(b *testing.B) {
	reg := benchRegistry()
	s := NewServer(ServerConfig{Registry: reg})
	connect1000(s)
	s.pushAll(true, nil, time.Time{})
	host := reg.Services()[0].Hostname
	b.ReportAllocs()
	for b.Loop() {
		s.pushAll(false, map[string]bool{host: true}, time.Time{})
	}
}

// connect1000 registers 1000 sidecars on two networks and 20 namespaces.
func connect1000(s *Server) {
	for i := range 1000 {
		id := fmt.Sprintf("sidecar~100.64.%d.%d~p%d.ns~ns.svc.cluster.local", i/250, i%250, i)
		s.proxies[id] = &proxyState{proxy: &proxy{Proxy: &proxyview.Proxy{ID: id, Type: proxyview.Sidecar, Network: fmt.Sprintf("network%d", i%2+1), Namespace: fmt.Sprintf("ns-%d", i%20),
			IP: fmt.Sprintf("100.64.%d.%d", i/250, i%250)}}, sync: newSyncState(id)}
	}
}
