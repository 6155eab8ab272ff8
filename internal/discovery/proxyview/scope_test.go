package proxyview

import (
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

type scopeConfig struct {
	sidecars []*networkingv1.Sidecar
	vss      []*networkingv1.VirtualService
}

func (scopeConfig) Gateways() []*networkingv1.Gateway                           { return nil }
func (c scopeConfig) VirtualServices() []*networkingv1.VirtualService           { return c.vss }
func (scopeConfig) DestinationRules() []*networkingv1.DestinationRule           { return nil }
func (scopeConfig) PeerAuthentications() []*securityv1.PeerAuthentication       { return nil }
func (scopeConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy    { return nil }
func (scopeConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (c scopeConfig) Sidecars() []*networkingv1.Sidecar                         { return c.sidecars }

func sidecarOf(t *testing.T, ns, name string, age int, spec string) *networkingv1.Sidecar {
	t.Helper()
	sc := &networkingv1.Sidecar{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1",
		CreationTimestamp: metav1.NewTime(time.Unix(int64(1000-age), 0))}}
	j, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return sc
}

// Istio's precedence: the namespace's Sidecar selecting the workload, else
// the namespace's default, else the root namespace's; the oldest of equals.
func TestResolveScope(t *testing.T) {
	scs := []*networkingv1.Sidecar{
		sidecarOf(t, "istio-system", "mesh", 0, "egress: [{hosts: ['*/*']}]\n"),
		sidecarOf(t, "shop", "default-new", 0, "egress: [{hosts: ['./*']}]\n"),
		sidecarOf(t, "shop", "default-old", 5, "egress: [{hosts: ['./*']}]\n"),
		sidecarOf(t, "shop", "cart", 0, "workloadSelector: {labels: {app: cart}}\negress: [{hosts: ['istio-system/*']}]\n"),
		sidecarOf(t, "istio-system", "selecting", 9, "workloadSelector: {labels: {app: cart}}\negress: [{hosts: ['~/*']}]\n"),
	}
	for _, c := range []struct {
		ns   string
		lbls map[string]string
		want string
	}{
		{"shop", map[string]string{"app": "cart"}, "shop/cart@1"},
		{"shop", map[string]string{"app": "web"}, "shop/default-old@1"},
		{"other", map[string]string{"app": "cart"}, "istio-system/mesh@1 for other"},
	} {
		if got := ResolveScope(scs, "istio-system", c.ns, c.lbls, func(string) {}).Key(); got != c.want {
			t.Errorf("%s %v: %q, want %q", c.ns, c.lbls, got, c.want)
		}
	}
	if s := ResolveScope(scs[1:4], "istio-system", "other", nil, func(string) {}); s != nil {
		t.Errorf("no Sidecar applies, got %s", s.Key())
	}
	// "." in the root namespace's default is the proxy's namespace.
	root := ResolveScope([]*networkingv1.Sidecar{sidecarOf(t, "istio-system", "default", 0, "egress: [{hosts: ['./*']}]\n")}, "istio-system", "pay", nil, func(string) {})
	got := root.Services([]*registry.Service{{Namespace: "pay", Hostname: "bank.pay.svc.cluster.local"}, {Namespace: "istio-system", Hostname: "istiod.istio-system.svc.cluster.local"}}, nil, "cluster.local")
	if len(got) != 1 || got[0].Hostname != "bank.pay.svc.cluster.local" {
		t.Errorf("the root's ./* for a proxy of pay imports %v", got)
	}
}

// A scope gives a sidecar the services its egress hosts import and the
// destinations of the VirtualServices they import; its
// outboundTrafficPolicy overrides the mesh's.
func TestScopeServices(t *testing.T) {
	reg := registry.New()
	for _, s := range []struct{ ns, name string }{{"shop", "web"}, {"shop", "cart"}, {"pay", "bank"}, {"pay", "ledger"}, {"istio-system", "istiod"}, {"kube-system", "kube-dns"}} {
		h := s.name + "." + s.ns + ".svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: s.ns, Name: s.name, Hostname: h, ClusterIP: "10.0.0.1",
			Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	}
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}}
	if err := vs.Spec.UnmarshalJSON([]byte(`{"hosts":["cart"],"http":[{"route":[{"destination":{"host":"ledger.pay.svc.cluster.local"}}]}]}`)); err != nil {
		t.Fatal(err)
	}
	cfg := scopeConfig{vss: []*networkingv1.VirtualService{vs}, sidecars: []*networkingv1.Sidecar{
		sidecarOf(t, "shop", "default", 0, "egress: [{hosts: ['./*', 'istio-system/istiod.istio-system.svc.cluster.local', '*/*.example.com']}, {port: {number: 9000, protocol: HTTP, name: x}, hosts: ['~/*']}]\n"+
			"outboundTrafficPolicy: {mode: REGISTRY_ONLY}\ningress: [{port: {number: 80, protocol: HTTP, name: h}, defaultEndpoint: '127.0.0.1:8080'}]\n"),
	}}
	g := &Generator{Registry: reg, Config: cfg, RootNamespace: "istio-system"}
	p := g.Scope(&Proxy{Type: Sidecar, Namespace: "shop", ClusterID: "c1"})
	got := map[string]bool{}
	for _, c := range g.View(p).Clusters {
		got[c.(*cluster.Cluster).Name] = true
	}
	for _, want := range []string{"web.shop", "cart.shop", "istiod.istio-system", "ledger.pay"} {
		if !got["outbound|8080||"+want+".svc.cluster.local"] {
			t.Errorf("no cluster for %s (imported, or a destination of an imported VirtualService): %v", want, got)
		}
	}
	for _, not := range []string{"bank.pay", "kube-dns.kube-system"} {
		if got["outbound|8080||"+not+".svc.cluster.local"] {
			t.Errorf("a cluster for %s, which the Sidecar does not import", not)
		}
	}
	rc := g.Routes(p, reg.Services())[0].(*route.RouteConfiguration)
	var vhosts []string
	for _, vh := range rc.VirtualHosts {
		vhosts = append(vhosts, vh.Name)
	}
	if !slices.Contains(vhosts, "block_all") || slices.ContainsFunc(vhosts, func(n string) bool { return strings.HasPrefix(n, "bank.") }) {
		t.Errorf("the scope's routes (REGISTRY_ONLY from the Sidecar, no bank): %v", vhosts)
	}
	// Another namespace, no Sidecar: everything, meshConfig's ALLOW_ANY.
	q := g.Scope(&Proxy{Type: Sidecar, Namespace: "pay", ClusterID: "c1"})
	if q.Scope != nil || len(g.View(q).Clusters) < 6 {
		t.Errorf("a namespace without a Sidecar is scoped: %v", q.Scope)
	}
	var warnings []string
	ResolveScope(cfg.sidecars, "istio-system", "shop", nil, func(w string) { warnings = append(warnings, w) })
	all := strings.Join(warnings, "\n")
	if !strings.Contains(all, "egress listeners of their own") {
		t.Errorf("warnings: %q", warnings)
	}
	// Its ingress listener is the sidecar's only inbound port, to the
	// app's defaultEndpoint.
	ports := p.Scope.InboundPorts(InboundPorts{9080: {Protocol: ProtoTCP}})
	if len(ports) != 1 || ports[80] != (AppPort{Protocol: ProtoHTTP, Endpoint: "127.0.0.1:8080"}) {
		t.Errorf("inbound ports with the Sidecar's ingress: %v", ports)
	}
	_, cls := Inbound(ports, InboundPolicy{})
	if ep := cls[0].(*cluster.Cluster).GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress(); ep.GetAddress() != "127.0.0.1" || ep.GetPortValue() != 8080 {
		t.Errorf("inbound|80|| goes to %v, want 127.0.0.1:8080", ep)
	}
	if q.Scope.InboundPorts(InboundPorts{9080: {Protocol: ProtoTCP}})[9080].Protocol != ProtoTCP {
		t.Error("without a Sidecar the services' ports are served")
	}
}
