package proxyview

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Config is what generation reads of the Istio configuration.
type Config interface {
	Gateways() []*networkingv1.Gateway
	VirtualServices() []*networkingv1.VirtualService
	DestinationRules() []*networkingv1.DestinationRule
	PeerAuthentications() []*securityv1.PeerAuthentication
	AuthorizationPolicies() []*securityv1.AuthorizationPolicy
	RequestAuthentications() []*securityv1.RequestAuthentication
	Sidecars() []*networkingv1.Sidecar
}

// autoPassthroughALPN is what an AUTO_PASSTHROUGH chain accepts: Istio mTLS only.
var autoPassthroughALPN = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}

// routerConfig builds a router's listeners, routes and TLS secrets from
// the Gateways that select it. AUTO_PASSTHROUGH servers route by SNI
// outbound_.PORT_._.HOST to the SNI-named clusters; PASSTHROUGH servers by
// the tls routes of the VirtualServices bound to the Gateway; HTTP and
// HTTPS servers (TLS terminated with the credentialName secret) by their
// http routes. A server port that is a port of the router's Service is
// served on the Service's target port.
func routerConfig(p *Proxy, reg *registry.Registry, cfg Config, services []*registry.Service, drs map[string]*networkingv1.DestinationRule, domain string, warn func(string)) (listeners, routes, secrets []types.Resource) {
	if cfg == nil {
		return nil, nil, nil
	}
	in := &ingress{p: p, cfg: cfg, vss: oldestFirst(cfg.VirtualServices()), domain: domain, warn: warn, ports: servicePorts(services), hash: hashPolicies(drs),
		http: map[uint32]*route.RouteConfiguration{}, secrets: map[string]*tlsv3.Secret{},
		authz: ResolveAuthz(cfg.AuthorizationPolicies(), p.RootNamespace, p.Namespace, p.Labels, p.TrustDomains, warn),
		jwt:   ResolveJWT(cfg.RequestAuthentications(), p.RootNamespace, p.Namespace, p.Labels, p.JWKS, warn)}
	target := listenPorts(p, reg, services)
	chains := map[uint32][]*listener.FilterChain{}
	inspect := map[uint32]bool{}
	for _, gw := range oldestFirst(cfg.Gateways()) {
		if len(gw.Spec.Selector) == 0 || !labels.SelectorFromSet(gw.Spec.Selector).Matches(labels.Set(p.Labels)) {
			continue
		}
		for _, srv := range gw.Spec.Servers {
			if srv.GetPort() == nil {
				continue
			}
			port := srv.GetPort().GetNumber()
			listen := port
			if t, ok := target[port]; ok {
				listen = t
			}
			var add []*listener.FilterChain
			switch {
			case isHTTPServer(srv) && strings.EqualFold(srv.GetPort().GetProtocol(), "HTTPS"):
				add = []*listener.FilterChain{in.httpsChain(gw, srv, listen)}
				inspect[listen] = true
			case isHTTPServer(srv):
				add = []*listener.FilterChain{in.httpChain(gw, srv, listen)}
			case srv.GetTls().GetMode() == apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH:
				add = autoPassthroughChains(srv.GetHosts(), services, drs)
				inspect[listen] = true
			case srv.GetTls() != nil && srv.GetTls().GetMode() == apinetworking.ServerTLSSettings_PASSTHROUGH:
				add = passthroughChains(gw, port, cfg.VirtualServices(), domain)
				for _, c := range add {
					if c != nil {
						c.Filters = append(in.authz.networkFilters(), c.Filters...)
					}
				}
				inspect[listen] = true
			default:
				warn(fmt.Sprintf("Gateway %s/%s server %d: protocol %s with tls mode %s is not supported; server skipped",
					gw.Namespace, gw.Name, port, srv.GetPort().GetProtocol(), srv.GetTls().GetMode()))
			}
			for _, c := range add {
				if c != nil {
					chains[listen] = append(chains[listen], c)
				}
			}
		}
	}
	ports := make([]uint32, 0, len(chains))
	for p := range chains {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, port := range ports {
		if len(chains[port]) == 0 {
			continue
		}
		l := &listener.Listener{
			Name:         fmt.Sprintf("0.0.0.0_%d", port),
			Address:      socketAddress("0.0.0.0", port),
			FilterChains: chains[port],
		}
		if inspect[port] {
			l.ListenerFilters = []*listener.ListenerFilter{tlsInspector()}
		}
		listeners = append(listeners, l)
	}
	for _, rc := range in.routes {
		routes = append(routes, rc)
	}
	return listeners, routes, in.secretResources()
}

func autoPassthroughChains(hosts []string, services []*registry.Service, drs map[string]*networkingv1.DestinationRule) []*listener.FilterChain {
	var out []*listener.FilterChain
	for _, svc := range services {
		if !hostMatches(hosts, svc.Hostname) {
			continue
		}
		for _, port := range svc.Ports {
			if port.Protocol == "UDP" {
				continue
			}
			subsets := []string{""}
			var defined []*apinetworking.Subset
			if dr := drs[svc.Hostname]; dr != nil {
				defined = dr.Spec.GetSubsets()
			}
			for _, ss := range defined {
				if ss.GetName() != "" {
					subsets = append(subsets, ss.GetName())
				}
			}
			for _, subset := range subsets {
				sni := SNI(port.Port, subset, svc.Hostname)
				out = append(out, &listener.FilterChain{
					Name:             sni,
					FilterChainMatch: &listener.FilterChainMatch{ServerNames: []string{sni}, ApplicationProtocols: autoPassthroughALPN},
					Filters:          []*listener.Filter{tcpProxy(sni, sni)},
				})
			}
		}
	}
	return out
}

// passthroughChains routes a PASSTHROUGH server by the SNI of the tls
// routes of VirtualServices bound to the gateway.
func passthroughChains(gw *networkingv1.Gateway, port uint32, vss []*networkingv1.VirtualService, domain string) []*listener.FilterChain {
	var out []*listener.FilterChain
	for _, vs := range vss {
		if !boundTo(vs, gw) {
			continue
		}
		for _, route := range vs.Spec.GetTls() {
			for _, m := range route.GetMatch() {
				if m.GetPort() != 0 && m.GetPort() != port {
					continue
				}
				if len(route.GetRoute()) == 0 {
					continue
				}
				dst := route.GetRoute()[0].GetDestination()
				dstPort := dst.GetPort().GetNumber()
				if dstPort == 0 {
					dstPort = port
				}
				cluster := OutboundCluster(int32(dstPort), dst.GetSubset(), fqdn(dst.GetHost(), vs.Namespace, domain))
				var names []string
				for _, h := range m.GetSniHosts() {
					if h != "*" {
						names = append(names, h)
					}
				}
				chain := &listener.FilterChain{
					Name:    vs.Namespace + "/" + vs.Name + "/" + strconv.Itoa(int(port)),
					Filters: []*listener.Filter{tcpProxy(cluster, cluster)},
				}
				if len(names) > 0 {
					chain.FilterChainMatch = &listener.FilterChainMatch{ServerNames: names}
				}
				out = append(out, chain)
			}
		}
	}
	return out
}

// boundTo reports whether a VirtualService lists the gateway ("name" in its
// own namespace, or "namespace/name").
func boundTo(vs *networkingv1.VirtualService, gw *networkingv1.Gateway) bool {
	return slices.ContainsFunc(vs.Spec.GetGateways(), func(g string) bool { return sameGateway(g, vs.Namespace, gw.Namespace+"/"+gw.Name) })
}

// fqdn expands a short host the way Istio does, from the object's namespace.
func fqdn(host, namespace, domain string) string {
	if strings.Contains(host, ".") {
		return host
	}
	return host + "." + namespace + ".svc." + domain
}

// hostMatches applies Gateway server hosts: "*", "*.local", "ns/*.local", exact names.
func hostMatches(hosts []string, hostname string) bool {
	return slices.ContainsFunc(hosts, func(h string) bool {
		if _, after, found := strings.Cut(h, "/"); found {
			h = after
		}
		return hostCovers(h, hostname)
	})
}

func tcpProxy(statPrefix, cluster string) *listener.Filter {
	return tcpFilter(tcpProxyConfig(statPrefix, cluster))
}

func tcpProxyConfig(statPrefix, cluster string) *tcpproxy.TcpProxy {
	return &tcpproxy.TcpProxy{StatPrefix: statPrefix, ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster}}
}

func tcpFilter(t *tcpproxy.TcpProxy) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(t)}}
}

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}
