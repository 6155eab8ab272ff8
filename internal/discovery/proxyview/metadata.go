package proxyview

import (
	"runtime"
	"sync"
	"weak"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
)

// Load assignments of every view carry the same endpoints: a sidecar
// view per namespace, network and locality each had its own copy of all
// 20,000 of them, with a metadata struct each, and that was most of the
// control plane's heap. Endpoints and their metadata are interned
// instead. Entries are weak: an endpoint no resource holds any more is
// collected and its entry dropped, so a cluster's churn leaves nothing
// behind. Generated resources are never changed once built, which is
// what makes sharing them safe.

// interned is a set of shared values by key, held weakly.
type interned[K comparable, V any] struct{ m sync.Map } // K -> weak.Pointer[V]

type internedEntry[K comparable, V any] struct {
	k  K
	wp weak.Pointer[V]
}

// get returns the live value of k, else the one build builds (which is
// kept while anything holds it).
func (in *interned[K, V]) get(k K, build func(K) *V) *V {
	if wp, ok := in.m.Load(k); ok {
		if v := wp.(weak.Pointer[V]).Value(); v != nil {
			return v
		}
	}
	v := build(k)
	wp := weak.Make(v)
	in.m.Store(k, wp)
	runtime.AddCleanup(v, func(e internedEntry[K, V]) { in.m.CompareAndDelete(e.k, e.wp) }, internedEntry[K, V]{k, wp})
	return v
}

// endpointMetaKey is everything an endpoint's metadata says.
type endpointMetaKey struct{ network, cluster, tlsMode, serviceAccount, namespace string }

// lbEndpointKey is everything an endpoint of a load assignment says.
type lbEndpointKey struct {
	address string
	port    int32
	weight  uint32
	meta    endpointMetaKey
}

var (
	endpointMetas interned[endpointMetaKey, core.Metadata]
	lbEndpoints   interned[lbEndpointKey, endpoint.LbEndpoint]
)

// lbEndpoint is e as Envoy is given it, shared by every load assignment
// that has it.
func lbEndpoint(e network.LbEndpoint) *endpoint.LbEndpoint {
	k := lbEndpointKey{address: e.Address, port: e.Port, weight: e.Weight,
		meta: endpointMetaKey{network: e.Network, cluster: e.Cluster, tlsMode: e.TLSMode}}
	if e.ServiceAccount != "" {
		k.meta.serviceAccount, k.meta.namespace = e.ServiceAccount, e.Namespace
	}
	return lbEndpoints.get(k, newLbEndpoint)
}

func newLbEndpoint(k lbEndpointKey) *endpoint.LbEndpoint {
	return &endpoint.LbEndpoint{
		HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address: k.address, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(k.port)},
			}}},
		}},
		HealthStatus:        core.HealthStatus_HEALTHY,
		Metadata:            endpointMetas.get(k.meta, newEndpointMetadata),
		LoadBalancingWeight: wrapperspb.UInt32(k.weight),
	}
}

// newEndpointMetadata is Istio's metadata of an endpoint:
// envoy.transport_socket_match {tlsMode} and istio {network, cluster,
// serviceAccount, namespace}.
func newEndpointMetadata(k endpointMetaKey) *core.Metadata {
	istio := map[string]*structpb.Value{
		"network": structpb.NewStringValue(k.network),
		"cluster": structpb.NewStringValue(k.cluster),
	}
	if k.serviceAccount != "" {
		istio["serviceAccount"] = structpb.NewStringValue(k.serviceAccount)
		istio["namespace"] = structpb.NewStringValue(k.namespace)
	}
	md := &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: istio}}}
	if k.tlsMode != "" {
		md.FilterMetadata["envoy.transport_socket_match"] = &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue(k.tlsMode)}}
	}
	return md
}
