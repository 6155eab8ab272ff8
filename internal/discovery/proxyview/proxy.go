package proxyview

import (
	"fmt"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Proxy types, the first field of Istio's node ID.
const (
	Sidecar = "sidecar"
	Router  = "router"
)

// Proxy is what the control plane knows of a connected proxy.
type Proxy struct {
	ID        string
	Type      string
	IP        string
	Pod       string
	Namespace string
	// ClusterID, Network and RequestedNetworkView come from node metadata
	// CLUSTER_ID, NETWORK and REQUESTED_NETWORK_VIEW.
	ClusterID            string
	Network              string
	RequestedNetworkView string
	Labels               map[string]string
	ServiceAccount       string
	IstioVersion         string
	// Generator "grpc" marks a proxyless gRPC client.
	Generator string
	// Locality is where the proxy runs: the node's locality if it sends
	// one, else its pod's, which the control plane looks up by address.
	Locality registry.Locality

	// TrustDomains are the mesh's trust domain and its aliases, set by
	// the control plane (never from the node): clients pin the servers'
	// SPIFFE IDs in them.
	TrustDomains []string
	// Paths is how its HTTP connection managers normalize request paths
	// (meshConfig pathNormalization), set by the control plane.
	Paths PathNormalization
	// RootNamespace holds mesh-wide policy; NumTrustedProxies is how many
	// proxies in front of a gateway its X-Forwarded-For may be believed
	// about (meshConfig defaultConfig.gatewayTopology). Set by the
	// control plane.
	RootNamespace     string
	NumTrustedProxies uint32
	// JWKS gives the key set of a RequestAuthentication's jwksUri (the
	// control plane's fetcher); nil refuses those tokens.
	JWKS func(uri string) string
	// RegistryOnly is meshConfig outboundTrafficPolicy REGISTRY_ONLY:
	// what is not a known service is refused, not passed through.
	RegistryOnly bool
	// Scope is the Sidecar resource that applies to a sidecar (nil: none),
	// set by the control plane.
	Scope *Scope
	// RulesNamespace is the proxy's namespace when that namespace has
	// DestinationRules for other namespaces' hosts (ForeignRules), which
	// only its proxies see; "" otherwise. Set by the control plane.
	RulesNamespace string
}

// rulesNamespace is the namespace whose own DestinationRules come first
// for this proxy: a router's always (its view is its own), a sidecar's
// when it has rules for other namespaces' hosts.
func (p *Proxy) rulesNamespace() string {
	if p.Type == Router {
		return p.Namespace
	}
	return p.RulesNamespace
}

// Reaches says whether the proxy dials an address of network n itself:
// its own network, or either is unknown. Another network's pod addresses
// are reached only through that network's gateway, which routes by
// service, not by pod.
func (p *Proxy) Reaches(n string) bool {
	return p.Network == "" || n == "" || n == p.Network
}

// ParseNode reads Istio's node ID `type~ip~pod.ns~ns.svc.domain` and metadata.
func ParseNode(n *core.Node) (*Proxy, error) {
	if n == nil {
		return nil, fmt.Errorf("the first request of a stream carries no node")
	}
	parts := strings.Split(n.GetId(), "~")
	if len(parts) != 4 {
		return nil, fmt.Errorf("node id %q is not type~ip~pod.namespace~namespace.svc.domain", n.GetId())
	}
	p := &Proxy{ID: n.GetId(), Type: parts[0], IP: parts[1]}
	if p.Type != Sidecar && p.Type != Router {
		return nil, fmt.Errorf("node id %q: proxy type %q is neither sidecar nor router", n.GetId(), p.Type)
	}
	p.Pod, p.Namespace, _ = strings.Cut(parts[2], ".")
	md := n.GetMetadata().GetFields()
	str := func(k string) string { return md[k].GetStringValue() }
	p.ClusterID = str("CLUSTER_ID")
	p.Network = str("NETWORK")
	p.RequestedNetworkView = str("REQUESTED_NETWORK_VIEW")
	p.ServiceAccount = str("SERVICE_ACCOUNT")
	p.IstioVersion = str("ISTIO_VERSION")
	p.Generator = str("GENERATOR")
	if ns := str("NAMESPACE"); ns != "" {
		p.Namespace = ns
	}
	if l, ok := md["LABELS"]; ok {
		p.Labels = map[string]string{}
		for k, v := range l.GetStructValue().GetFields() {
			p.Labels[k] = v.GetStringValue()
		}
	}
	if ips := str("INSTANCE_IPS"); ips != "" {
		p.IP, _, _ = strings.Cut(ips, ",")
	}
	if l := n.GetLocality(); l != nil {
		p.Locality = registry.Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubZone()}
	}
	return p, nil
}

// NodeMetadata builds node metadata the way Istio's agent sends it; for
// proxies and tests of this module.
func NodeMetadata(kv map[string]string) *structpb.Struct {
	m := map[string]any{}
	for k, v := range kv {
		m[k] = v
	}
	s, _ := structpb.NewStruct(m)
	return s
}
