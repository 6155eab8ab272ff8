package proxyview

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	securitybeta "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

	ls, cls := sidecarOutbound(services, "c1", nil, nil, nil, "cluster.local", 0, false)
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

	rs := SidecarRoutes("multicluster", "c1", services, nil, "istio-system", "cluster.local", nil)
	if len(rs) != 1 || rs[0].(*route.RouteConfiguration).Name != "8080" {
		t.Fatalf("routes %v", rs)
	}
	vh := rs[0].(*route.RouteConfiguration).VirtualHosts[0]
	for _, d := range []string{host, host + ":8080", "profile", "profile.multicluster", "100.96.0.20:8080"} {
		if !slices.Contains(vh.Domains, d) {
			t.Errorf("virtual host lacks domain %s: %v", d, vh.Domains)
		}
	}
	if other := SidecarRoutes("default", "c1", services, nil, "istio-system", "cluster.local", nil)[0].(*route.RouteConfiguration).VirtualHosts[0]; slices.Contains(other.Domains, "profile") {
		t.Error("the bare name must only resolve from the service's own namespace")
	}
	if got := vh.Routes[0].GetRoute().GetCluster(); got != OutboundCluster(8080, "", host) {
		t.Errorf("route to %s", got)
	}

	idx := NewInboundIndex(reg, services)
	in, inCls := Inbound(idx.For("multicluster", "100.64.0.5"), InboundPolicy{})
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

func TestPeerAuthentication(t *testing.T) {
	pa := func(ns, name string, age int, sel map[string]string, mode securitybeta.PeerAuthentication_MutualTLS_Mode, ports map[uint32]securitybeta.PeerAuthentication_MutualTLS_Mode) *securityv1.PeerAuthentication {
		p := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.NewTime(time.Unix(int64(1000-age), 0))}}
		p.Spec.Mtls = &securitybeta.PeerAuthentication_MutualTLS{Mode: mode}
		if sel != nil {
			p.Spec.Selector = &typev1beta1.WorkloadSelector{MatchLabels: sel}
		}
		for port, m := range ports {
			if p.Spec.PortLevelMtls == nil {
				p.Spec.PortLevelMtls = map[uint32]*securitybeta.PeerAuthentication_MutualTLS{}
			}
			p.Spec.PortLevelMtls[port] = &securitybeta.PeerAuthentication_MutualTLS{Mode: m}
		}
		return p
	}
	const (
		unset      = securitybeta.PeerAuthentication_MutualTLS_UNSET
		strict     = securitybeta.PeerAuthentication_MutualTLS_STRICT
		permissive = securitybeta.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = securitybeta.PeerAuthentication_MutualTLS_DISABLE
	)
	app := map[string]string{"app": "profile"}
	for _, tc := range []struct {
		name string
		pas  []*securityv1.PeerAuthentication
		want string
	}{
		{"nothing: PERMISSIVE", nil, "PERMISSIVE"},
		{"mesh-wide STRICT", []*securityv1.PeerAuthentication{pa("istio-system", "default", 1, nil, strict, nil)}, "STRICT"},
		{"namespace overrides mesh", []*securityv1.PeerAuthentication{pa("istio-system", "default", 1, nil, strict, nil), pa("multicluster", "default", 1, nil, permissive, nil)}, "PERMISSIVE"},
		{"UNSET inherits", []*securityv1.PeerAuthentication{pa("istio-system", "default", 1, nil, strict, nil), pa("multicluster", "default", 1, nil, unset, nil)}, "STRICT"},
		{"workload overrides, port-level", []*securityv1.PeerAuthentication{pa("multicluster", "default", 1, nil, strict, nil),
			pa("multicluster", "profile", 1, app, unset, map[uint32]securitybeta.PeerAuthentication_MutualTLS_Mode{8080: disable, 9090: unset})}, "STRICT,8080=DISABLE,9090=STRICT"},
		{"a selector not matching", []*securityv1.PeerAuthentication{pa("multicluster", "other", 1, map[string]string{"app": "x"}, strict, nil)}, "PERMISSIVE"},
		{"another namespace", []*securityv1.PeerAuthentication{pa("data", "default", 1, nil, strict, nil)}, "PERMISSIVE"},
		{"the oldest of two wins", []*securityv1.PeerAuthentication{pa("multicluster", "new", 1, nil, permissive, nil), pa("multicluster", "old", 5, nil, strict, nil)}, "STRICT"},
	} {
		if got := ResolveMTLS(tc.pas, "istio-system", "multicluster", app).Key(); got != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
		}
	}

	ports := InboundPorts{8080: {Protocol: ProtoHTTP}, 9090: {Protocol: ProtoAuto}}
	chains := func(m MTLSModes) (names []string, passthrough bool) {
		l, _ := Inbound(ports, InboundPolicy{MTLS: m})
		for _, fc := range l.FilterChains {
			names = append(names, fc.Name)
		}
		return names, l.DefaultFilterChain != nil
	}
	names, pt := chains(MTLSModes{Default: Strict})
	if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "plaintext") }) || pt {
		t.Errorf("STRICT still accepts plaintext: %v, passthrough %v", names, pt)
	}
	names, _ = chains(MTLSModes{Default: Strict, Ports: map[int32]MTLSMode{8080: Disable}})
	if !slices.Contains(names, "inbound|8080||-plaintext") || slices.Contains(names, "inbound|8080||-mtls") || !slices.Contains(names, "inbound|9090||-mtls") {
		t.Errorf("port-level DISABLE: %v", names)
	}
	if names, pt := chains(MTLSModes{}); len(names) != 6 || !pt {
		t.Errorf("PERMISSIVE: %v, passthrough %v", names, pt)
	}
}

// An ALLOW policy whose rules all allow nothing is not the absence of
// policy: the listeners they make must not be shared.
func TestAuthzKeyTellsAllowNothingFromNoPolicy(t *testing.T) {
	none := Authz{}
	nothing := Authz{HTTPAllow: &rbacv3.RBAC{}, TCPAllow: &rbacv3.RBAC{}}
	if none.Key() == nothing.Key() {
		t.Fatal("an ALLOW without policies has the key of no policy")
	}
}

// A service in two clusters has a ClusterIP in each: a sidecar's TCP
// listener and its routes' domains use its own cluster's (pods call the
// ClusterIP their DNS gives them); a cluster without the service uses
// the other's.
func TestEachClusterItsOwnClusterIP(t *testing.T) {
	reg := registry.New()
	host := "profile-tcp.multicluster.svc.cluster.local"
	for cluster, ip := range map[string]string{"cluster-aks": "100.97.0.9", "cluster-eks": "100.96.0.9"} {
		reg.SetService(cluster, host, &registry.Service{Namespace: "multicluster", Name: "profile-tcp", Hostname: host, ClusterIP: ip,
			Ports: []registry.Port{{Name: "tcp-web", Port: 9080, Protocol: "TCP", AppProtocol: "tcp"}, {Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	}
	services := reg.Services()
	for cluster, want := range map[string]string{"cluster-eks": "100.96.0.9", "cluster-aks": "100.97.0.9", "cluster-gke": "100.97.0.9"} {
		ls, _ := sidecarOutbound(services, cluster, nil, nil, nil, "cluster.local", 0, false)
		var tcp []string
		for _, l := range ls {
			if n := l.(*listener.Listener).Name; strings.HasSuffix(n, "_9080") {
				tcp = append(tcp, n)
			}
		}
		if !slices.Equal(tcp, []string{want + "_9080"}) {
			t.Errorf("%s: TCP listeners %v, want %s_9080", cluster, tcp, want)
		}
		vh := SidecarRoutes("multicluster", cluster, services, nil, "istio-system", "cluster.local", nil)[0].(*route.RouteConfiguration).VirtualHosts[0]
		var vips []string
		for _, d := range vh.Domains {
			if strings.HasPrefix(d, "100.") {
				vips = append(vips, d)
			}
		}
		if !slices.Equal(vips, []string{want, want + ":8080"}) {
			t.Errorf("%s: route domains by address %v, want %s", cluster, vips, want)
		}
	}
}

// A service known only from another cluster keeps that cluster's
// ClusterIP, which may be a local service's too (service ranges overlap
// between clusters): the local service keeps the listener and the route
// domain, and no route table names a domain twice.
func TestLocalServiceKeepsAClusterIPAForeignOneShares(t *testing.T) {
	reg := registry.New()
	local, foreign := "cart.shop.svc.cluster.local", "audit.ops.svc.cluster.local"
	ports := []registry.Port{{Name: "tcp-x", Port: 9090, Protocol: "TCP", AppProtocol: "tcp"}, {Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}
	// "audit" sorts first: only the ordering by cluster can save cart.
	reg.SetService("cluster-aks", foreign, &registry.Service{Namespace: "ops", Name: "audit", Hostname: foreign, ClusterIP: "100.96.0.9", Ports: ports})
	reg.SetService("cluster-eks", local, &registry.Service{Namespace: "shop", Name: "cart", Hostname: local, ClusterIP: "100.96.0.9", Ports: ports})
	services := reg.Services()
	ls, _ := sidecarOutbound(services, "cluster-eks", nil, nil, nil, "cluster.local", 0, false)
	var got *listener.Listener
	for _, l := range ls {
		if l := l.(*listener.Listener); l.Name == "100.96.0.9_9090" {
			if got != nil {
				t.Fatal("two listeners 100.96.0.9_9090")
			}
			got = l
		}
	}
	if got == nil || !strings.Contains(got.String(), OutboundCluster(9090, "", local)) {
		t.Fatalf("100.96.0.9_9090 does not go to the local service: %v", got)
	}
	seen := map[string]string{}
	for _, vh := range SidecarRoutes("shop", "cluster-eks", services, nil, "istio-system", "cluster.local", nil)[0].(*route.RouteConfiguration).VirtualHosts {
		for _, d := range vh.Domains {
			if other, dup := seen[d]; dup {
				t.Errorf("domain %s in both %s and %s", d, other, vh.Name)
			}
			seen[d] = vh.Name
		}
	}
	if seen["100.96.0.9:8080"] != local+":8080" {
		t.Errorf("100.96.0.9:8080 routes to %q, want the local service", seen["100.96.0.9:8080"])
	}
}

// A headless service (a StatefulSet's) has no ClusterIP: each of its pods
// on the proxy's network gets a listener of its own, whose cluster
// connects to the pod the client chose, over Istio mTLS when its pods
// have sidecars; a pod of another network gets none (its address is not
// reachable from here). HTTP routes also answer to the pods' own names.
func TestHeadlessServiceListensPerPod(t *testing.T) {
	reg := registry.New()
	host := "db.data.svc.cluster.local"
	reg.SetService("cluster-eks", host, &registry.Service{Namespace: "data", Name: "db", Hostname: host, Headless: true,
		Ports: []registry.Port{{Name: "tcp-db", Port: 5432, Protocol: "TCP", AppProtocol: "tcp"}, {Name: "web", Port: 8080, Protocol: "TCP"}}})
	pod := func(addr, network, tlsMode string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"tcp-db": 5432, "web": 8080}, Network: network, TLSMode: tlsMode,
			ServiceAccount: "db", Namespace: "data", Ready: true}
	}
	reg.SetEndpoints("cluster-eks", host, []registry.Endpoint{pod("100.64.0.11", "network1", "istio"), pod("100.64.0.10", "network1", "istio")})
	reg.SetService("cluster-aks", host, &registry.Service{Namespace: "data", Name: "db", Hostname: host, Headless: true,
		Ports: []registry.Port{{Name: "tcp-db", Port: 5432, Protocol: "TCP", AppProtocol: "tcp"}, {Name: "web", Port: 8080, Protocol: "TCP"}}})
	reg.SetEndpoints("cluster-aks", host, []registry.Endpoint{pod("100.65.0.10", "network2", "istio")})

	p := &Proxy{Type: Sidecar, ClusterID: "cluster-eks", Network: "network1", TrustDomains: []string{"cluster.local"}}
	g := Generate(p, reg, nil, "cluster.local", nil, nil)
	var names []string
	for _, l := range g.Listeners {
		if n := l.(*listener.Listener).Name; strings.HasPrefix(n, "100.") {
			names = append(names, n)
		}
	}
	if want := []string{"100.64.0.10_5432", "100.64.0.11_5432", "100.64.0.10_8080", "100.64.0.11_8080"}; !slices.Equal(names, want) {
		t.Errorf("per-pod listeners %v, want %v", names, want)
	}
	for _, r := range g.Clusters {
		c := r.(*cluster.Cluster)
		if c.Name != OutboundCluster(5432, "", host) {
			continue
		}
		if c.GetType() != cluster.Cluster_ORIGINAL_DST || c.GetLbPolicy() != cluster.Cluster_CLUSTER_PROVIDED {
			t.Errorf("%s: type %s, lb %s; want ORIGINAL_DST, CLUSTER_PROVIDED", c.Name, c.GetType(), c.GetLbPolicy())
		}
		if !strings.Contains(c.GetTransportSocket().String(), "spiffe://cluster.local/ns/data/sa/db") {
			t.Errorf("%s: not Istio mTLS pinned to the pods' account: %v", c.Name, c.GetTransportSocket())
		}
	}
	for _, r := range g.Endpoints {
		if n := r.(*endpoint.ClusterLoadAssignment).ClusterName; strings.HasPrefix(n, "outbound|") {
			t.Errorf("load assignment %s for an original-destination cluster", n)
		}
	}
	vh := SidecarRoutes("data", "cluster-eks", reg.Services(), nil, "istio-system", "cluster.local", nil)[0].(*route.RouteConfiguration).VirtualHosts[0]
	for _, d := range []string{"*.db.data.svc.cluster.local", "*.db:8080", "db"} {
		if !slices.Contains(vh.Domains, d) {
			t.Errorf("headless virtual host lacks %s: %v", d, vh.Domains)
		}
	}

	// A gateway has no per-pod listeners: it balances the pods (EDS), as
	// Istio's routers do.
	gw := &Proxy{Type: Router, ClusterID: "cluster-eks", Network: "network1"}
	for _, r := range Generate(gw, reg, nil, "cluster.local", nil, nil).Clusters {
		if c := r.(*cluster.Cluster); c.Name == OutboundCluster(5432, "", host) && c.GetType() != cluster.Cluster_EDS {
			t.Errorf("a gateway's %s is %s, want EDS", c.Name, c.GetType())
		}
	}

	// Pods without sidecars are called in plaintext.
	reg.SetEndpoints("cluster-eks", host, []registry.Endpoint{pod("100.64.0.10", "network1", "")})
	reg.SetEndpoints("cluster-aks", host, nil)
	for _, r := range Generate(p, reg, nil, "cluster.local", nil, nil).Clusters {
		if c := r.(*cluster.Cluster); c.Name == OutboundCluster(5432, "", host) && c.GetTransportSocket() != nil {
			t.Errorf("mTLS to a headless service without sidecars: %v", c.GetTransportSocket())
		}
	}
	// Except under REGISTRY_ONLY: the cluster dials wherever the client
	// did (Host: x.db... to any address), and plaintext would let it out.
	only := *p
	only.RegistryOnly = true
	for _, r := range Generate(&only, reg, nil, "cluster.local", nil, nil).Clusters {
		if c := r.(*cluster.Cluster); c.Name == OutboundCluster(5432, "", host) && c.GetTransportSocket() == nil {
			t.Error("REGISTRY_ONLY: a headless service's original-destination cluster is plaintext")
		}
	}
}

// meshConfig outboundTrafficPolicy REGISTRY_ONLY: a connection to no known
// service goes to the black hole, a request to no known host is answered
// 502 (Istio's block_all), instead of passing through.
func TestRegistryOnly(t *testing.T) {
	reg := registry.New()
	host := "profile.multicluster.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "multicluster", Name: "profile", Hostname: host, ClusterIP: "100.96.0.20",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	for _, only := range []bool{false, true} {
		g := &Generator{Registry: reg, RegistryOnly: only}
		var chain string
		for _, l := range g.View(&Proxy{Type: Sidecar, ClusterID: "c1"}).Listeners {
			if l := l.(*listener.Listener); l.Name == "virtualOutbound" {
				chain = l.GetDefaultFilterChain().GetName()
			}
		}
		rc := g.Routes(&Proxy{Type: Sidecar, Namespace: "multicluster", ClusterID: "c1"}, reg.Services())[0].(*route.RouteConfiguration)
		last := rc.VirtualHosts[len(rc.VirtualHosts)-1]
		if only {
			if chain != "BlackHoleFilterChain" || last.Name != "block_all" || last.Routes[0].GetDirectResponse().GetStatus() != 502 {
				t.Errorf("REGISTRY_ONLY: fallthrough chain %s, last virtual host %v", chain, last)
			}
		} else if chain != "PassthroughFilterChain" || last.Name != "allow_any" {
			t.Errorf("ALLOW_ANY: fallthrough chain %s, last virtual host %s", chain, last.Name)
		}
	}
}

// The name table: a service at the proxy's cluster's ClusterIP, one only
// in another cluster at that cluster's, a headless one at its ready pods
// of the proxy's network, and a StatefulSet pod by its own name (the
// proxy's own cluster's pod over another cluster's of the same name).
func TestNameTable(t *testing.T) {
	reg := registry.New()
	svc := func(name, ip string, headless bool) *registry.Service {
		return &registry.Service{Namespace: "ns", Name: name, Hostname: name + ".ns.svc.cluster.local", ClusterIP: ip, Headless: headless,
			Ports: []registry.Port{{Name: "tcp", Port: 5432, Protocol: "TCP"}}}
	}
	reg.SetService("c1", "web.ns.svc.cluster.local", svc("web", "100.96.0.5", false))
	reg.SetService("c2", "web.ns.svc.cluster.local", svc("web", "100.97.0.5", false))
	reg.SetService("c2", "only.ns.svc.cluster.local", svc("only", "100.97.0.9", false))
	for _, c := range []string{"c1", "c2"} {
		reg.SetService(c, "db.ns.svc.cluster.local", svc("db", "", true))
	}
	pod := func(addr, cluster, network, hostname string, ready bool) registry.Endpoint {
		return registry.Endpoint{Address: addr, Cluster: cluster, Network: network, Hostname: hostname, Ready: ready, Ports: map[string]int32{"tcp": 5432}}
	}
	reg.SetEndpoints("c1", "db.ns.svc.cluster.local", []registry.Endpoint{pod("100.64.0.1", "c1", "n1", "db-0", true), pod("100.64.0.2", "c1", "n1", "db-1", false)})
	reg.SetEndpoints("c2", "db.ns.svc.cluster.local", []registry.Endpoint{pod("100.65.0.1", "c2", "n1", "db-0", true), pod("100.66.0.1", "c2", "n2", "db-2", true)})
	tb := NameTable(&Proxy{ClusterID: "c1", Network: "n1"}, reg, reg.Services())
	got := map[string]string{}
	for h, n := range tb {
		var ips []string
		for _, ip := range n.IPs {
			ips = append(ips, ip.String())
		}
		got[h] = strings.Join(ips, ",")
	}
	want := map[string]string{
		"web.ns.svc.cluster.local":     "100.96.0.5",
		"only.ns.svc.cluster.local":    "100.97.0.9",
		"db.ns.svc.cluster.local":      "100.64.0.1,100.65.0.1",
		"db-0.db.ns.svc.cluster.local": "100.64.0.1",
	}
	if !maps.Equal(got, want) {
		t.Errorf("name table %v, want %v", got, want)
	}
	if n := tb["db-0.db.ns.svc.cluster.local"]; n.Shortname != "db-0.db" || n.Namespace != "ns" || n.Registry != "Kubernetes" {
		t.Errorf("pod entry %+v", n)
	}
	// A service only in c2 whose ClusterIP a c1 service has too: the
	// local one keeps the address, the other name gets none.
	reg.SetService("c2", "audit.ns.svc.cluster.local", svc("audit", "100.96.0.5", false))
	tb = NameTable(&Proxy{ClusterID: "c1", Network: "n1"}, reg, reg.Services())
	if n, ok := tb["audit.ns.svc.cluster.local"]; ok {
		t.Errorf("audit (c2 only) resolves to %v, the address of c1's web", n.IPs)
	}
	if n := tb["web.ns.svc.cluster.local"]; len(n.IPs) != 1 || n.IPs[0].String() != "100.96.0.5" {
		t.Errorf("web lost its address: %+v", n)
	}
}

// A MESH_EXTERNAL ServiceEntry host: its cluster calls its endpoints in
// plaintext, its routes answer to the host alone (no Kubernetes short
// names) and its address, a TCP port listens on its address, and the
// name table gives the address under the "External" registry.
func TestServiceEntryService(t *testing.T) {
	reg := registry.New()
	host := "registry.example.test"
	reg.ReplaceCluster("ServiceEntry", registry.Shard{
		Services: map[string]*registry.Service{host: {Namespace: "shop", Name: host, Hostname: host, ClusterIP: "240.240.0.9", FromServiceEntry: true, MeshExternal: true,
			Ports: []registry.Port{{Name: "http", Port: 5000, Protocol: "TCP", AppProtocol: "http"}, {Name: "tls", Port: 443, Protocol: "TCP", AppProtocol: "tls"}}}},
		Endpoints: map[string][]registry.Endpoint{host: {{Address: "198.18.0.2", Ports: map[string]int32{"http": 5000, "tls": 443}, Ready: true}}},
	})
	p := &Proxy{Type: Sidecar, ClusterID: "cluster-eks", Network: "network1", TrustDomains: []string{"cluster.local"}}
	g := Generate(p, reg, nil, "cluster.local", nil, nil)
	found := false
	for _, l := range g.Listeners {
		found = found || l.(*listener.Listener).Name == "240.240.0.9_443"
	}
	if !found {
		t.Error("no listener on the entry's address for its TLS port")
	}
	// Without DNS proxying the app dials the host's real address: its
	// TLS port is routed by SNI on 0.0.0.0_443, the rest passes through.
	var sni *listener.Listener
	for _, l := range g.Listeners {
		if l := l.(*listener.Listener); l.Name == "0.0.0.0_443" {
			sni = l
		}
	}
	if sni == nil || len(sni.FilterChains) != 1 || !slices.Equal(sni.FilterChains[0].GetFilterChainMatch().GetServerNames(), []string{host}) ||
		sni.GetDefaultFilterChain().GetName() != "PassthroughFilterChain" {
		t.Errorf("0.0.0.0_443: %v", sni)
	}
	for _, r := range g.Endpoints {
		if cla := r.(*endpoint.ClusterLoadAssignment); cla.ClusterName == OutboundCluster(5000, "", host) {
			md := cla.Endpoints[0].LbEndpoints[0].GetMetadata().GetFilterMetadata()
			if _, mtls := md["envoy.transport_socket_match"]; mtls {
				t.Error("an external endpoint matches the mTLS transport")
			}
		}
	}
	vh := SidecarRoutes("shop", "cluster-eks", reg.Services(), nil, "istio-system", "cluster.local", nil)[0].(*route.RouteConfiguration).VirtualHosts[0]
	if want := []string{host, host + ":5000", "240.240.0.9", "240.240.0.9:5000"}; !slices.Equal(vh.Domains, want) {
		t.Errorf("domains %v, want %v", vh.Domains, want)
	}
	if n := NameTable(p, reg, reg.Services())[host]; n.Registry != "External" || n.Shortname != "" || len(n.IPs) != 1 || n.IPs[0].String() != "240.240.0.9" {
		t.Errorf("name table entry %+v", n)
	}
}

// Another namespace's service naming a pod's address (a hand-made
// EndpointSlice, a WorkloadEntry) does not change how that pod's ports
// are served.
func TestInboundIndexByNamespace(t *testing.T) {
	reg := registry.New()
	for _, s := range []struct{ ns, port string }{{"prod", "tcp-db"}, {"evil", "http-db"}} {
		h := "db." + s.ns + ".svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: s.ns, Name: "db", Hostname: h, ClusterIP: "10.96.0.1",
			Ports: []registry.Port{{Name: s.port, Port: 5432, Protocol: "TCP", AppProtocol: strings.SplitN(s.port, "-", 2)[0]}}})
		reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.0.0.7", Ports: map[string]int32{s.port: 5432}, Namespace: s.ns, Ready: true}})
	}
	idx := NewInboundIndex(reg, reg.Services())
	if got := idx.For("prod", "10.0.0.7")[5432].Protocol; got != ProtoTCP {
		t.Errorf("prod's database port is served as %q, want tcp (evil's http service must not count)", got)
	}
}

// An index patched for the hosts whose endpoints changed answers as one
// built again from the whole registry: pods that joined, left, moved
// ports or are shared by several services of different protocols.
func TestInboundIndexPatchedMatchesRebuilt(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	protos := []string{"http", "http2", "tcp", "grpc", ""}
	reg := registry.New()
	var services []*registry.Service
	for i := range 12 {
		ns := fmt.Sprint("ns-", i%3)
		h := fmt.Sprintf("svc-%d.%s.svc.cluster.local", i, ns)
		svc := &registry.Service{Namespace: ns, Name: fmt.Sprint("svc-", i), Hostname: h, Ports: []registry.Port{
			{Name: "a", Port: 80, Protocol: "TCP", AppProtocol: protos[i%len(protos)]},
			{Name: "b", Port: 81, Protocol: []string{"TCP", "UDP"}[i%2], AppProtocol: protos[(i+1)%len(protos)]}}}
		reg.SetService("c1", h, svc)
		services = append(services, svc)
	}
	endpoints := func() []registry.Endpoint {
		var eps []registry.Endpoint
		for range rnd.IntN(5) {
			e := registry.Endpoint{Address: fmt.Sprint("10.0.0.", rnd.IntN(8)), Ports: map[string]int32{"a": int32(8080 + rnd.IntN(2))}, Ready: true}
			if rnd.IntN(2) == 0 {
				e.Ports["b"] = 9090
			}
			if rnd.IntN(4) == 0 {
				e.Namespace = "ns-0" // a WorkloadEntry of another namespace
			}
			eps = append(eps, e)
		}
		return eps
	}
	for _, svc := range services {
		reg.SetEndpoints("c1", svc.Hostname, endpoints())
	}
	idx := NewInboundIndex(reg, services)
	for round := range 50 {
		hosts := map[string]bool{}
		for range 1 + rnd.IntN(3) {
			h := services[rnd.IntN(len(services))].Hostname
			hosts[h] = true
			reg.SetEndpoints("c1", h, endpoints())
		}
		old := idx
		oldPorts := map[string]string{}
		for k, e := range old.entries {
			oldPorts[k] = e.ports.Key()
		}
		idx = idx.Patched(reg, services, hosts)
		want := NewInboundIndex(reg, services)
		for ns := range 3 {
			for a := range 8 {
				n, addr := fmt.Sprint("ns-", ns), fmt.Sprint("10.0.0.", a)
				if got, w := idx.For(n, addr).Key(), want.For(n, addr).Key(); got != w {
					t.Fatalf("round %d: %s/%s patched %q, rebuilt %q", round, n, addr, got, w)
				}
			}
		}
		for k, e := range old.entries {
			if e.ports.Key() != oldPorts[k] {
				t.Fatalf("round %d: patching changed the index it was patched from at %s", round, k)
			}
		}
	}
}
