package xds

import (
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func TestGenerateGRPCListenersAreNamedHostPort(t *testing.T) {
	reg := registry.New()
	reg.SetService("c1", "greeter.ns.svc.cluster.local", &registry.Service{Namespace: "ns", Name: "greeter", Hostname: "greeter.ns.svc.cluster.local",
		Ports: []registry.Port{{Name: "grpc", Port: 7070, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", "greeter.ns.svc.cluster.local", []registry.Endpoint{{Address: "10.0.0.1", Ports: map[string]int32{"grpc": 7070}, Cluster: "c1", Ready: true}})
	g := GenerateGRPC(&Proxy{ID: "x", Type: Sidecar, Generator: GeneratorGRPC}, reg, nil)
	ls := g.Listeners
	if len(ls) != 1 || ls[0].(*listener.Listener).Name != "greeter.ns.svc.cluster.local:7070" {
		t.Fatalf("listeners %v", ls)
	}
	if len(g.Clusters) != 1 || len(g.Endpoints) != 1 {
		t.Fatalf("clusters %d endpoints %d", len(g.Clusters), len(g.Endpoints))
	}
}
