package xds_test

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// A lone endpoint change after a quiet spell is pushed at once; a change
// that follows it within the debounce period waits to be gathered.
func TestLoneEndpointChangeSkipsDebounce(t *testing.T) {
	const debounce = 3 * time.Second
	reg := registry.New()
	host := "a.ns.svc.cluster.local"
	ep := func(addr string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}
	}
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "a", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.1.1")})
	_, addr := serveConfig(t, xds.ServerConfig{Registry: reg, Debounce: debounce})
	stream, err := adsClient(t, addr).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	responses := receive(stream.Recv)
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	ack := func(r *discoverygrpc.DeltaDiscoveryResponse) {
		_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	gather(t, responses, ack)
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{proxyview.OutboundCluster(8080, "", host)}})
	gather(t, responses, ack)
	// A quiet spell: whatever the set-up pushed is a debounce period ago.
	time.Sleep(debounce + 200*time.Millisecond)

	// within waits for the next load assignment, at most d.
	within := func(d time.Duration) (time.Duration, bool) {
		start := time.Now()
		timeout := time.After(d)
		for {
			select {
			case r := <-responses:
				ack(r)
				if r.TypeUrl == resource.EndpointType {
					return time.Since(start), true
				}
			case <-timeout:
				return d, false
			}
		}
	}
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.1.1"), ep("10.0.1.2")})
	if took, ok := within(debounce / 2); !ok {
		t.Fatalf("a lone endpoint change was not pushed within %s (debounce %s)", took, debounce)
	}
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.1.1"), ep("10.0.1.2"), ep("10.0.1.3")})
	if took, ok := within(debounce / 2); ok {
		t.Fatalf("a change right after a push went out after %s, not gathered for the debounce period (%s)", took, debounce)
	}
	if _, ok := within(2 * debounce); !ok {
		t.Fatal("the gathered change was never pushed")
	}
}
