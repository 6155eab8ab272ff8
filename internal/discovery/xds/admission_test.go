package xds_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// TestConnectingStreamsWaitTheirTurn: with one place for streams being
// served their first configuration, a second proxy gets nothing (and is
// counted as waiting) until the first holds its clusters and their load
// assignments; a client that never acknowledges gives its place up after
// the hold.
func TestConnectingStreamsWaitTheirTurn(t *testing.T) {
	defer func(n int, d time.Duration) { xds.ConnectingStreams, xds.ConnectingHold = n, d }(xds.ConnectingStreams, xds.ConnectingHold)
	xds.ConnectingStreams, xds.ConnectingHold = 1, time.Minute

	reg := registry.New()
	host := "profile.ns.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "profile", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", host, []registry.Endpoint{{Address: "10.0.0.1", Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}})
	metrics := prometheus.NewRegistry()
	_, addr := serveConfig(t, xds.ServerConfig{Registry: reg, Debounce: 10 * time.Millisecond, Metrics: metrics})
	waiting := func() float64 {
		families, err := metrics.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == "isthmus_xds_streams_waiting" {
				return f.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no isthmus_xds_streams_waiting metric")
		return 0
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	next := func(responses <-chan *discoverygrpc.DeltaDiscoveryResponse, what string) *discoverygrpc.DeltaDiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-responses:
			if !ok {
				t.Fatalf("%s: stream ended", what)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no response in 5 s", what)
		}
		return nil
	}
	none := func(responses <-chan *discoverygrpc.DeltaDiscoveryResponse, what string) {
		t.Helper()
		select {
		case r := <-responses:
			t.Fatalf("%s: got %s while another stream held the only place", what, r.GetTypeUrl())
		case <-time.After(500 * time.Millisecond):
		}
	}

	first, firstIn := askClusters(ctx, t, addr, 0)
	cds := next(firstIn, "first stream's clusters")
	_, secondIn := askClusters(ctx, t, addr, 1)
	none(secondIn, "second stream")
	if got := waiting(); got != 1 {
		t.Errorf("isthmus_xds_streams_waiting = %v while the second stream waits, want 1", got)
	}
	// Clusters acknowledged: still in its first configuration until it
	// has asked for (and acknowledged) their load assignments.
	if err := first.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: cds.Nonce}); err != nil {
		t.Fatal(err)
	}
	none(secondIn, "second stream after the first acknowledged its clusters")
	var names []string
	for _, r := range cds.Resources {
		if strings.HasPrefix(r.Name, "outbound|") {
			names = append(names, r.Name)
		}
	}
	if err := first.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names}); err != nil {
		t.Fatal(err)
	}
	eds := next(firstIn, "first stream's load assignments")
	if eds.TypeUrl != resource.EndpointType {
		t.Fatalf("first stream got %s, want its load assignments", eds.TypeUrl)
	}
	if err := first.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResponseNonce: eds.Nonce}); err != nil {
		t.Fatal(err)
	}
	if r := next(secondIn, "second stream once the first settled"); r.TypeUrl != resource.ClusterType {
		t.Fatalf("second stream got %s first, want clusters", r.TypeUrl)
	}
	if got := waiting(); got != 0 {
		t.Errorf("isthmus_xds_streams_waiting = %v once served, want 0", got)
	}

}

// TestConnectingWithoutLoadAssignments: a proxy left no service to
// reach has no load assignments to ask for after its clusters; its place
// goes as soon as it acknowledges them, not after the hold.
func TestConnectingWithoutLoadAssignments(t *testing.T) {
	defer func(n int, d time.Duration) { xds.ConnectingStreams, xds.ConnectingHold = n, d }(xds.ConnectingStreams, xds.ConnectingHold)
	xds.ConnectingStreams, xds.ConnectingHold = 1, time.Minute
	_, addr := serve(t, registry.New())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first, firstIn := askClusters(ctx, t, addr, 0)
	var cds *discoverygrpc.DeltaDiscoveryResponse
	select {
	case cds = <-firstIn:
	case <-time.After(5 * time.Second):
		t.Fatal("first stream: no clusters in 5 s")
	}
	_, secondIn := askClusters(ctx, t, addr, 1)
	if err := first.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: cds.Nonce}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-secondIn:
	case <-time.After(5 * time.Second):
		t.Fatal("second stream: nothing 5 s after the first (no load assignments to ask for) acknowledged its clusters")
	}
}

// TestConnectingHoldBounded: a client that takes its first response and
// never acknowledges it keeps its place no longer than the hold.
func TestConnectingHoldBounded(t *testing.T) {
	defer func(n int, d time.Duration) { xds.ConnectingStreams, xds.ConnectingHold = n, d }(xds.ConnectingStreams, xds.ConnectingHold)
	xds.ConnectingStreams, xds.ConnectingHold = 1, 400*time.Millisecond
	reg := registry.New()
	host := "profile.ns.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "profile", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	_, addr := serve(t, reg)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ins []<-chan *discoverygrpc.DeltaDiscoveryResponse
	for i := range 2 {
		_, in := askClusters(ctx, t, addr, i)
		ins = append(ins, in)
		if i == 0 {
			select {
			case <-ins[0]:
			case <-time.After(5 * time.Second):
				t.Fatal("first stream: no response in 5 s")
			}
		}
	}
	start := time.Now()
	select {
	case <-ins[1]:
		if waited := time.Since(start); waited < 200*time.Millisecond {
			t.Fatalf("second stream served after %v, while the first (never acknowledging) held the only place for 400 ms", waited)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("second stream: nothing 5 s after the first stream's hold ended")
	}
}

// askClusters opens the i-th sidecar's delta stream and asks for its
// clusters; its responses arrive on the channel.
func askClusters(ctx context.Context, t *testing.T, addr string, i int) (discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, <-chan *discoverygrpc.DeltaDiscoveryResponse) {
	t.Helper()
	stream, err := adsClient(t, addr).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: fmt.Sprintf("sidecar~10.0.0.%d~p%d.ns~ns.svc.cluster.local", i+1, i),
		Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	return stream, receive(stream.Recv)
}
