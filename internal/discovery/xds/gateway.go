package xds

import (
	"fmt"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
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
}

// autoPassthroughALPN is what an AUTO_PASSTHROUGH chain accepts: Istio mTLS only.
var autoPassthroughALPN = []string{"istio", "istio-peer-exchange", "istio-http/1.0", "istio-http/1.1", "istio-h2"}

// routerListeners builds a router's listeners from the Gateways that select
// it: AUTO_PASSTHROUGH servers route by SNI outbound_.PORT_._.HOST to the
// SNI-named clusters; PASSTHROUGH servers route by the tls routes of the
// VirtualServices bound to the Gateway. TLS is never terminated.
func routerListeners(p *Proxy, cfg Config, services []*registry.Service, drs map[string]*networkingv1.DestinationRule, domain string) []types.Resource {
	if cfg == nil {
		return nil
	}
	chains := map[uint32][]*listener.FilterChain{}
	for _, gw := range cfg.Gateways() {
		if len(gw.Spec.Selector) == 0 || !labels.SelectorFromSet(gw.Spec.Selector).Matches(labels.Set(p.Labels)) {
			continue
		}
		for _, srv := range gw.Spec.Servers {
			if srv.GetPort() == nil || srv.GetTls() == nil {
				continue // HTTP servers: ingress, built elsewhere
			}
			port := srv.GetPort().GetNumber()
			switch srv.GetTls().GetMode() {
			case apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH:
				chains[port] = append(chains[port], autoPassthroughChains(srv.GetHosts(), services, drs)...)
			case apinetworking.ServerTLSSettings_PASSTHROUGH:
				chains[port] = append(chains[port], passthroughChains(gw, port, cfg.VirtualServices(), domain)...)
			}
		}
	}
	ports := make([]uint32, 0, len(chains))
	for p := range chains {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	var out []types.Resource
	for _, port := range ports {
		if len(chains[port]) == 0 {
			continue
		}
		out = append(out, &listener.Listener{
			Name:    fmt.Sprintf("0.0.0.0_%d", port),
			Address: socketAddress("0.0.0.0", port),
			ListenerFilters: []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector",
				ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspector.TlsInspector{})}}},
			FilterChains: chains[port],
		})
	}
	return out
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
	for _, g := range vs.Spec.GetGateways() {
		ns, name, found := strings.Cut(g, "/")
		if !found {
			ns, name = vs.Namespace, g
		}
		if ns == gw.Namespace && name == gw.Name {
			return true
		}
	}
	return false
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
	for _, h := range hosts {
		if _, after, found := strings.Cut(h, "/"); found {
			h = after
		}
		switch {
		case h == "*" || h == hostname:
			return true
		case strings.HasPrefix(h, "*.") && strings.HasSuffix(hostname, h[1:]):
			return true
		}
	}
	return false
}

func tcpProxy(statPrefix, cluster string) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxy.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxy.TcpProxy_Cluster{Cluster: cluster},
	})}}
}

func socketAddress(addr string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: addr, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}
