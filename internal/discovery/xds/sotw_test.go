package xds_test

import (
	"context"
	"slices"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	status "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// TestSotwSendsOnlyChangedLoadAssignments: over a state-of-the-world
// stream, an endpoint change sends only its load assignment (the xDS
// protocol lets every type but listeners and clusters be partial) and
// no clusters; a new service sends the whole cluster list.
func TestSotwSendsOnlyChangedLoadAssignments(t *testing.T) {
	reg := registry.New()
	ep := func(addr string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}
	}
	addService := func(h, addr string) {
		reg.SetService("c1", h, &registry.Service{Namespace: "ns", Name: h[:1], Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
		reg.SetEndpoints("c1", h, []registry.Endpoint{ep(addr)})
	}
	hosts := []string{"a.ns.svc.cluster.local", "b.ns.svc.cluster.local"}
	addService(hosts[0], "10.0.1.1")
	addService(hosts[1], "10.0.1.2")
	_, addr := serve(t, reg)
	stream, err := adsClient(t, addr).StreamAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	responses := receive(stream.Recv)
	names := func(r *discoverygrpc.DiscoveryResponse) []string {
		var out []string
		for _, a := range r.Resources {
			if r.TypeUrl == resource.EndpointType {
				var m endpoint.ClusterLoadAssignment
				_ = a.UnmarshalTo(&m)
				out = append(out, m.ClusterName)
			} else {
				var m cluster.Cluster
				_ = a.UnmarshalTo(&m)
				out = append(out, m.Name)
			}
		}
		slices.Sort(out)
		return out
	}
	var watched []string
	// next acknowledges (asking again for watched load assignments) and
	// gathers what arrives within a moment.
	next := func() map[string][]string {
		t.Helper()
		out := map[string][]string{}
		gather(t, responses, func(r *discoverygrpc.DiscoveryResponse) {
			req := &discoverygrpc.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce}
			if r.TypeUrl == resource.EndpointType {
				req.ResourceNames = watched
			}
			_ = stream.Send(req)
			out[r.TypeUrl] = append(out[r.TypeUrl], names(r)...)
		})
		return out
	}
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	a, b := proxyview.OutboundCluster(8080, "", hosts[0]), proxyview.OutboundCluster(8080, "", hosts[1])
	if got := next()[resource.ClusterType]; !slices.Contains(got, a) || !slices.Contains(got, b) {
		t.Fatalf("first clusters %v", got)
	}
	watched = []string{a, b}
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: watched})
	if got := next()[resource.EndpointType]; !slices.Equal(got, []string{a, b}) {
		t.Fatalf("first load assignments %v, want %s and %s", got, a, b)
	}
	for i, addr := range []string{"10.0.2.1", "10.0.2.2"} {
		reg.SetEndpoints("c1", hosts[1], []registry.Endpoint{ep(addr)})
		got := next()
		if len(got) != 1 || !slices.Equal(got[resource.EndpointType], []string{b}) {
			t.Fatalf("change %d of b's endpoints sent %v, want only b's load assignment", i+1, got)
		}
	}
	addService("c.ns.svc.cluster.local", "10.0.1.3")
	c := proxyview.OutboundCluster(8080, "", "c.ns.svc.cluster.local")
	if got := next()[resource.ClusterType]; !slices.Contains(got, a) || !slices.Contains(got, b) || !slices.Contains(got, c) {
		t.Errorf("after a new service, clusters %v, want the whole list", got)
	}
}

// A rejected response is recorded with its reason, a request that
// crossed a newer response is ignored, and the stream goes on: the next
// change still arrives.
func TestSotwRejectionAndStaleRequests(t *testing.T) {
	reg := registry.New()
	host := "a.ns.svc.cluster.local"
	set := func(addr string) {
		reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "a", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
		reg.SetEndpoints("c1", host, []registry.Endpoint{{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}})
	}
	set("10.0.1.1")
	srv, addr := serve(t, reg)
	stream, err := adsClient(t, addr).StreamAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	responses := receive(stream.Recv)
	recv := func() *discoverygrpc.DiscoveryResponse {
		t.Helper()
		var got *discoverygrpc.DiscoveryResponse
		gather(t, responses, func(r *discoverygrpc.DiscoveryResponse) { got = r })
		return got
	}
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	name := proxyview.OutboundCluster(8080, "", host)
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNames: []string{name}})
	first := recv()
	// Reject it.
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{name}, ResponseNonce: first.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "bad endpoint"}})
	deadline := time.Now().Add(5 * time.Second)
	for st := srv.Syncz(); len(st) != 1 || st[0].Nacked["eds"] != "bad endpoint"; st = srv.Syncz() {
		if time.Now().After(deadline) {
			t.Fatalf("rejection not recorded: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A request with an old nonce and other names is stale: ignored.
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: []string{"outbound|1||nothing"}, ResponseNonce: "0"})
	set("10.0.1.2")
	next := recv()
	var cla endpoint.ClusterLoadAssignment
	if len(next.Resources) != 1 || next.Resources[0].UnmarshalTo(&cla) != nil || cla.ClusterName != name {
		t.Fatalf("after a rejection and a stale request the change sent %v, want %s", next.Resources, name)
	}
	if a := cla.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().GetAddress(); a != "10.0.1.2" {
		t.Fatalf("endpoint %s, want the new 10.0.1.2", a)
	}
}
