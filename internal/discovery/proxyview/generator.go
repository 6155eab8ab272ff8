package proxyview

import (
	"log/slog"
	"sync"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Generator generates proxies' views from one registry and one Istio
// configuration, with the mesh's settings: all that delivery (package
// xds) asks of generation.
type Generator struct {
	Registry *registry.Registry
	// Config is the Istio configuration; may be nil.
	Config Config
	// Domain is the cluster DNS domain (default cluster.local).
	Domain string
	// RootNamespace holds mesh-wide policy (meshConfig.rootNamespace).
	RootNamespace string
	// TrustDomains are the mesh's trust domain and its aliases: clients
	// pin their servers' SPIFFE IDs in them, servers accept only them.
	TrustDomains []string
	// Paths is meshConfig pathNormalization (DEFAULT is BASE).
	Paths PathNormalization
	// NumTrustedProxies is meshConfig defaultConfig.gatewayTopology.numTrustedProxies.
	NumTrustedProxies uint32
	// JWKS gives the key set of a jwksUri (package jwks); nil refuses
	// tokens whose keys are only known by URI.
	JWKS func(uri string) string
	// RegistryOnly is meshConfig outboundTrafficPolicy REGISTRY_ONLY.
	RegistryOnly bool
	// AccessLog is meshConfig accessLogFile and accessLogEncoding (nil:
	// none), on every listener's filters.
	AccessLog *AccessLog
	// Tracing is meshConfig's tracing provider (nil: none), on every
	// HTTP connection manager.
	Tracing *Tracing
	Log     *slog.Logger

	warned     sync.Map // message -> struct{}
	warnedNoGW sync.Map // network -> struct{}
}

// View is the resources every proxy of p's view shares.
func (g *Generator) View(p *Proxy) Generated {
	p = g.withMesh(p)
	if p.Generator == GeneratorGRPC {
		return GenerateGRPC(p, g.Registry, g.noGateway)
	}
	gen := Generate(p, g.Registry, g.Config, g.Domain, g.noGateway, g.warn)
	withFilters(g.AccessLog, g.Tracing, gen.Listeners)
	return gen
}

// Endpoints is the load assignments of services in p's view again, after
// only their endpoints changed.
func (g *Generator) Endpoints(p *Proxy, services []*registry.Service) []types.Resource {
	return GenerateEndpoints(g.withMesh(p), g.Registry, g.Config, g.Domain, services, g.noGateway, g.warn)
}

// Routes is the route tables of sidecars of p's namespace, cluster and
// scope.
func (g *Generator) Routes(p *Proxy, services []*registry.Service) []types.Resource {
	domain := g.domain()
	p = g.withMesh(p)
	if p.Scope != nil && g.Config != nil {
		services = p.Scope.Services(services, g.Config.VirtualServices(), domain)
	}
	rs := SidecarRoutes(p.Namespace, p.ClusterID, services, g.Config, p.RootNamespace, domain, g.warn)
	if p.RegistryOnly {
		for _, r := range rs {
			blockAll(r.(*route.RouteConfiguration))
		}
	}
	return rs
}

// blockAll turns a route table's allow_any into Istio's block_all under
// REGISTRY_ONLY: a request for no known service is answered 502.
func blockAll(rc *route.RouteConfiguration) {
	for i, vh := range rc.VirtualHosts {
		if vh.Name == "allow_any" {
			rc.VirtualHosts[i] = &route.VirtualHost{Name: "block_all", Domains: []string{"*"}, Routes: []*route.Route{{
				Name:   "block_all",
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 502}},
			}}}
		}
	}
}

// InboundIndex is the ports each pod's services target, by pod address.
func (g *Generator) InboundIndex(services []*registry.Service) InboundIndex {
	return NewInboundIndex(g.Registry, services)
}

// PatchInbound is idx with the endpoints of hosts as they are now.
func (g *Generator) PatchInbound(idx InboundIndex, services []*registry.Service, hosts map[string]bool) InboundIndex {
	return idx.Patched(g.Registry, services, hosts)
}

// InboundPolicy is what a sidecar's inbound side enforces for its workload.
func (g *Generator) InboundPolicy(p *Proxy) InboundPolicy {
	pol := InboundPolicy{TrustDomains: g.TrustDomains, Paths: g.Paths}
	if g.Config != nil {
		pol.MTLS = ResolveMTLS(g.Config.PeerAuthentications(), g.RootNamespace, p.Namespace, p.Labels)
		pol.Authz = ResolveAuthz(g.Config.AuthorizationPolicies(), g.RootNamespace, p.Namespace, p.Labels, g.TrustDomains, g.warn)
		pol.JWT = ResolveJWT(g.Config.RequestAuthentications(), g.RootNamespace, p.Namespace, p.Labels, g.JWKS, g.warn)
	}
	return pol
}

// Inbound is a sidecar's own part: virtualInbound and its clusters.
func (g *Generator) Inbound(ports InboundPorts, pol InboundPolicy) (*listener.Listener, []types.Resource) {
	l, clusters := Inbound(ports, pol)
	withFilters(g.AccessLog, g.Tracing, []types.Resource{l})
	return l, clusters
}

// Scope is p with the Sidecar resource that applies to it (sidecars
// only; gateways and proxyless clients have none): what it is given, and
// so which proxies share generated resources.
func (g *Generator) Scope(p *Proxy) *Proxy {
	if p.Type != Sidecar || p.Generator == GeneratorGRPC || g.Config == nil {
		return p
	}
	domain := g.domain()
	s := ResolveScope(g.Config.Sidecars(), g.RootNamespace, p.Namespace, p.Labels, g.warn)
	rules := ""
	if ForeignRules(g.Config, p.Namespace, domain) {
		rules = p.Namespace
	}
	if s == nil && p.Scope == nil && rules == p.RulesNamespace {
		return p
	}
	c := *p
	c.Scope, c.RulesNamespace = s, rules
	return &c
}

// domain is the cluster DNS domain, cluster.local unless set.
func (g *Generator) domain() string {
	if g.Domain == "" {
		return "cluster.local"
	}
	return g.Domain
}

// withMesh is p with the mesh's settings (never the node's): trust
// domains, path normalization, root namespace, trusted proxies,
// outbound traffic policy (its Sidecar's, else meshConfig's).
func (g *Generator) withMesh(p *Proxy) *Proxy {
	c := *p
	c.TrustDomains, c.Paths, c.RootNamespace, c.NumTrustedProxies, c.JWKS = g.TrustDomains, g.Paths, g.RootNamespace, g.NumTrustedProxies, g.JWKS
	c.RegistryOnly = g.RegistryOnly
	if p.Scope != nil && p.Scope.RegistryOnly != nil {
		c.RegistryOnly = *p.Scope.RegistryOnly
	}
	return &c
}

// warn logs a configuration problem the first time it is seen.
func (g *Generator) warn(msg string) {
	if _, loaded := g.warned.LoadOrStore(msg, struct{}{}); !loaded && g.Log != nil {
		g.Log.Warn(msg)
	}
}

func (g *Generator) noGateway(network string) {
	if _, loaded := g.warnedNoGW.LoadOrStore(network, struct{}{}); !loaded && g.Log != nil {
		g.Log.Warn("network has no east-west gateway: its endpoints are sent as pod addresses, which other networks cannot reach; install a gateway labelled topology.istio.io/network", "network", network)
	}
}
