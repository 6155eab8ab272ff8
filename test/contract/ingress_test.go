package contract

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
)

type ingressConfig struct {
	cert, key []byte
	aps       []*securityv1.AuthorizationPolicy
	ras       []*securityv1.RequestAuthentication
}

func (ingressConfig) Gateways() []*networkingv1.Gateway {
	return []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "istio-system"},
		Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []*apinetworking.Server{
			{Port: &apinetworking.Port{Number: 80, Name: "http", Protocol: "HTTP"}, Hosts: []string{"shop.example.com"},
				Tls: &apinetworking.ServerTLSSettings{HttpsRedirect: true}},
			{Port: &apinetworking.Port{Number: 443, Name: "https", Protocol: "HTTPS"}, Hosts: []string{"shop.example.com"},
				Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_MUTUAL, CredentialName: "shop"}},
		}}}}
}
func (ingressConfig) VirtualServices() []*networkingv1.VirtualService {
	return []*networkingv1.VirtualService{{ObjectMeta: metav1.ObjectMeta{Name: "shop", Namespace: "istio-system"},
		Spec: apinetworking.VirtualService{Hosts: []string{"shop.example.com"}, Gateways: []string{"web"}, Http: []*apinetworking.HTTPRoute{{
			Route: []*apinetworking.HTTPRouteDestination{{Destination: &apinetworking.Destination{Host: "profile.test.svc.cluster.local"}}}}}}}}
}
func (ingressConfig) DestinationRules() []*networkingv1.DestinationRule     { return nil }
func (ingressConfig) PeerAuthentications() []*securityv1.PeerAuthentication { return nil }
func (c ingressConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	return c.aps
}
func (c ingressConfig) Secret(ns, name string) *corev1.Secret {
	if ns == "istio-system" && name == "shop" {
		return &corev1.Secret{Data: map[string][]byte{"tls.crt": c.cert, "tls.key": c.key, "ca.crt": c.cert}}
	}
	return nil
}

// shopConfig is ingressConfig with a self-signed certificate for
// shop.example.com, and policies.
func shopConfig(aps ...*securityv1.AuthorizationPolicy) ingressConfig {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), DNSNames: []string{"shop.example.com"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return ingressConfig{cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), aps: aps}
}

// gatewayResources is what the control plane sends the ingress gateway
// gw-1 (istio: ingressgateway) of cluster c1 for cfg; mesh adjusts the
// proxy's mesh settings first.
func gatewayResources(t *testing.T, cfg ingressConfig, mesh func(*proxyview.Proxy)) config.Resources {
	t.Helper()
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	p, err := proxyview.ParseNode(&core.Node{Id: "router~10.64.0.9~gw-1.istio-system~istio-system.svc.cluster.local",
		Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1", "CLUSTER_ID": "c1"})})
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"istio": "ingressgateway"}
	if mesh != nil {
		mesh(p)
	}
	g := proxyview.Generate(p, reg, cfg, "cluster.local", func(string) {}, nil)
	rs := config.Resources{}
	for typ, items := range map[string][]types.Resource{resource.ClusterType: g.Clusters, resource.ListenerType: g.Listeners,
		resource.RouteType: g.Routes, resource.SecretType: g.Secrets} {
		rs[typ] = map[string]*anypb.Any{}
		for _, it := range items {
			a, _ := anypb.New(it)
			rs[typ][cacheName(it)] = a
		}
	}
	return rs
}

// What the control plane sends an ingress gateway (HTTPS with a
// credentialName, MUTUAL, httpsRedirect) builds: chains name their SDS
// secrets, which the proxy asks for and loads; the redirect is marked.
func TestBuildsIngressGateway(t *testing.T) {
	rs := gatewayResources(t, shopConfig(), nil)
	snap, want, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	if got := want[resource.SecretType]; !slices.Equal(got, []string{"kubernetes://shop", "kubernetes://shop-cacert"}) {
		t.Fatalf("secrets asked for: %v", got)
	}
	l := snap.Listeners["0.0.0.0_443"]
	if l == nil || !l.InspectTLS || len(l.Chains) != 1 || l.Chains[0].TLS == nil {
		t.Fatalf("https listener: %+v", l)
	}
	if tl := l.Chains[0].TLS; tl.CertSecret != "kubernetes://shop" || tl.CASecret != "kubernetes://shop-cacert" || !tl.RequireClientCert {
		t.Fatalf("chain TLS: %+v", tl)
	}
	if s := snap.Secrets["kubernetes://shop"]; s == nil || s.Cert == nil {
		t.Fatalf("certificate secret not loaded: %+v", snap.Secrets)
	}
	if s := snap.Secrets["kubernetes://shop-cacert"]; s == nil || s.CA == nil {
		t.Fatalf("CA secret not loaded: %+v", snap.Secrets)
	}
	if vh := snap.Routes["http.80"].Match("shop.example.com:80"); vh == nil || !vh.RequireTLS {
		t.Fatalf("httpsRedirect: %+v", vh)
	}
	if vh := snap.Routes["https.443.https.web.istio-system"].Match("shop.example.com"); vh == nil || vh.RequireTLS || len(vh.Routes) != 1 {
		t.Fatalf("https routes: %+v", vh)
	}
	// A broken secret is refused (NACKed), not half-applied.
	bad, _ := anypb.New(&tlsv3.Secret{Name: "kubernetes://shop", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: []byte("nope")}}}}})
	rs[resource.SecretType]["kubernetes://shop"] = bad
	if _, _, err := config.Build(rs); err == nil {
		t.Fatal("a secret without a usable certificate was accepted")
	}
}

// AuthorizationPolicies that select a gateway are enforced there, on its
// HTTP servers (whatever the normalization reads), with remoteIpBlocks
// matched against the client X-Forwarded-For names through the mesh's
// trusted proxies, not against what a client claims in front of them.
func TestGatewayEnforcesItsPolicies(t *testing.T) {
	cfg := shopConfig(
		policy(t, "istio-system", "no-profile", "selector: {matchLabels: {istio: ingressgateway}}\naction: DENY\nrules: [{to: [{operation: {paths: [/profile]}}]}]"),
		policy(t, "istio-system", "no-doc-net", "selector: {matchLabels: {istio: ingressgateway}}\naction: DENY\nrules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]"),
		policy(t, "multicluster", "elsewhere", "action: DENY\nrules: [{to: [{operation: {paths: [/shop]}}]}]"),
	)
	rs := gatewayResources(t, cfg, func(p *proxyview.Proxy) { p.RootNamespace, p.NumTrustedProxies = "istio-system", 1 })
	snap, _, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	https := snap.Listeners["0.0.0.0_443"].Chains[0].HTTP
	plain := snap.Listeners["0.0.0.0_80"].Chains[0].HTTP
	if len(https.Authz) == 0 || !https.UseRemoteAddress || https.XFFTrustedHops != 1 || !https.Paths.RFC3986 {
		t.Fatalf("the HTTPS server's manager: %+v", https)
	}
	remote := netip.MustParseAddr("10.0.0.1") // the load balancer in front
	for _, tc := range []struct {
		name   string
		hm     *config.HTTPManager
		target string
		xff    string
		want   int
	}{
		{"a denied path", https, "/profile", "", 403},
		{"a denied path, spelled otherwise", https, "/x/../%70rofile", "", 403},
		{"a denied path over plain HTTP (before the https redirect)", plain, "/profile", "", 403},
		{"another path", https, "/shop", "", 0},
		{"the client the trusted proxy names is in a denied block", https, "/shop", "203.0.113.9", 403},
		{"a denied client claiming another address in front", https, "/shop", "198.51.100.1, 203.0.113.9", 403},
		{"an allowed client claiming a denied address in front", https, "/shop", "203.0.113.9, 198.51.100.1", 0},
	} {
		table := snap.Routes[https.RouteName]
		if tc.hm == plain {
			table = snap.Routes[plain.RouteName]
		}
		hdr := map[string]string{":method": "GET", ":path": tc.target, ":authority": "shop.example.com"}
		if tc.xff != "" {
			hdr["x-forwarded-for"] = tc.xff
		}
		d := decision.Decide(tc.hm, table, &decision.Request{Method: "GET", Target: tc.target, Host: "shop.example.com", Header: headers(hdr), Secure: tc.hm == https, RemoteIP: remote, DestPort: 443})
		if d.Status != tc.want {
			t.Errorf("%s: %s from %s (X-Forwarded-For %q): status %d (%s), want %d", tc.name, tc.target, remote, tc.xff, d.Status, d.DeniedBy, tc.want)
		}
		if d.Status == 0 && !strings.HasSuffix(d.XFF, "10.0.0.1") {
			t.Errorf("%s: X-Forwarded-For upstream %q, want the load balancer appended", tc.name, d.XFF)
		}
	}
}

func (c ingressConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return c.ras }
func (c ingressConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }

// A RequestAuthentication selecting the ingress gateway puts jwt_authn
// before its policies on every HTTP server: a bad token gets 401 at the
// edge, and policies there see the verified token.
func TestGatewayVerifiesTokens(t *testing.T) {
	cfg := shopConfig(policy(t, "istio-system", "jwt-only", "selector: {matchLabels: {istio: ingressgateway}}\nrules: [{from: [{source: {requestPrincipals: ['*']}}]}]"))
	cfg.ras = []*securityv1.RequestAuthentication{requestAuthentication(t, "istio-system", "edge", `
selector: {matchLabels: {istio: ingressgateway}}
jwtRules: [{issuer: https://issuer.example, jwks: '{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}'}]`)}
	snap, _, err := config.Build(gatewayResources(t, cfg, func(p *proxyview.Proxy) { p.RootNamespace = "istio-system" }))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"0.0.0.0_80", "0.0.0.0_443"} {
		hm := snap.Listeners[name].Chains[0].HTTP
		if hm.JWT == nil || len(hm.Authz) == 0 {
			t.Fatalf("%s: jwt_authn %v, RBAC %d", name, hm.JWT != nil, len(hm.Authz))
		}
		table := snap.Routes[hm.RouteName]
		for auth, want := range map[string]int{"": 403, "Bearer a.b.c": 401} {
			hdr := map[string]string{":method": "GET", ":path": "/x", ":authority": "shop.example.com"}
			if auth != "" {
				hdr["authorization"] = auth
			}
			d := decision.Decide(hm, table, &decision.Request{Method: "GET", Target: "/x", Host: "shop.example.com", Header: headers(hdr), Secure: true,
				RemoteIP: netip.MustParseAddr("10.0.0.1"), DestPort: 443})
			if d.Status != want {
				t.Errorf("%s with %q: %d (%s), want %d", name, auth, d.Status, d.Body, want)
			}
		}
	}
}
