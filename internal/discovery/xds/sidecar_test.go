package xds

import (
	"slices"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func TestSidecarListenersAndRoutes(t *testing.T) {
	reg := registry.New()
	host := "profile.multicluster.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "multicluster", Name: "profile", Hostname: host, ClusterIP: "100.96.0.20",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	reg.SetService("c1", "db.data.svc.cluster.local", &registry.Service{Namespace: "data", Name: "db", Hostname: "db.data.svc.cluster.local", ClusterIP: "100.96.0.30",
		Ports: []registry.Port{{Name: "tcp-db", Port: 5432, Protocol: "TCP", AppProtocol: "tcp"}}})
	reg.SetEndpoints("c1", host, []registry.Endpoint{{Address: "100.64.0.5", Ports: map[string]int32{"http": 9080}, Cluster: "c1", Ready: true}})
	services := reg.Services()

	ls, cls := sidecarOutbound(services)
	names := map[string]*listener.Listener{}
	for _, l := range ls {
		names[l.(*listener.Listener).Name] = l.(*listener.Listener)
	}
	for _, want := range []string{"virtualOutbound", "0.0.0.0_8080", "100.96.0.30_5432"} {
		if names[want] == nil {
			t.Errorf("no listener %s (have %v)", want, names)
		}
	}
	if !names["virtualOutbound"].GetUseOriginalDst().GetValue() || names["0.0.0.0_8080"].GetBindToPort().GetValue() {
		t.Error("virtualOutbound must use the original destination; per-port listeners must not bind")
	}
	if len(cls) != 3 {
		t.Errorf("special clusters: %d", len(cls))
	}

	rs := SidecarRoutes("multicluster", services)
	if len(rs) != 1 || rs[0].(*route.RouteConfiguration).Name != "8080" {
		t.Fatalf("routes %v", rs)
	}
	vh := rs[0].(*route.RouteConfiguration).VirtualHosts[0]
	for _, d := range []string{host, host + ":8080", "profile", "profile.multicluster", "100.96.0.20:8080"} {
		if !slices.Contains(vh.Domains, d) {
			t.Errorf("virtual host lacks domain %s: %v", d, vh.Domains)
		}
	}
	if other := SidecarRoutes("default", services)[0].(*route.RouteConfiguration).VirtualHosts[0]; slices.Contains(other.Domains, "profile") {
		t.Error("the bare name must only resolve from the service's own namespace")
	}
	if got := vh.Routes[0].GetRoute().GetCluster(); got != OutboundCluster(8080, "", host) {
		t.Errorf("route to %s", got)
	}

	idx := NewInboundIndex(reg, services)
	in, inCls := Inbound(idx["100.64.0.5"])
	if len(in.FilterChains) != 2 || in.FilterChains[0].FilterChainMatch.GetDestinationPort().GetValue() != 9080 {
		t.Fatalf("inbound chains %v", in.FilterChains)
	}
	if in.FilterChains[0].FilterChainMatch.TransportProtocol != "tls" || in.FilterChains[0].TransportSocket == nil || in.FilterChains[1].FilterChainMatch.TransportProtocol != "raw_buffer" {
		t.Error("PERMISSIVE needs an mTLS chain and a plaintext chain")
	}
	if len(inCls) != 1 || inCls[0].(interface{ GetName() string }).GetName() != "inbound|9080||" {
		t.Errorf("inbound clusters %v", inCls)
	}
}
