package xds_test

import (
	"context"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/nds"
)

// A sidecar that asks for Istio's name table over ADS gets every service
// at its own cluster's ClusterIP, a service only in another cluster at
// that cluster's, and the table again when a service appears.
func TestNameTableOverADS(t *testing.T) {
	reg := registry.New()
	svc := func(name, ip string) *registry.Service {
		return &registry.Service{Namespace: "ns", Name: name, Hostname: name + ".ns.svc.cluster.local", ClusterIP: ip,
			Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}}
	}
	reg.SetService("c1", "profile.ns.svc.cluster.local", svc("profile", "100.96.0.5"))
	reg.SetService("c2", "profile.ns.svc.cluster.local", svc("profile", "100.97.0.5"))
	reg.SetService("c2", "audit.ns.svc.cluster.local", svc("audit", "100.97.0.9"))
	_, addr := serve(t, reg)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: nds.TypeURL}); err != nil {
		t.Fatal(err)
	}
	table := func() nds.Table {
		t.Helper()
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		if r.TypeUrl != nds.TypeURL || len(r.Resources) != 1 {
			t.Fatalf("response %s with %d resources, want one name table", r.TypeUrl, len(r.Resources))
		}
		tb, err := nds.Decode(r.Resources[0].Resource)
		if err != nil {
			t.Fatal(err)
		}
		return tb
	}
	ip := func(tb nds.Table, host string) string {
		if n, ok := tb[host]; ok && len(n.IPs) == 1 {
			return n.IPs[0].String()
		}
		return ""
	}
	tb := table()
	if got := ip(tb, "profile.ns.svc.cluster.local"); got != "100.96.0.5" {
		t.Errorf("profile at %q, want its ClusterIP in c1", got)
	}
	if got := ip(tb, "audit.ns.svc.cluster.local"); got != "100.97.0.9" {
		t.Errorf("audit (only in c2) at %q, want c2's ClusterIP", got)
	}
	if n := tb["profile.ns.svc.cluster.local"]; n.Registry != "Kubernetes" || n.Shortname != "profile" || n.Namespace != "ns" {
		t.Errorf("profile's entry %+v", n)
	}
	reg.SetService("c1", "cart.ns.svc.cluster.local", svc("cart", "100.96.0.7"))
	if got := ip(table(), "cart.ns.svc.cluster.local"); got != "100.96.0.7" {
		t.Errorf("a new service at %q", got)
	}
}
