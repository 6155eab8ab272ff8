package proxyview

import (
	"slices"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbuffer "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/nds"
)

// Istio's ALPN on mTLS between proxies, so protocols survive a gateway.
var istioALPN = []string{"istio-peer-exchange", "istio"}

// Generated is one proxy view's resources.
type Generated struct {
	Clusters  []types.Resource
	Endpoints []types.Resource
	Listeners []types.Resource
	Routes    []types.Resource
	// Secrets are TLS credentials of a router's HTTPS servers.
	Secrets []types.Resource
	// Names is a sidecar's DNS name table (NDS).
	Names nds.Table
	// credentials are the DestinationRule credentialNames a router's
	// clusters verify servers with (and, true, present for MUTUAL).
	credentials map[string]bool
}

// Generate builds the resources one proxy receives.
//
// Sidecars get outbound|PORT||HOST clusters for every service port, with a
// transport-socket match that uses Istio mTLS (SNI outbound_.PORT_._.HOST)
// toward endpoints labelled tlsMode=istio and plaintext otherwise. Routers
// (gateways) also get the SNI-named clusters outbound_.PORT_._.HOST of
// AUTO_PASSTHROUGH: no TLS of their own, only mTLS-capable endpoints; and
// the listeners of the Gateways that select them.
func Generate(p *Proxy, reg *registry.Registry, cfg Config, domain string, noGW network.NoGateway, warn func(string)) Generated {
	if warn == nil {
		warn = func(string) {}
	}
	var g Generated
	services := reg.Services()
	drs := destinationRules(cfg, domain, p.RootNamespace, p.rulesNamespace(), services)
	if p.Type == Router {
		g.Listeners, g.Routes, g.Secrets = routerConfig(p, reg, cfg, services, drs, domain, warn)
	} else {
		var vss []*networkingv1.VirtualService
		if cfg != nil {
			vss = cfg.VirtualServices()
		}
		services = p.Scope.Services(services, vss, domain)
		g.Listeners, g.Clusters = sidecarOutbound(services, p.ClusterID, func(svc *registry.Service, port registry.Port) []string {
			return podAddresses(p, reg.Endpoints(svc.Hostname), port)
		}, vss, drs, domain, p.Paths, p.RegistryOnly)
		g.Names = NameTable(p, reg, services)
	}
	g.addServices(p, reg, services, drs, noGW, warn)
	if p.Type == Router {
		// The credentials its DestinationRules' TLS verifies servers with
		// (egress gateways), beside those of its Gateway servers.
		for _, sec := range credentialSecrets(p, cfg, g.credentials, warn) {
			if !slices.ContainsFunc(g.Secrets, func(r types.Resource) bool { return r.(*tlsv3.Secret).Name == sec.(*tlsv3.Secret).Name }) {
				g.Secrets = append(g.Secrets, sec)
			}
		}
	}
	return g
}

// podAddresses are the addresses of a headless service's pods that a
// proxy dials directly on a port (Proxy.Reaches); another network's get
// no listener (Istio's listener there would dial an unroutable address).
func podAddresses(p *Proxy, eps []registry.Endpoint, port registry.Port) []string {
	var out []string
	for _, e := range eps {
		if _, ok := e.Ports[port.Name]; !ok {
			continue
		}
		if !p.Reaches(e.Network) {
			continue
		}
		out = append(out, e.Address)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// GenerateEndpoints rebuilds only the load assignments of the named
// services, for a push caused by endpoint changes alone: clusters,
// listeners and routes do not depend on endpoints, so the rest of the
// view stays as generated.
func GenerateEndpoints(p *Proxy, reg *registry.Registry, cfg Config, domain string, services []*registry.Service, noGW network.NoGateway, warn func(string)) []types.Resource {
	if warn == nil {
		warn = func(string) {}
	}
	var g Generated
	if p.Scope != nil && cfg != nil {
		services = p.Scope.Services(services, cfg.VirtualServices(), domain)
	}
	g.addServices(p, reg, services, destinationRules(cfg, domain, p.RootNamespace, p.rulesNamespace(), services), noGW, warn)
	return g.Endpoints
}

// addServices builds the clusters and load assignments of services as
// proxy p sees them (its network view of every cluster's endpoints).
func (g *Generated) addServices(p *Proxy, reg *registry.Registry, services []*registry.Service, drs map[string]*networkingv1.DestinationRule,
	noGW network.NoGateway, warn func(string)) {
	gws := reg.Gateways()
	view := network.View{Network: p.Network, Requested: network.ParseRequested(p.RequestedNetworkView)}
	for _, svc := range services {
		g.addService(p, view, svc, reg.Endpoints(svc.Hostname), gws, drs[svc.Hostname], noGW, warn)
	}
}

// addService builds the clusters and load assignments of every port of a
// service and of each of its DestinationRule's subsets.
func (g *Generated) addService(p *Proxy, view network.View, svc *registry.Service, eps []registry.Endpoint, gws []registry.Gateway,
	dr *networkingv1.DestinationRule, noGW network.NoGateway, warn func(string)) {
	sans := serviceSANs(p.TrustDomains, svc, eps)
	for _, port := range svc.Ports {
		if port.Protocol == "UDP" {
			continue
		}
		tp := policyFor(dr, port.Port, warn)
		g.add(p, view, svc, port, "", eps, gws, tp, noGW, sans, warn)
		for _, ss := range subsetsOf(dr, port.Port, tp, warn) {
			var in []registry.Endpoint
			for _, e := range eps {
				if ss.matches(e) {
					in = append(in, e)
				}
			}
			g.add(p, view, svc, port, ss.name, in, gws, ss.tp, noGW, sans, warn)
		}
	}
}

// add builds one service port's (or subset's) cluster and endpoints:
// outbound|PORT|SUBSET|HOST for sidecars, and for routers also the
// SNI-named outbound_.PORT_.SUBSET_.HOST with only mTLS endpoints.
func (g *Generated) add(p *Proxy, view network.View, svc *registry.Service, port registry.Port, subset string,
	eps []registry.Endpoint, gws []registry.Gateway, tp trafficPolicy, noGW network.NoGateway, sans []string, warn func(string)) {
	lb := tp.distribute(p, network.SplitHorizon(view, eps, port.Name, gws, noGW))
	prio := priorities(lb, func(e network.LbEndpoint) uint32 { return tp.priority(p, e) })
	sni := SNI(port.Port, subset, svc.Hostname)
	if p.Type == Router {
		var mtls []network.LbEndpoint
		for _, e := range lb {
			if e.TLSMode == "istio" {
				mtls = append(mtls, e)
			}
		}
		c := edsCluster(sni, nil)
		c.Metadata = tp.rule
		setUpstreamProtocol(c, port.AppProtocol, tp.pool.GetHttp().GetIdleTimeout())
		tp.apply(c)
		g.Clusters = append(g.Clusters, c)
		g.Endpoints = append(g.Endpoints, loadAssignment(sni, mtls, prio))
	}
	name := OutboundCluster(port.Port, subset, svc.Hostname)
	// A gateway has no per-pod listeners: it balances a headless
	// service's pods as any service's (Istio's routers get EDS too).
	headless := svc.HeadlessFor(p.ClusterID) && p.Type != Router
	var c *cluster.Cluster
	if headless {
		var ts *core.TransportSocket
		if !svc.MeshExternal {
			ts = headlessTransport(sni, sans, eps, p.RegistryOnly)
		}
		c = originalDstCluster(name, ts)
	} else {
		c = edsCluster(name, []*cluster.Cluster_TransportSocketMatch{
			{
				Name:            "tlsMode-istio",
				Match:           &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("istio")}},
				TransportSocket: istioMTLS(sni, sans),
			},
			{Name: "tlsMode-disabled", TransportSocket: plaintext()},
		})
	}
	if tp.tls != nil && headless && p.RegistryOnly && !svc.MeshExternal && (IsHTTP(port) || IsAuto(port)) && tp.tls.GetMode() != apinetworking.ClientTLSSettings_ISTIO_MUTUAL {
		// An HTTP port's cluster dials wherever the client did (Host
		// x.NAME to any address): only mTLS keeps REGISTRY_ONLY (see
		// headlessTransport). A TCP port's listeners are its pods' own.
		warn("DestinationRule tls " + tp.tls.GetMode().String() + " for headless " + svc.Hostname + " is not applied under REGISTRY_ONLY: its pods are called with Istio mTLS")
	} else if tp.tls != nil {
		// The rule's TLS replaces Istio's auto mTLS for every endpoint.
		var credential string
		c.TransportSocketMatches = nil
		c.TransportSocket, credential = clientTLS(tp.tls, p, svc.Hostname, sni, sans, warn)
		if credential != "" {
			if g.credentials == nil {
				g.credentials = map[string]bool{}
			}
			// MUTUAL anywhere needs the certificate, whoever else uses the name.
			g.credentials[credential] = g.credentials[credential] || tp.tls.GetMode() == apinetworking.ClientTLSSettings_MUTUAL
		}
	}
	protocol := port.AppProtocol
	if tp.upgradeH2(protocol) {
		protocol = "http2"
	}
	setUpstreamProtocol(c, protocol, tp.pool.GetHttp().GetIdleTimeout())
	tp.apply(c)
	c.Metadata = tp.rule
	g.Clusters = append(g.Clusters, c)
	if headless {
		c.LbPolicy = cluster.Cluster_CLUSTER_PROVIDED // the client picked the pod
		return
	}
	g.Endpoints = append(g.Endpoints, loadAssignment(name, lb, prio))
}

// originalDstCluster is a headless service port's cluster, as Istio's: it
// connects where the client did (a pod address from DNS), with one
// transport for all, since no endpoint metadata chooses per address.
func originalDstCluster(name string, ts *core.TransportSocket) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		ConnectTimeout:       durationpb.New(10 * time.Second),
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		TransportSocket:      ts,
	}
}

// headlessTransport is Istio mTLS to a headless service's pods, as Istio
// sends it, unless none of the service's known pods has a sidecar: then
// plaintext (where Istio would still send mTLS and fail, as a user of a
// headless service in front of pods outside the mesh finds). Not under
// REGISTRY_ONLY: the cluster dials wherever the client did (a request
// with Host: x.NAME to any address routes here), and plaintext would
// let anything out; mTLS reaches only the service's own accounts.
func headlessTransport(sni string, sans []string, eps []registry.Endpoint, registryOnly bool) *core.TransportSocket {
	if !registryOnly && len(eps) > 0 && !slices.ContainsFunc(eps, func(e registry.Endpoint) bool { return e.TLSMode == "istio" }) {
		return nil
	}
	return istioMTLS(sni, sans)
}

// priorities turns ranks into Envoy priorities: the distinct ranks of the
// endpoints, in order, numbered from 0 without gaps.
func priorities(eps []network.LbEndpoint, rank func(network.LbEndpoint) uint32) func(network.LbEndpoint) uint32 {
	seen := map[uint32]bool{}
	for _, e := range eps {
		seen[rank(e)] = true
	}
	if len(seen) <= 1 {
		return func(network.LbEndpoint) uint32 { return 0 }
	}
	ranks := make([]uint32, 0, len(seen))
	for r := range seen {
		ranks = append(ranks, r)
	}
	slices.Sort(ranks)
	index := make(map[uint32]uint32, len(ranks))
	for i, r := range ranks {
		index[r] = uint32(i)
	}
	return func(e network.LbEndpoint) uint32 { return index[rank(e)] }
}

// adsSource says a resource comes over the same ADS stream (v3).
func adsSource() *core.ConfigSource {
	return &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}, ResourceApiVersion: core.ApiVersion_V3}
}

func edsCluster(name string, matches []*cluster.Cluster_TransportSocketMatch) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{
			ServiceName: name,
			EdsConfig:   adsSource(),
		},
		ConnectTimeout:         durationpb.New(10 * time.Second),
		LbPolicy:               cluster.Cluster_ROUND_ROBIN,
		TransportSocketMatches: matches,
	}
}

// serviceSANs are the SPIFFE IDs a service's servers may present (Istio's
// secure naming): the service accounts of its mTLS endpoints in every
// cluster (through an east-west gateway the backend's own certificate
// arrives, so the same list holds), in each trust domain of the mesh.
// Without trust domains or known accounts it is empty: any workload of
// the mesh, as in Istio.
func serviceSANs(trustDomains []string, svc *registry.Service, eps []registry.Endpoint) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range eps {
		if e.ServiceAccount == "" || e.TLSMode != "istio" {
			continue
		}
		ns := e.Namespace
		if ns == "" {
			ns = svc.Namespace
		}
		for _, td := range trustDomains {
			id := "spiffe://" + td + "/ns/" + ns + "/sa/" + e.ServiceAccount
			if !seen[id] {
				seen[id] = true
				out = append(out, id)
			}
		}
	}
	slices.Sort(out)
	return out
}

// istioMTLS is the client side of Istio mTLS: the workload certificate and
// root come from SDS resources "default" and "ROOTCA", as Istio's agent
// names them; the server must present one of sans, when any.
func istioMTLS(sni string, sans []string) *core.TransportSocket {
	sds := func(name string) *tlsv3.SdsSecretConfig {
		return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
	}
	common := &tlsv3.CommonTlsContext{
		AlpnProtocols:                  istioALPN,
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sds("default")},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: sds("ROOTCA"),
		},
	}
	if len(sans) > 0 {
		match := make([]*tlsv3.SubjectAltNameMatcher, len(sans))
		for i, id := range sans {
			match[i] = &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI,
				Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}}
		}
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: match},
			ValidationContextSdsSecretConfig: sds("ROOTCA"),
		}}
	}
	ctx := &tlsv3.UpstreamTlsContext{Sni: sni, CommonTlsContext: common}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(ctx)}}
}

func plaintext() *core.TransportSocket {
	return &core.TransportSocket{Name: "envoy.transport_sockets.raw_buffer", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbuffer.RawBuffer{})}}
}

// loadAssignment groups endpoints by locality and failover priority, with
// Istio's metadata: envoy.transport_socket_match {tlsMode} and istio
// {network, cluster}.
func loadAssignment(name string, eps []network.LbEndpoint, priority func(network.LbEndpoint) uint32) *endpoint.ClusterLoadAssignment {
	cla := &endpoint.ClusterLoadAssignment{ClusterName: name}
	type group struct {
		loc  registry.Locality
		prio uint32
	}
	byLoc := map[group]*endpoint.LocalityLbEndpoints{}
	weights := map[*endpoint.LocalityLbEndpoints]uint32{}
	for _, e := range eps {
		var pr uint32
		if priority != nil {
			pr = priority(e)
		}
		l, ok := byLoc[group{e.Locality, pr}]
		if !ok {
			l = &endpoint.LocalityLbEndpoints{Locality: &core.Locality{Region: e.Locality.Region, Zone: e.Locality.Zone, SubZone: e.Locality.Subzone}, Priority: pr}
			byLoc[group{e.Locality, pr}] = l
			cla.Endpoints = append(cla.Endpoints, l)
		}
		l.LbEndpoints = append(l.LbEndpoints, lbEndpoint(e))
		weights[l] += e.Weight
	}
	for l, w := range weights {
		l.LoadBalancingWeight = wrapperspb.UInt32(w)
	}
	return cla
}

// configMetadata is Istio's breadcrumb on a cluster or route:
// filter_metadata.istio.config, the path of the Istio object that made it,
// which istioctl proxy-config and x describe show.
func configMetadata(kind, namespace, name string) *core.Metadata {
	return &core.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {Fields: map[string]*structpb.Value{
		"config": structpb.NewStringValue("/apis/networking.istio.io/v1/namespaces/" + namespace + "/" + kind + "/" + name)}}}}
}

// mustAny packs m with map keys in order (RBAC policies, metadata, a
// JSON access log format are maps): bytes that changed with each
// generation would make every listener a new version at every push.
func mustAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err) // generated messages always marshal
	}
	return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}
