package xds_test

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	status "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// TestDeltaADS: a delta client gets clusters, then only the changed load
// assignment when an endpoint is added, and a NACK is recorded.
func TestDeltaADS(t *testing.T) {
	reg := registry.New()
	host := "profile.ns.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "profile", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	ep := func(addr string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}
	}
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.0.1")})

	ctx := context.Background()
	srv, addr := serve(t, reg)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: xds.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	name := xds.OutboundCluster(8080, "", host)
	found := false
	for _, r := range resp.Resources {
		found = found || r.Name == name
	}
	if !found {
		t.Fatalf("delta CDS lacks %s: %v", name, resp.Resources)
	}
	// ACK, then subscribe to the load assignment.
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: resp.Nonce})
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{name}})
	count := func() int {
		for {
			r, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			if r.TypeUrl != resource.EndpointType || len(r.Resources) == 0 {
				continue
			}
			var cla endpoint.ClusterLoadAssignment
			if err := r.Resources[0].Resource.UnmarshalTo(&cla); err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, l := range cla.Endpoints {
				n += len(l.LbEndpoints)
			}
			return n
		}
	}
	if n := count(); n != 1 {
		t.Fatalf("first EDS has %d endpoints", n)
	}
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.0.1"), ep("10.0.0.2")})
	if n := count(); n != 2 {
		t.Fatalf("EDS after a new endpoint has %d endpoints", n)
	}
	st := srv.Status()
	if len(st) != 1 || st[0].Acked["cds"] == "" {
		t.Fatalf("status after delta ACKs: %+v", st)
	}
	// A rejection is recorded with its detail.
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: "x",
		ErrorDetail: &status.Status{Code: 3, Message: "bad cluster"}})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st := srv.Status(); len(st) == 1 && st[0].Nacked["cds"] == "bad cluster" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("NACK not recorded: %+v", srv.Status())
}
