package xds_test

import (
	"context"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	status "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
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
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	name := proxyview.OutboundCluster(8080, "", host)
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
	if c := srv.Convergence(); c.Samples != 0 {
		t.Errorf("a connecting proxy's first configuration counted as a change's convergence: %+v", c)
	}
	changed := time.Now()
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.0.1"), ep("10.0.0.2")})
	if n := count(); n != 2 {
		t.Fatalf("EDS after a new endpoint has %d endpoints", n)
	}
	// The change's convergence: from the endpoint change to the ACK.
	for deadline := time.Now().Add(5 * time.Second); srv.Convergence().Samples == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if c := srv.Convergence(); c.Samples != 1 || c.P99 <= 0 || c.P99 > time.Since(changed) {
		t.Errorf("convergence after one endpoint change acknowledged: %+v, want one sample within %s", c, time.Since(changed))
	}
	// The proxy reconnects while its old stream is still held: what the
	// new stream gets is its connection, not the change again.
	again, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = again.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	_ = again.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.EndpointType, ResourceNamesSubscribe: []string{name}})
	for seen := map[string]bool{}; len(seen) < 2; {
		r, err := again.Recv()
		if err != nil {
			t.Fatal(err)
		}
		seen[r.TypeUrl] = true
		_ = again.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
	}
	time.Sleep(100 * time.Millisecond)
	if c := srv.Convergence(); c.Samples != 1 {
		t.Errorf("a reconnection counted as a change's convergence: %+v", c)
	}
	st := srv.Syncz()
	if len(st) != 1 || st[0].ClusterAcked == "" {
		t.Fatalf("status after delta ACKs: %+v", st)
	}
	// A rejection is recorded with its detail.
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.ClusterType, ResponseNonce: "x",
		ErrorDetail: &status.Status{Code: 3, Message: "bad cluster"}})
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st := srv.Syncz(); len(st) == 1 && st[0].Nacked["cds"] == "bad cluster" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("NACK not recorded: %+v", srv.Syncz())
}

// TestDeltaSendsOnlyChanges: over a real stream, each change sends only
// the resources it touched, of the types it touched, again and again;
// a removed service is removed from clusters and load assignments.
func TestDeltaSendsOnlyChanges(t *testing.T) {
	reg := registry.New()
	hosts := []string{"a.ns.svc.cluster.local", "b.ns.svc.cluster.local", "c.ns.svc.cluster.local"}
	ep := func(addr string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}
	}
	for i, h := range hosts {
		reg.SetService("c1", h, &registry.Service{Namespace: "ns", Name: h[:1], Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
		reg.SetEndpoints("c1", h, []registry.Endpoint{ep("10.0.1." + string(rune('1'+i)))})
	}
	_, addr := serve(t, reg)
	stream, err := adsClient(t, addr).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	type got struct{ updated, removed []string }
	responses := receive(stream.Recv)
	// next acknowledges and gathers what arrives within a moment.
	next := func() map[string]got {
		t.Helper()
		out := map[string]got{}
		gather(t, responses, func(r *discoverygrpc.DeltaDiscoveryResponse) {
			_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			g := out[r.TypeUrl]
			for _, res := range r.Resources {
				g.updated = append(g.updated, res.Name)
			}
			g.removed = append(g.removed, r.RemovedResources...)
			out[r.TypeUrl] = g
		})
		return out
	}
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = proxyview.OutboundCluster(8080, "", h)
	}
	if g := next()[resource.ClusterType]; len(g.updated) < 3 {
		t.Fatalf("first clusters: %v", g.updated)
	}
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names})
	if g := next()[resource.EndpointType]; len(g.updated) != 3 {
		t.Fatalf("first load assignments: %v", g.updated)
	}
	for i, addr := range []string{"10.0.2.1", "10.0.2.2", "10.0.2.3"} {
		reg.SetEndpoints("c1", hosts[0], []registry.Endpoint{ep("10.0.1.1"), ep(addr)})
		r := next()
		if g := r[resource.EndpointType]; len(r) != 1 || len(g.updated) != 1 || g.updated[0] != names[0] || len(g.removed) != 0 {
			t.Fatalf("change %d of a's endpoints sent %+v, want only a's load assignment", i+1, r)
		}
	}
	reg.SetService("c1", hosts[1], nil)
	r := next()
	if g := r[resource.ClusterType]; len(g.updated) != 0 || len(g.removed) != 1 || g.removed[0] != names[1] {
		t.Errorf("removing b sent clusters %+v, want b removed", g)
	}
	if g := r[resource.EndpointType]; len(g.updated) != 0 || len(g.removed) != 1 || g.removed[0] != names[1] {
		t.Errorf("removing b sent load assignments %+v, want b removed", g)
	}
}

// A delta client that reconnects says what it has (initial resource
// versions): it is sent only what changed meanwhile, and told what went.
func TestDeltaReconnectWithInitialVersions(t *testing.T) {
	reg := registry.New()
	hosts := []string{"a.ns.svc.cluster.local", "b.ns.svc.cluster.local"}
	for i, h := range hosts {
		reg.SetService("c1", h, &registry.Service{Namespace: "ns", Name: h[:1], Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
		reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.0.1." + string(rune('1'+i)), Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", Ready: true}})
	}
	_, addr := serve(t, reg)
	client := adsClient(t, addr)
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	first := func(initial map[string]string) *discoverygrpc.DeltaDiscoveryResponse {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		stream, err := client.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType, InitialResourceVersions: initial}); err != nil {
			t.Fatal(err)
		}
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		return r
	}
	had := map[string]string{}
	for _, r := range first(nil).Resources {
		had[r.Name] = r.Version
	}
	a, b := proxyview.OutboundCluster(8080, "", hosts[0]), proxyview.OutboundCluster(8080, "", hosts[1])
	if had[a] == "" || had[b] == "" {
		t.Fatalf("first clusters %v lack %s or %s", had, a, b)
	}
	reg.SetService("c1", hosts[1], nil)
	// The push that removes b reaches the server's views first.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := first(had)
		var sent []string
		for _, res := range r.Resources {
			sent = append(sent, res.Name)
		}
		if len(r.RemovedResources) == 1 && r.RemovedResources[0] == b {
			if slices.Contains(sent, a) {
				t.Errorf("a's unchanged cluster was sent again: %v", sent)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconnected with %v: sent %v, removed %v; want only %s removed", had, sent, r.RemovedResources, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
