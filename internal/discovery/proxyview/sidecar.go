package proxyview

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldst "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Istio's ports and special clusters of a sidecar.
const (
	OutboundPort = 15001
	InboundPort  = 15006

	PassthroughCluster        = "PassthroughCluster"
	BlackHoleCluster          = "BlackHoleCluster"
	InboundPassthroughCluster = "InboundPassthroughCluster"
)

// httpProtocols are the declared protocols routed at L7.
var httpProtocols = map[string]bool{"http": true, "http2": true, "grpc": true, "grpc-web": true}

// IsHTTP reports whether a service port is routed as HTTP.
func IsHTTP(p registry.Port) bool { return httpProtocols[p.AppProtocol] }

// IsAuto reports a port whose protocol is undeclared: the proxy sniffs it,
// HTTP when the first line says so, TCP otherwise (Istio's auto-detection).
func IsAuto(p registry.Port) bool { return p.AppProtocol == "" }

// Sniffed application protocols of a plaintext connection (http_inspector)
// and, inside Istio mTLS, the ALPN an HTTP client offers.
var (
	sniffedHTTP = []string{"http/1.0", "http/1.1", "h2c"}
	mtlsHTTP    = []string{"istio-http/1.0", "istio-http/1.1", "istio-h2"}
)

func httpInspector() *listener.ListenerFilter {
	return &listener.ListenerFilter{Name: "envoy.filters.listener.http_inspector",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&httpinspector.HttpInspector{})}}
}

// tlsInspector reads a connection's ClientHello (SNI, ALPN) for chains
// to match on.
func tlsInspector() *listener.ListenerFilter {
	return &listener.ListenerFilter{Name: "envoy.filters.listener.tls_inspector",
		ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})}}
}

// rdsManager is an HTTP connection manager routed by RDS route name.
func rdsManager(statPrefix, routeName string, router *hcm.HttpFilter, paths PathNormalization) *hcm.HttpConnectionManager {
	return withPaths(paths, &hcm.HttpConnectionManager{
		StatPrefix:     statPrefix,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{RouteConfigName: routeName, ConfigSource: adsSource()}},
		HttpFilters:    []*hcm.HttpFilter{corsFilter(), faultFilter(), router},
		UpgradeConfigs: websocket(),
	})
}

// websocket lets requests switch to WebSocket, as Istio's connection
// managers all do; the proxy refuses other upgrades (h2c above all).
func websocket() []*hcm.HttpConnectionManager_UpgradeConfig {
	return []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
}

// PathNormalization is meshConfig pathNormalization: how request paths are
// normalized before routing and policy, and as the backend receives them.
type PathNormalization = meshv1alpha1.MeshConfig_ProxyPathNormalization_NormalizationType

// withPaths writes a normalization option into a connection manager as
// Istio does.
func withPaths(n PathNormalization, m *hcm.HttpConnectionManager) *hcm.HttpConnectionManager {
	switch n {
	case meshv1alpha1.MeshConfig_ProxyPathNormalization_NONE:
	case meshv1alpha1.MeshConfig_ProxyPathNormalization_MERGE_SLASHES:
		m.NormalizePath, m.MergeSlashes = wrapperspb.Bool(true), true
	case meshv1alpha1.MeshConfig_ProxyPathNormalization_DECODE_AND_MERGE_SLASHES:
		m.NormalizePath, m.MergeSlashes = wrapperspb.Bool(true), true
		m.PathWithEscapedSlashesAction = hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD
	default: // DEFAULT and BASE
		m.NormalizePath = wrapperspb.Bool(true)
	}
	return m
}

// InboundCluster is Istio's name for the local app behind a sidecar: inbound|PORT||.
func InboundCluster(port int32) string { return fmt.Sprintf("inbound|%d||", port) }

func routerFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}
}

// sidecarOutbound builds what every sidecar of a network view shares
// (Istio's shapes): virtualOutbound on 15001 dispatches by original
// destination to per-port listeners (HTTP ports share 0.0.0.0_PORT with RDS
// route "PORT", see SidecarRoutes; TCP ports get CLUSTERIP_PORT), plus the
// passthrough and black-hole clusters. A TCP port's listener sits on the
// service's ClusterIP in the proxy's cluster (clusterID); a headless
// service has none, and gets one listener per pod address (podAddrs) as
// Istio builds them, whose connections keep their destination.
func sidecarOutbound(services []*registry.Service, clusterID string, podAddrs func(*registry.Service, registry.Port) []string,
	vss []*networkingv1.VirtualService, drs map[string]*networkingv1.DestinationRule, domain string, paths PathNormalization, registryOnly bool) (listeners, clusters []types.Resource) {
	router := routerFilter()
	byHost := meshVirtualServices(vss, domain, func(vs *networkingv1.VirtualService) bool { return len(vs.Spec.GetTcp()) > 0 })
	byTLS := meshVirtualServices(vss, domain, func(vs *networkingv1.VirtualService) bool { return len(vs.Spec.GetTls()) > 0 })
	httpPorts := map[int32]bool{}
	var tcp []types.Resource
	taken := map[string]bool{}
	// TLS ports of ServiceEntry hosts by SNI: an app that resolved the
	// host's real address (no DNS proxying) is still routed by the name
	// in its ClientHello, as Istio's 0.0.0.0_PORT chains do.
	bySNI := map[int32][]*listener.FilterChain{}
	for _, svc := range ownFirst(services, clusterID) {
		for _, port := range svc.Ports {
			if port.Protocol == "UDP" {
				continue
			}
			if IsHTTP(port) {
				httpPorts[port.Port] = true
				continue
			}
			if svc.FromServiceEntry && (port.AppProtocol == "tls" || port.AppProtocol == "https") {
				cl := OutboundCluster(port.Port, "", svc.Hostname)
				bySNI[port.Port] = append(bySNI[port.Port], &listener.FilterChain{Name: svc.Hostname,
					FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{svc.Hostname}, TransportProtocol: "tls"},
					Filters:          []*listener.Filter{tcpProxy(cl, cl)}})
			}
			addrs := []string{svc.AddressFor(clusterID)}
			if svc.HeadlessFor(clusterID) && podAddrs != nil {
				addrs = podAddrs(svc, port)
			}
			for _, vip := range addrs {
				// One listener per address and port: the first service
				// keeps it (see ownFirst; a pod behind two headless
				// services is reached through the first's).
				if name := fmt.Sprintf("%s_%d", vip, port.Port); vip != "" && !taken[name] {
					taken[name] = true
					tcp = append(tcp, tcpListener(svc, port, vip, byHost, byTLS, drs, domain, router, paths))
				}
			}
		}
	}
	for _, port := range sortedPorts(httpPorts) {
		name := strconv.Itoa(int(port))
		manager := rdsManager("outbound_0.0.0.0_"+name, name, router, paths)
		listeners = append(listeners, &listener.Listener{
			Name:             "0.0.0.0_" + name,
			Address:          socketAddress("0.0.0.0", uint32(port)),
			BindToPort:       wrapperspb.Bool(false),
			TrafficDirection: core.TrafficDirection_OUTBOUND,
			FilterChains:     []*listener.FilterChain{{Filters: []*listener.Filter{httpManager(manager)}}},
		})
	}
	listeners = append(listeners, tcp...)
	// What matches no service: out as dialled (ALLOW_ANY), or nowhere
	// (REGISTRY_ONLY), as Istio names them.
	unknown := &listener.FilterChain{Name: "PassthroughFilterChain", Filters: []*listener.Filter{tcpProxy(PassthroughCluster, PassthroughCluster)}}
	if registryOnly {
		unknown = &listener.FilterChain{Name: "BlackHoleFilterChain", Filters: []*listener.Filter{tcpProxy(BlackHoleCluster, BlackHoleCluster)}}
	}
	for _, port := range sortedPorts(bySNI) {
		if httpPorts[port] {
			continue // an HTTP port's listener is there already (TLS to it passes through)
		}
		listeners = append(listeners, &listener.Listener{
			Name:               fmt.Sprintf("0.0.0.0_%d", port),
			Address:            socketAddress("0.0.0.0", uint32(port)),
			BindToPort:         wrapperspb.Bool(false),
			TrafficDirection:   core.TrafficDirection_OUTBOUND,
			ListenerFilters:    []*listener.ListenerFilter{tlsInspector()},
			FilterChains:       bySNI[port],
			DefaultFilterChain: unknown,
		})
	}
	listeners = append(listeners, &listener.Listener{
		Name:               "virtualOutbound",
		Address:            socketAddress("0.0.0.0", OutboundPort),
		UseOriginalDst:     wrapperspb.Bool(true),
		TrafficDirection:   core.TrafficDirection_OUTBOUND,
		DefaultFilterChain: unknown,
	})
	passthrough := func(name string) *cluster.Cluster {
		c := &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
			LbPolicy: cluster.Cluster_CLUSTER_PROVIDED, ConnectTimeout: durationpb.New(10 * time.Second)}
		setUpstreamProtocol(c, "", nil) // the client's own
		return c
	}
	clusters = append(clusters, passthrough(PassthroughCluster), passthrough(InboundPassthroughCluster),
		&cluster.Cluster{Name: BlackHoleCluster, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}, ConnectTimeout: durationpb.New(10 * time.Second)},
	)
	return listeners, clusters
}

// ownFirst orders services present in the proxy's cluster before those
// known only from other clusters, whose ClusterIPs (from another
// cluster's service range) may equal a local service's: the local one
// keeps that address's listener and route domain.
func ownFirst(services []*registry.Service, cluster string) []*registry.Service {
	out := make([]*registry.Service, 0, len(services))
	var foreign []*registry.Service
	for _, s := range services {
		if _, ok := s.ClusterIPs[cluster]; ok || len(s.ClusterIPs) == 0 {
			out = append(out, s)
		} else {
			foreign = append(foreign, s)
		}
	}
	return append(out, foreign...)
}

// tcpListener is a TCP or sniffed port's outbound listener on one address
// (a ClusterIP, or a headless service's pod): VirtualService TCP and TLS
// routes, else the port's cluster; on a sniffed port, HTTP through the
// port's routes.
func tcpListener(svc *registry.Service, port registry.Port, vip string, byHost, byTLS map[string]*networkingv1.VirtualService,
	drs map[string]*networkingv1.DestinationRule, domain string, router *hcm.HttpFilter, paths PathNormalization) *listener.Listener {
	cl := OutboundCluster(port.Port, "", svc.Hostname)
	l := &listener.Listener{
		Name:             fmt.Sprintf("%s_%d", vip, port.Port),
		Address:          socketAddress(vip, uint32(port.Port)),
		BindToPort:       wrapperspb.Bool(false),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
	}
	// consistentHash on a TCP port hashes by the client's address.
	bySource := policyFor(drs[svc.Hostname], port.Port, func(string) {}).lb.GetConsistentHash().GetUseSourceIp()
	l.FilterChains = []*listener.FilterChain{{Filters: []*listener.Filter{tcpRouteFilter(byHost[svc.Hostname], port.Port, cl, domain, bySource)}}}
	if chains := tlsRouteChains(byTLS[svc.Hostname], port.Port, cl, domain); len(chains) > 0 {
		// TLS routes: by the SNI of the client's ClientHello.
		l.ListenerFilters = append(l.ListenerFilters, tlsInspector())
		l.FilterChains = append(chains, l.FilterChains...)
	}
	if IsAuto(port) {
		// Sniffed: HTTP goes through the port's routes, the rest is TCP.
		name := strconv.Itoa(int(port.Port))
		l.ListenerFilters = append(l.ListenerFilters, httpInspector())
		l.FilterChains = append([]*listener.FilterChain{{
			Name:             "http",
			FilterChainMatch: &listener.FilterChainMatch{ApplicationProtocols: sniffedHTTP},
			Filters:          []*listener.Filter{httpManager(rdsManager("outbound_"+vip+"_"+name, name, router, paths))},
		}}, l.FilterChains...)
	}
	return l
}

// SidecarRoutes builds the RDS route "PORT" of every HTTP port for sidecars
// of one namespace (which decides the short names a service answers to):
// a virtual host per service with the routes of the VirtualService that
// names it (mesh gateway), else one default route with Istio's default
// retries and no timeout; and allow_any to the passthrough cluster. The
// services' addresses are those of cluster, the sidecars'.
func SidecarRoutes(namespace, cluster string, services []*registry.Service, cfg Config, root, domain string, warn func(string)) []types.Resource {
	if warn == nil {
		warn = func(string) {}
	}
	var vss []*networkingv1.VirtualService
	if cfg != nil {
		vss = cfg.VirtualServices()
	}
	hash := hashPolicies(destinationRules(cfg, domain, root, namespace, services))
	byHost := meshVirtualServices(vss, domain, func(vs *networkingv1.VirtualService) bool { return len(vs.Spec.GetHttp()) > 0 })
	vhosts := map[int32][]*route.VirtualHost{}
	// A domain twice in one route table is refused: the first service
	// keeps it (ownFirst: a local service's ClusterIP over a foreign
	// service's equal one).
	taken := map[int32]map[string]bool{}
	for _, svc := range ownFirst(services, cluster) {
		for _, port := range svc.Ports {
			if port.Protocol == "UDP" || !(IsHTTP(port) || IsAuto(port)) {
				continue
			}
			var routes []*route.Route
			if vs := byHost[svc.Hostname]; vs != nil {
				routes = vsRoutes(vs, meshScope(namespace, port.Port, hash), domain, warn)
			} else {
				routes = []*route.Route{{
					Name:  "default",
					Match: matchAll,
					Action: &route.Route_Route{Route: &route.RouteAction{
						ClusterSpecifier: &route.RouteAction_Cluster{Cluster: OutboundCluster(port.Port, "", svc.Hostname)},
						Timeout:          noTimeout,
						RetryPolicy:      istioRetry,
						HashPolicy:       hash(svc.Hostname, port.Port),
					}},
				}}
			}
			if taken[port.Port] == nil {
				taken[port.Port] = map[string]bool{}
			}
			var ds []string
			for _, d := range domains(svc, port.Port, namespace, cluster) {
				if !taken[port.Port][d] {
					taken[port.Port][d] = true
					ds = append(ds, d)
				}
			}
			vhosts[port.Port] = append(vhosts[port.Port], &route.VirtualHost{
				Name:    fmt.Sprintf("%s:%d", svc.Hostname, port.Port),
				Domains: ds,
				Routes:  routes,
			})
		}
	}
	ports := map[int32]bool{}
	for p := range vhosts {
		ports[p] = true
	}
	var routes []types.Resource
	for _, port := range sortedPorts(ports) {
		vh := append(vhosts[port], &route.VirtualHost{Name: "allow_any", Domains: []string{"*"}, Routes: []*route.Route{{
			Name:   "allow_any",
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: PassthroughCluster}, Timeout: durationpb.New(0)}},
		}}})
		routes = append(routes, &route.RouteConfiguration{Name: strconv.Itoa(int(port)), VirtualHosts: vh, ValidateClusters: wrapperspb.Bool(false)})
	}
	return routes
}

// sortedPorts are a map's port keys in order.
func sortedPorts[V any](m map[int32]V) []int32 {
	return slices.Sorted(maps.Keys(m))
}

// Inbound protocols of a port.
const (
	ProtoTCP   = "tcp"
	ProtoHTTP  = "http"
	ProtoHTTP2 = "http2" // http2, grpc, grpc-web: HTTP/2 to the app
	ProtoAuto  = "auto"  // sniffed
)

// InboundPorts maps each port the services of a workload target on it
// (by endpoint address), or its Sidecar's ingress listeners name, to how
// it is served.
type InboundPorts map[int32]AppPort

// AppPort is how one inbound port is served: its protocol (http, http2,
// tcp or auto) and where the app is ("": 127.0.0.1 on the same port; a
// Sidecar's ingress defaultEndpoint otherwise).
type AppPort struct{ Protocol, Endpoint string }

// Key names the port set, so sidecars with the same ports share an inbound listener.
func (ip InboundPorts) Key() string {
	var b strings.Builder
	for _, p := range sortedPorts(ip) {
		fmt.Fprintf(&b, "%d:%s>%s,", p, ip[p].Protocol, ip[p].Endpoint)
	}
	return b.String()
}

// protocolOf is a service port's inbound protocol.
func protocolOf(p registry.Port) string {
	switch {
	case isHTTP2(p.AppProtocol):
		return ProtoHTTP2
	case IsHTTP(p):
		return ProtoHTTP
	case IsAuto(p):
		return ProtoAuto
	}
	return ProtoTCP
}

// merge keeps the strongest claim when services disagree on a target port:
// HTTP/2, HTTP, then sniffing, then TCP.
func merge(a, b string) string {
	rank := map[string]int{"": 0, ProtoTCP: 1, ProtoAuto: 2, ProtoHTTP: 3, ProtoHTTP2: 4}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

// InboundIndex finds the inbound ports of workloads by namespace and
// address. Once built it does not change: Patched makes the next one for
// an endpoints push, sharing what the change did not touch (rebuilt
// whole, 20,000 endpoints cost ~20 ms of every push).
type InboundIndex struct {
	entries map[string]*inboundEntry // "namespace/address"
	// keys are the entries each hostname's endpoints reach: the ones a
	// change of its endpoints redoes.
	keys map[string][]string
}

// inboundEntry is one workload's ports and what each service gave them.
type inboundEntry struct {
	ports InboundPorts
	from  []portsFrom
}

type portsFrom struct {
	host  string
	ports InboundPorts
}

// For is the inbound ports of the workload of a namespace at an address:
// only its own namespace's services count, so a Service or WorkloadEntry
// of another namespace naming its address cannot change how its ports
// are served.
func (idx InboundIndex) For(namespace, address string) InboundPorts {
	if e := idx.entries[namespace+"/"+address]; e != nil {
		return e.ports
	}
	return nil
}

// NewInboundIndex indexes every endpoint of every service by namespace
// and address.
func NewInboundIndex(reg *registry.Registry, services []*registry.Service) InboundIndex {
	idx := InboundIndex{entries: map[string]*inboundEntry{}, keys: map[string][]string{}}
	for _, svc := range services {
		idx.add(reg, svc)
	}
	return idx
}

// Patched is the index with the endpoints of hosts as the registry has
// them now; services is the (unchanged) list the index was built from.
func (idx InboundIndex) Patched(reg *registry.Registry, services []*registry.Service, hosts map[string]bool) InboundIndex {
	if idx.entries == nil {
		return NewInboundIndex(reg, services)
	}
	next := InboundIndex{entries: maps.Clone(idx.entries), keys: maps.Clone(idx.keys)}
	for h := range hosts {
		for _, k := range idx.keys[h] {
			next.drop(k, h)
		}
		delete(next.keys, h)
	}
	for _, svc := range services {
		if hosts[svc.Hostname] {
			next.add(reg, svc)
		}
	}
	return next
}

// add indexes the ports one service's endpoints target.
func (idx InboundIndex) add(reg *registry.Registry, svc *registry.Service) {
	for _, e := range reg.Endpoints(svc.Hostname) {
		var ports InboundPorts
		for _, sp := range svc.Ports {
			tp, ok := e.Ports[sp.Name]
			if !ok || sp.Protocol == "UDP" {
				continue
			}
			if ports == nil {
				ports = InboundPorts{}
			}
			ports[tp] = AppPort{Protocol: merge(ports[tp].Protocol, protocolOf(sp))}
		}
		if ports == nil {
			continue
		}
		ns := e.Namespace
		if ns == "" {
			ns = svc.Namespace
		}
		key := ns + "/" + e.Address
		var from []portsFrom
		if old := idx.entries[key]; old != nil {
			from = slices.Clone(old.from)
		}
		idx.entries[key] = newInboundEntry(append(from, portsFrom{svc.Hostname, ports}))
		idx.keys[svc.Hostname] = append(idx.keys[svc.Hostname], key)
	}
}

// drop takes what host gave an entry out of it (entries are shared with
// the index patched from: replaced, never changed).
func (idx InboundIndex) drop(key, host string) {
	old := idx.entries[key]
	if old == nil {
		return
	}
	from := slices.DeleteFunc(slices.Clone(old.from), func(f portsFrom) bool { return f.host == host })
	if len(from) == 0 {
		delete(idx.entries, key)
		return
	}
	idx.entries[key] = newInboundEntry(from)
}

// newInboundEntry merges what each service gave a workload: a port two
// services target is served as the most specific protocol of the two.
func newInboundEntry(from []portsFrom) *inboundEntry {
	if len(from) == 1 {
		return &inboundEntry{ports: from[0].ports, from: from}
	}
	ports := InboundPorts{}
	for _, f := range from {
		for tp, ap := range f.ports {
			ports[tp] = AppPort{Protocol: merge(ports[tp].Protocol, ap.Protocol)}
		}
	}
	return &inboundEntry{ports: ports, from: from}
}

// InboundPolicy is what a workload's policies make of its inbound side.
type InboundPolicy struct {
	MTLS  MTLSModes
	Authz Authz
	// TrustDomains are the only ones whose peers mTLS accepts (the mesh's
	// and its aliases); none: any under the mesh's root.
	TrustDomains []string
	// Paths is meshConfig pathNormalization.
	Paths PathNormalization
	// JWT is the workload's RequestAuthentications; nil without any.
	JWT *jwtv3.JwtAuthentication
}

// Key identifies the policy, for sharing generated listeners.
func (p InboundPolicy) Key() string {
	return p.MTLS.Key() + "|" + p.Authz.Key() + "|" + strings.Join(p.TrustDomains, ",") + "|" + p.Paths.String() + "|" + jwtKey(p.JWT)
}

// Inbound builds a sidecar's own part: virtualInbound on 15006 with, for
// each port its services target on the pod, a chain for Istio mTLS unless
// the port's mode is DISABLE and one for plaintext unless it is STRICT,
// both to inbound|PORT|| on 127.0.0.1. Under a STRICT default nothing is
// passed through in plaintext either.
func Inbound(ports InboundPorts, pol InboundPolicy) (*listener.Listener, []types.Resource) {
	modes := pol.MTLS
	httpFilters := append(append(jwtFilters(pol.JWT), pol.Authz.httpFilters()...), routerFilter())
	l4 := pol.Authz.networkFilters()
	auto := false
	var chains []*listener.FilterChain
	var clusters []types.Resource
	for _, n := range sortedPorts(ports) {
		name := InboundCluster(n)
		host, port := "127.0.0.1", uint32(n)
		if ep, err := netip.ParseAddrPort(ports[n].Endpoint); err == nil {
			host, port = ep.Addr().String(), uint32(ep.Port())
		}
		app := &cluster.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
			ConnectTimeout:       durationpb.New(10 * time.Second),
			LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
				LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(host, port)}}}},
			}}},
		}
		switch ports[n].Protocol {
		case ProtoHTTP2:
			setUpstreamProtocol(app, "http2", nil)
		case ProtoAuto:
			setUpstreamProtocol(app, "", nil)
		}
		clusters = append(clusters, app)
		httpFilter := httpManager(withPaths(pol.Paths, &hcm.HttpConnectionManager{
			StatPrefix: fmt.Sprintf("inbound_0.0.0.0_%d", n),
			RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
				Name: name,
				VirtualHosts: []*route.VirtualHost{{Name: "inbound|http|" + strconv.Itoa(int(n)), Domains: []string{"*"}, Routes: []*route.Route{{
					Name:   "default",
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
					Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name}, Timeout: durationpb.New(0)}},
				}}}},
			}},
			HttpFilters:                 httpFilters,
			UpgradeConfigs:              websocket(),
			ForwardClientCertDetails:    hcm.HttpConnectionManager_APPEND_FORWARD,
			SetCurrentClientCertDetails: &hcm.HttpConnectionManager_SetCurrentClientCertDetails{Subject: wrapperspb.Bool(true), Uri: true, Dns: true},
		}))
		tcpFilters := append(slices.Clone(l4), tcpProxy(name, name))
		match := func(transport string, alpn []string) *listener.FilterChainMatch {
			return &listener.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(n)), TransportProtocol: transport, ApplicationProtocols: alpn}
		}
		mode := modes.Mode(n)
		var mtls, plain []*listener.FilterChain
		switch ports[n].Protocol {
		case ProtoHTTP, ProtoHTTP2, ProtoTCP:
			filters := tcpFilters
			if ports[n].Protocol != ProtoTCP {
				filters = []*listener.Filter{httpFilter}
			}
			mtls = []*listener.FilterChain{{Name: name + "-mtls", FilterChainMatch: match("tls", nil), TransportSocket: istioMTLSServer(pol.TrustDomains), Filters: filters}}
			plain = []*listener.FilterChain{{Name: name + "-plaintext", FilterChainMatch: match("raw_buffer", nil), Filters: filters}}
		default:
			// Sniffed: inside mTLS the client's ALPN says HTTP; in
			// plaintext the first line does (http_inspector).
			auto = auto || mode != Strict
			mtls = []*listener.FilterChain{
				{Name: name + "-mtls-http", FilterChainMatch: match("tls", mtlsHTTP), TransportSocket: istioMTLSServer(pol.TrustDomains), Filters: []*listener.Filter{httpFilter}},
				{Name: name + "-mtls", FilterChainMatch: match("tls", nil), TransportSocket: istioMTLSServer(pol.TrustDomains), Filters: tcpFilters}}
			plain = []*listener.FilterChain{
				{Name: name + "-plaintext-http", FilterChainMatch: match("raw_buffer", sniffedHTTP), Filters: []*listener.Filter{httpFilter}},
				{Name: name + "-plaintext", FilterChainMatch: match("raw_buffer", nil), Filters: tcpFilters}}
		}
		if mode != Disable {
			chains = append(chains, mtls...)
		}
		if mode != Strict {
			chains = append(chains, plain...)
		}
	}
	filters := []*listener.ListenerFilter{
		{Name: "envoy.filters.listener.original_dst", ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldst.OriginalDst{})}},
		tlsInspector(),
	}
	if auto {
		filters = append(filters, httpInspector())
	}
	var passthrough *listener.FilterChain
	if modes.Mode(0) != Strict {
		passthrough = &listener.FilterChain{Name: "InboundPassthroughFilterChain",
			Filters: append(slices.Clone(l4), tcpProxy(InboundPassthroughCluster, InboundPassthroughCluster))}
	}
	return &listener.Listener{
		Name:               "virtualInbound",
		Address:            socketAddress("0.0.0.0", InboundPort),
		TrafficDirection:   core.TrafficDirection_INBOUND,
		ListenerFilters:    filters,
		FilterChains:       chains,
		DefaultFilterChain: passthrough,
	}, clusters
}

// istioMTLSServer requires a client certificate from the mesh root, with
// the workload certificate and root from SDS "default" and "ROOTCA"; its
// SPIFFE ID must be in one of trustDomains (any, when none).
func istioMTLSServer(trustDomains []string) *core.TransportSocket {
	ads := adsSource()
	var sans []*tlsv3.SubjectAltNameMatcher
	prefix := func(p string) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}}
	}
	for _, td := range trustDomains {
		sans = append(sans, prefix("spiffe://"+td+"/"))
	}
	if len(sans) == 0 {
		sans = append(sans, prefix("spiffe://"))
	}
	ctx := &tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			AlpnProtocols:                  []string{"h2", "http/1.1"},
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "default", SdsConfig: ads}},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "ROOTCA", SdsConfig: ads},
			}},
		},
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

func httpManager(m *hcm.HttpConnectionManager) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)}}
}

// What every service's default route has alike, one object shared by all
// of them (thousands per route table): generated resources are read,
// never changed, once built.
var (
	matchAll   = &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	noTimeout  = durationpb.New(0)
	istioRetry = defaultRetry()
)

// defaultRetry is Istio's default HTTP retry policy.
func defaultRetry() *route.RetryPolicy {
	return &route.RetryPolicy{
		RetryOn:                       "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
		NumRetries:                    wrapperspb.UInt32(2),
		RetryHostPredicate:            []*route.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
		HostSelectionRetryMaxAttempts: 5,
	}
}

// domains lists the names a service is called by: FQDN and its shorter
// forms (the bare name only from the same namespace), and its ClusterIP in
// the caller's cluster (a headless service's pods' names instead), each
// with and without the port. Only that one:
// clusters' service ranges may overlap, and a domain twice in a route
// table is refused.
func domains(svc *registry.Service, port int32, fromNamespace, cluster string) []string {
	names := []string{svc.Hostname}
	parts := strings.Split(svc.Hostname, ".")
	if len(parts) >= 3 && !svc.FromServiceEntry {
		names = append(names, parts[0]+"."+parts[1], parts[0]+"."+parts[1]+".svc")
		if fromNamespace == svc.Namespace {
			names = append(names, parts[0])
		}
	}
	if svc.HeadlessFor(cluster) && !svc.FromServiceEntry {
		// Headless: a pod is also called by its own name under the
		// service's (a StatefulSet's web-0.web...), as Istio's *.NAME.
		for _, n := range names {
			names = append(names, "*."+n)
		}
	} else if vip := svc.AddressFor(cluster); vip != "" {
		names = append(names, vip)
	}
	var out []string
	for _, n := range names {
		out = append(out, n, net.JoinHostPort(n, strconv.Itoa(int(port))))
	}
	return out
}
