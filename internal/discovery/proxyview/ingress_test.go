package proxyview

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

type ingressConfig struct {
	gws     []*networkingv1.Gateway
	vss     []*networkingv1.VirtualService
	secrets map[string]*corev1.Secret
}

func (c ingressConfig) Gateways() []*networkingv1.Gateway                   { return c.gws }
func (c ingressConfig) VirtualServices() []*networkingv1.VirtualService     { return c.vss }
func (ingressConfig) DestinationRules() []*networkingv1.DestinationRule     { return nil }
func (ingressConfig) PeerAuthentications() []*securityv1.PeerAuthentication { return nil }
func (ingressConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	return nil
}
func (c ingressConfig) Secret(ns, name string) *corev1.Secret { return c.secrets[ns+"/"+name] }

// An ingress gateway: HTTP on Service port 80 is served on the target port
// 8080 with route http.8080 from the bound VirtualService (destination
// port resolved from the service's only port); HTTPS terminates with the
// credentialName secret, SNI-matched; httpsRedirect marks the hosts.
func TestIngressGateway(t *testing.T) {
	reg := registry.New()
	gwHost := "istio-ingressgateway.istio-system.svc.cluster.local"
	reg.SetService("c1", gwHost, &registry.Service{Namespace: "istio-system", Name: "istio-ingressgateway", Hostname: gwHost,
		Ports: []registry.Port{{Name: "http2", Port: 80, Protocol: "TCP"}, {Name: "https", Port: 443, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", gwHost, []registry.Endpoint{{Address: "10.0.0.9", Cluster: "c1", Ports: map[string]int32{"http2": 8080, "https": 8443}}})
	dash := "dashboard.multicluster.svc.cluster.local"
	reg.SetService("c1", dash, &registry.Service{Namespace: "multicluster", Name: "dashboard", Hostname: dash,
		Ports: []registry.Port{{Name: "http", Port: 8000, Protocol: "TCP", AppProtocol: "http"}}})

	certPEM, keyPEM := selfSigned(t, "shop.example.com")
	cfg := ingressConfig{
		gws: []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "multicluster"},
			Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []*apinetworking.Server{
				{Port: &apinetworking.Port{Number: 80, Name: "http", Protocol: "HTTP"}, Hosts: []string{"*"}},
				{Port: &apinetworking.Port{Number: 443, Name: "https", Protocol: "HTTPS"}, Hosts: []string{"shop.example.com"},
					Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_SIMPLE, CredentialName: "shop-cert"}},
				{Port: &apinetworking.Port{Number: 443, Name: "https-missing", Protocol: "HTTPS"}, Hosts: []string{"other.example.com"},
					Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_SIMPLE, CredentialName: "nope"}},
			}}}},
		vss: []*networkingv1.VirtualService{{ObjectMeta: metav1.ObjectMeta{Name: "dashboard", Namespace: "multicluster"},
			Spec: apinetworking.VirtualService{Hosts: []string{"*"}, Gateways: []string{"web"}, Http: []*apinetworking.HTTPRoute{{
				Match: []*apinetworking.HTTPMatchRequest{{Uri: &apinetworking.StringMatch{MatchType: &apinetworking.StringMatch_Prefix{Prefix: "/dashboard"}}}},
				Route: []*apinetworking.HTTPRouteDestination{{Destination: &apinetworking.Destination{Host: "dashboard"}}},
			}}}}},
		secrets: map[string]*corev1.Secret{"istio-system/shop-cert": {Data: map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}}},
	}
	var warnings []string
	p := &Proxy{ID: "gw", Type: Router, IP: "10.0.0.9", Namespace: "istio-system", ClusterID: "c1", Labels: map[string]string{"istio": "ingressgateway"}}
	ls, rs, ss := routerConfig(p, reg, cfg, reg.Services(), nil, "cluster.local", func(m string) { warnings = append(warnings, m) })

	var names []string
	for _, r := range ls {
		names = append(names, r.(*listener.Listener).Name)
	}
	if !slices.Equal(names, []string{"0.0.0.0_8080", "0.0.0.0_8443"}) {
		t.Fatalf("listeners %v, want 0.0.0.0_8080 and 0.0.0.0_8443 (target ports)", names)
	}
	https := ls[1].(*listener.Listener)
	if len(https.FilterChains) != 1 || !slices.Equal(https.FilterChains[0].GetFilterChainMatch().GetServerNames(), []string{"shop.example.com"}) {
		t.Fatalf("https chains: %v", https.FilterChains)
	}
	var ctx tlsv3.DownstreamTlsContext
	if err := https.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&ctx); err != nil {
		t.Fatal(err)
	}
	if n := ctx.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name; n != "kubernetes://shop-cert" {
		t.Fatalf("SDS name %q", n)
	}
	if len(ss) != 1 || ss[0].(*tlsv3.Secret).Name != "kubernetes://shop-cert" {
		t.Fatalf("secrets %v", ss)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], `credentialName "nope"`) {
		t.Fatalf("warnings %q, want the missing credential named", warnings)
	}
	var httpRoute *route.RouteConfiguration
	for _, r := range rs {
		if rc := r.(*route.RouteConfiguration); rc.Name == "http.8080" {
			httpRoute = rc
		}
	}
	if httpRoute == nil || len(httpRoute.VirtualHosts) != 1 {
		t.Fatalf("routes %v", rs)
	}
	vh := httpRoute.VirtualHosts[0]
	if vh.Name != "*:80" || vh.Routes[0].GetRoute().GetCluster() != "outbound|8000||"+dash {
		t.Fatalf("virtual host %v", vh)
	}
	// Istio's breadcrumb, which x describe follows to the VirtualService.
	if got := vh.Routes[0].GetMetadata().GetFilterMetadata()["istio"].GetFields()["config"].GetStringValue(); got != "/apis/networking.istio.io/v1/namespaces/multicluster/virtual-service/dashboard" {
		t.Errorf("route metadata names %q", got)
	}

	// httpsRedirect on the HTTP server.
	cfg.gws[0].Spec.Servers[0].Tls = &apinetworking.ServerTLSSettings{HttpsRedirect: true}
	_, rs, _ = routerConfig(p, reg, cfg, reg.Services(), nil, "cluster.local", func(string) {})
	if rc := rs[0].(*route.RouteConfiguration); rc.Name != "http.8080" || rc.VirtualHosts[0].RequireTls != route.VirtualHost_ALL {
		t.Fatalf("httpsRedirect: %v", rc)
	}
}

func TestAdmittedHosts(t *testing.T) {
	for _, c := range []struct {
		server []string
		vsNS   string
		host   string
		want   []string
	}{
		{[]string{"*"}, "a", "shop.example.com", []string{"shop.example.com"}},
		{[]string{"*.example.com"}, "a", "shop.example.com", []string{"shop.example.com"}},
		{[]string{"shop.example.com"}, "a", "*", []string{"shop.example.com"}},
		{[]string{"b/*"}, "a", "shop.example.com", nil},
		{[]string{"./*"}, "gw", "x.example.com", []string{"x.example.com"}},
		{[]string{"other.example.com"}, "a", "shop.example.com", nil},
	} {
		if got := admitted(c.server, "gw", c.vsNS, c.host); !slices.Equal(got, c.want) {
			t.Errorf("admitted(%v, vs ns %s, %s) = %v, want %v", c.server, c.vsNS, c.host, got, c.want)
		}
	}
}

// selfSigned makes a certificate for host and its key, PEM-encoded.
func selfSigned(t *testing.T, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func (ingressConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (ingressConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }

// A match's sourceNamespace: the route is in the route tables of that
// namespace's sidecars only, as Istio generates it.
func TestSourceNamespace(t *testing.T) {
	reg := registry.New()
	h := "profile.shop.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "shop", Name: "profile", Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	cfg := ingressConfig{vss: []*networkingv1.VirtualService{{ObjectMeta: metav1.ObjectMeta{Name: "profile", Namespace: "shop"},
		Spec: apinetworking.VirtualService{Hosts: []string{"profile"}, Http: []*apinetworking.HTTPRoute{
			{Name: "from-web", Match: []*apinetworking.HTTPMatchRequest{{SourceNamespace: "web"}}, Route: []*apinetworking.HTTPRouteDestination{{Destination: &apinetworking.Destination{Host: "profile"}}},
				Fault: &apinetworking.HTTPFaultInjection{Abort: &apinetworking.HTTPFaultInjection_Abort{ErrorType: &apinetworking.HTTPFaultInjection_Abort_HttpStatus{HttpStatus: 418}, Percentage: &apinetworking.Percent{Value: 100}}}},
			{Name: "rest", Route: []*apinetworking.HTTPRouteDestination{{Destination: &apinetworking.Destination{Host: "profile"}}}},
		}}}}}
	names := func(ns string) []string {
		var out []string
		for _, r := range SidecarRoutes(ns, "c1", reg.Services(), cfg, "istio-system", "cluster.local", func(string) {}) {
			for _, vh := range r.(*route.RouteConfiguration).VirtualHosts {
				if vh.Name == h+":8080" {
					for _, rt := range vh.Routes {
						out = append(out, rt.Name)
					}
				}
			}
		}
		return out
	}
	if got := names("web"); !slices.Equal(got, []string{"from-web", "rest"}) {
		t.Errorf("namespace web's routes: %v", got)
	}
	if got := names("shop"); !slices.Equal(got, []string{"rest"}) {
		t.Errorf("namespace shop's routes: %v, want only rest", got)
	}
}
