package main

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The clients' decoder reads what proto.Marshal writes: type, nonce,
// version, every resource's name, and the target's bytes.
func TestDecoderReadsMarshalledResponses(t *testing.T) {
	var anys []*anypb.Any
	var resources []*discoverygrpc.Resource
	for _, n := range []string{"outbound|8080||a", "outbound|8080||b"} {
		a, err := anypb.New(&clusterv3.Cluster{Name: n})
		if err != nil {
			t.Fatal(err)
		}
		anys = append(anys, a)
		resources = append(resources, &discoverygrpc.Resource{Name: n, Version: "h-" + n, Resource: a})
	}
	check := func(t *testing.T, m proto.Message, delta bool, version string) {
		t.Helper()
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		r := response{target: "outbound|8080||b"}
		if err := r.decode(b, delta); err != nil {
			t.Fatal(err)
		}
		if r.typeURL != "type.googleapis.com/envoy.config.cluster.v3.Cluster" || r.nonce != "n1" || r.version != version {
			t.Errorf("type %q nonce %q version %q", r.typeURL, r.nonce, r.version)
		}
		if !slices.Equal(r.names, []string{"outbound|8080||a", "outbound|8080||b"}) {
			t.Errorf("names %q", r.names)
		}
		if !slices.Equal(r.value, anys[1].Value) {
			t.Errorf("target's bytes %x, want %x", r.value, anys[1].Value)
		}
	}
	t.Run("state of the world", func(t *testing.T) {
		check(t, &discoverygrpc.DiscoveryResponse{VersionInfo: "v1", Resources: anys, TypeUrl: anys[0].TypeUrl, Nonce: "n1"}, false, "v1")
	})
	t.Run("incremental", func(t *testing.T) {
		check(t, &discoverygrpc.DeltaDiscoveryResponse{SystemVersionInfo: "v2", Resources: resources, TypeUrl: anys[0].TypeUrl, Nonce: "n1"}, true, "v2")
	})
}

// The clients' scan of a load assignment finds what a full decode does:
// every endpoint's address and the weights' sum, an unset weight as 1.
func TestScanLoadAssignment(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{"istio": map[string]any{"workload": "a;b;c;d;e"}})
	if err != nil {
		t.Fatal(err)
	}
	ep := func(ip string, w *wrapperspb.UInt32Value) *endpoint.LbEndpoint {
		return &endpoint.LbEndpoint{LoadBalancingWeight: w, Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": md}},
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{
				SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: 8080}}}}}}}
	}
	cla := &endpoint.ClusterLoadAssignment{ClusterName: "outbound|8080||a", Endpoints: []*endpoint.LocalityLbEndpoints{
		{LbEndpoints: []*endpoint.LbEndpoint{ep("10.0.0.1", nil), ep("10.0.0.2", wrapperspb.UInt32(3))}},
		{LbEndpoints: []*endpoint.LbEndpoint{ep("203.0.113.2", wrapperspb.UInt32(10))}},
	}}
	b, err := proto.Marshal(cla)
	if err != nil {
		t.Fatal(err)
	}
	addrs, weight, err := scanCLA(b)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(addrs, []string{"10.0.0.1", "10.0.0.2", "203.0.113.2"}) || weight != 14 {
		t.Errorf("addresses %q weight %d, want the three and 14", addrs, weight)
	}
	if _, _, err := scanCLA(b[:len(b)-3]); err == nil {
		t.Error("a truncated load assignment scanned without error")
	}
}
