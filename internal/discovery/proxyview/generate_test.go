package proxyview

import (
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/prototext"
	apinetworking "istio.io/api/networking/v1"
	securitybeta "istio.io/api/security/v1beta1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func TestGenerateGRPCListenersAreNamedHostPort(t *testing.T) {
	reg := registry.New()
	reg.SetService("c1", "greeter.ns.svc.cluster.local", &registry.Service{Namespace: "ns", Name: "greeter", Hostname: "greeter.ns.svc.cluster.local",
		Ports: []registry.Port{{Name: "grpc", Port: 7070, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", "greeter.ns.svc.cluster.local", []registry.Endpoint{{Address: "10.0.0.1", Ports: map[string]int32{"grpc": 7070}, Cluster: "c1", Ready: true}})
	g := GenerateGRPC(&Proxy{ID: "x", Type: Sidecar, Generator: GeneratorGRPC}, reg, nil)
	ls := g.Listeners
	if len(ls) != 1 || ls[0].(*listener.Listener).Name != "greeter.ns.svc.cluster.local:7070" {
		t.Fatalf("listeners %v", ls)
	}
	if len(g.Clusters) != 1 || len(g.Endpoints) != 1 {
		t.Fatalf("clusters %d endpoints %d", len(g.Clusters), len(g.Endpoints))
	}
}

type subsetConfig struct{ dr *networkingv1.DestinationRule }

func (subsetConfig) Gateways() []*networkingv1.Gateway {
	return []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "cross-network-gateway", Namespace: "istio-system"},
		Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "eastwestgateway"}, Servers: []*apinetworking.Server{{
			Port: &apinetworking.Port{Number: 15443, Name: "tls", Protocol: "TLS"}, Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH},
			Hosts: []string{"*.local"}}}}}}
}
func (subsetConfig) VirtualServices() []*networkingv1.VirtualService { return nil }
func (c subsetConfig) DestinationRules() []*networkingv1.DestinationRule {
	return []*networkingv1.DestinationRule{c.dr}
}
func (subsetConfig) PeerAuthentications() []*securityv1.PeerAuthentication {
	return nil
}
func (subsetConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return nil }

// DestinationRule subsets: a cluster per subset with the endpoints whose
// labels match, the remote network's behind its gateway; gateways route
// the subset's SNI to the subset's endpoints of their own network.
func TestSubsets(t *testing.T) {
	reg := registry.New()
	h := "profile.ns.svc.cluster.local"
	svc := &registry.Service{Namespace: "ns", Name: "profile", Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}}
	ep := func(addr, cluster, network, version string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: cluster, Network: network, TLSMode: "istio", Ready: true,
			Labels: map[string]string{"app": "profile", "version": version}}
	}
	reg.SetService("c1", h, svc)
	reg.SetEndpoints("c1", h, []registry.Endpoint{ep("10.0.0.1", "c1", "n1", "v1"), ep("10.0.0.2", "c1", "n1", "v2")})
	reg.SetService("c2", h, svc)
	reg.SetEndpoints("c2", h, []registry.Endpoint{ep("10.1.0.1", "c2", "n2", "v2")})
	reg.SetGateways("c2", []registry.Gateway{{Network: "n2", Address: "198.18.2.10", Port: 15443}})
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "profile"},
		Spec: apinetworking.DestinationRule{Host: "profile", Subsets: []*apinetworking.Subset{
			{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}}}}
	endpointsOf := func(g Generated, name string) []string {
		for _, r := range g.Endpoints {
			cla := r.(*endpoint.ClusterLoadAssignment)
			if cla.ClusterName != name {
				continue
			}
			var out []string
			for _, l := range cla.Endpoints {
				for _, e := range l.LbEndpoints {
					out = append(out, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
				}
			}
			slices.Sort(out)
			return out
		}
		return nil
	}
	sidecar := &Proxy{ID: "s", Type: Sidecar, Network: "n1", ClusterID: "c1"}
	g := Generate(sidecar, reg, subsetConfig{dr}, "cluster.local", func(string) {}, nil)
	for name, want := range map[string][]string{
		OutboundCluster(8080, "v1", h): {"10.0.0.1"},
		OutboundCluster(8080, "v2", h): {"10.0.0.2", "198.18.2.10"},
		OutboundCluster(8080, "", h):   {"10.0.0.1", "10.0.0.2", "198.18.2.10"},
	} {
		if got := endpointsOf(g, name); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
	// Istio's breadcrumb: the rule that made each cluster (proxy-config's
	// DESTINATION RULE column, x describe).
	const rule = "/apis/networking.istio.io/v1/namespaces/ns/destination-rule/profile"
	ruleOf := func(g Generated, name string) string {
		for _, r := range g.Clusters {
			if c := r.(*cluster.Cluster); c.Name == name {
				return c.GetMetadata().GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue()
			}
		}
		return "no cluster " + name
	}
	for _, name := range []string{OutboundCluster(8080, "", h), OutboundCluster(8080, "v1", h)} {
		if got := ruleOf(g, name); got != rule {
			t.Errorf("%s names %q, want %q", name, got, rule)
		}
	}
	other := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "other"}, Spec: apinetworking.DestinationRule{Host: "other"}}
	if got := ruleOf(Generate(sidecar, reg, subsetConfig{other}, "cluster.local", func(string) {}, nil), OutboundCluster(8080, "", h)); got != "" {
		t.Errorf("without a rule the cluster names %q", got)
	}
	router := &Proxy{ID: "r", Type: Router, Network: "n2", ClusterID: "c2", RequestedNetworkView: "n2", Labels: map[string]string{"istio": "eastwestgateway"}}
	g = Generate(router, reg, subsetConfig{dr}, "cluster.local", func(string) {}, nil)
	if got := ruleOf(g, SNI(8080, "v2", h)); got != rule {
		t.Errorf("router's SNI cluster names %q", got)
	}
	if got := endpointsOf(g, SNI(8080, "v2", h)); !slices.Equal(got, []string{"10.1.0.1"}) {
		t.Errorf("router's v2 SNI cluster: %v", got)
	}
	var snis []string
	for _, fc := range g.Listeners[0].(*listener.Listener).FilterChains {
		snis = append(snis, fc.FilterChainMatch.ServerNames...)
	}
	if !slices.Contains(snis, SNI(8080, "v2", h)) || !slices.Contains(snis, SNI(8080, "", h)) {
		t.Errorf("router SNIs %v", snis)
	}
}

// Secure naming: a service's outbound cluster pins the SPIFFE IDs of the
// accounts behind its mTLS endpoints in every cluster, in the trust domain
// and its aliases; a registry change of those accounts is a full push
// (clusters change, not only load assignments).
func TestOutboundClustersPinTheServiceAccounts(t *testing.T) {
	reg := registry.New()
	const host = "profile.shop.svc.cluster.local"
	var events []registry.Event
	reg.Subscribe(func(e registry.Event) { events = append(events, e) })
	reg.SetService("c1", host, &registry.Service{Namespace: "shop", Name: "profile", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	ep := func(addr, cluster, sa, tlsMode string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: cluster, Namespace: "shop", ServiceAccount: sa, TLSMode: tlsMode, Ready: true}
	}
	reg.SetEndpoints("c1", host, []registry.Endpoint{ep("10.0.0.1", "c1", "profile", "istio"), ep("10.0.0.3", "c1", "legacy", "")})
	reg.SetEndpoints("c2", host, []registry.Endpoint{ep("10.1.0.1", "c2", "profile-v2", "istio")})
	p := &Proxy{ID: "sidecar~10.0.0.9~sleep.shop~shop.svc.cluster.local", Type: Sidecar, Namespace: "shop", TrustDomains: []string{"example.org", "old.example.org"}}
	g := Generate(p, reg, nil, "cluster.local", nil, nil)
	var sans []string
	for _, r := range g.Clusters {
		c := r.(*cluster.Cluster)
		if c.Name != "outbound|8080||"+host {
			continue
		}
		var ctx tlsv3.UpstreamTlsContext
		if err := c.TransportSocketMatches[0].TransportSocket.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
			t.Fatal(err)
		}
		vc := ctx.CommonTlsContext.GetCombinedValidationContext()
		if vc.GetValidationContextSdsSecretConfig().GetName() != "ROOTCA" {
			t.Fatalf("validation context %v, want ROOTCA and the SANs", vc)
		}
		for _, m := range vc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
			if m.SanType != tlsv3.SubjectAltNameMatcher_URI {
				t.Fatalf("SAN type %v", m.SanType)
			}
			sans = append(sans, m.GetMatcher().GetExact())
		}
	}
	want := []string{"spiffe://example.org/ns/shop/sa/profile", "spiffe://example.org/ns/shop/sa/profile-v2",
		"spiffe://old.example.org/ns/shop/sa/profile", "spiffe://old.example.org/ns/shop/sa/profile-v2"}
	if !slices.Equal(sans, want) {
		t.Fatalf("SANs %q, want %q (the plaintext endpoint's account presents no certificate)", sans, want)
	}

	events = nil
	reg.SetEndpoints("c2", host, []registry.Endpoint{ep("10.1.0.1", "c2", "profile-v2", "istio"), ep("10.1.0.2", "c2", "profile-v2", "istio")})
	reg.SetEndpoints("c2", host, []registry.Endpoint{ep("10.1.0.1", "c2", "profile-v2", "istio"), ep("10.1.0.2", "c2", "intruder", "istio")})
	if len(events) != 2 || events[0].Full || !events[1].Full {
		t.Fatalf("events %+v: want an endpoints-only push for a new endpoint of a known account, a full push for a new account", events)
	}
}

// In Istio's policies cluster.local means the local trust domain: with
// trust domain example.org and alias old.org, a principal of either (or
// of cluster.local) matches in both; other trust domains stay as written.
func TestPrincipalsMatchInEveryTrustDomainOfTheMesh(t *testing.T) {
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "shop"},
		Spec: securitybeta.AuthorizationPolicy{Rules: []*securitybeta.Rule{{From: []*securitybeta.Rule_From{{Source: &securitybeta.Source{
			Principals: []string{"cluster.local/ns/a/sa/b", "old.org/ns/c/sa/d", "partner.net/ns/e/sa/f"}}}}}}}}
	a := ResolveAuthz([]*securityv1.AuthorizationPolicy{ap}, "istio-system", "shop", nil, []string{"example.org", "old.org"}, func(string) {})
	text := prototext.Format(a.HTTPAllow)
	for _, want := range []string{"spiffe://example.org/ns/a/sa/b", "spiffe://old.org/ns/a/sa/b", "spiffe://example.org/ns/c/sa/d", "spiffe://old.org/ns/c/sa/d", "spiffe://partner.net/ns/e/sa/f"} {
		if !strings.Contains(text, `"`+want+`"`) {
			t.Errorf("policy lacks %s:\n%s", want, text)
		}
	}
	if strings.Contains(text, "spiffe://cluster.local/") {
		t.Errorf("cluster.local kept as written:\n%s", text)
	}
}

func (subsetConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (subsetConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }
