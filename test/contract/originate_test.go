package contract

import (
	"slices"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// egressConfig is one DestinationRule for the external host, and the
// Secrets of istio-system.
type egressConfig struct {
	dr      *networkingv1.DestinationRule
	secrets map[string]*corev1.Secret
}

func (egressConfig) Gateways() []*networkingv1.Gateway               { return nil }
func (egressConfig) VirtualServices() []*networkingv1.VirtualService { return nil }
func (c egressConfig) DestinationRules() []*networkingv1.DestinationRule {
	return []*networkingv1.DestinationRule{c.dr}
}
func (egressConfig) PeerAuthentications() []*securityv1.PeerAuthentication       { return nil }
func (egressConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy    { return nil }
func (egressConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (egressConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }
func (c egressConfig) Secret(ns, name string) *corev1.Secret                     { return c.secrets[ns+"/"+name] }

// A DestinationRule's tls SIMPLE and MUTUAL, as the control plane sends
// them to an egress gateway and to a sidecar, build into TLS origination
// the proxy performs: SNI, SANs, the CA and client certificate by SDS
// name (the gateway is sent the Secret's), or a CA file (the sidecar).
func TestDestinationRuleTLSOrigination(t *testing.T) {
	reg := registry.New()
	host := "secure.example.test"
	reg.SetService("ServiceEntry", host, &registry.Service{Namespace: "istio-system", Name: host, Hostname: host, ClusterIP: "240.240.0.9",
		FromServiceEntry: true, MeshExternal: true, Ports: []registry.Port{{Name: "https", Port: 443, Protocol: "TCP", AppProtocol: "https"}}})
	reg.SetEndpoints("ServiceEntry", host, []registry.Endpoint{{Address: "198.19.2.20", Ports: map[string]int32{"https": 443}, Ready: true}})
	dr := func(spec string) *networkingv1.DestinationRule {
		d := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "istio-system", Name: "secure"}}
		j, err := yaml.YAMLToJSON([]byte(spec))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Spec.UnmarshalJSON(j); err != nil {
			t.Fatal(err)
		}
		return d
	}
	shop := shopConfig()
	cert, key := shop.cert, shop.key
	secrets := map[string]*corev1.Secret{
		"istio-system/ext": {Data: map[string][]byte{"ca.crt": cert, "tls.crt": cert, "tls.key": key}},
	}
	var want map[string][]string
	build := func(typ string, cfg egressConfig) (*config.Snapshot, []types.Resource) {
		t.Helper()
		p, err := proxyview.ParseNode(&core.Node{Id: typ + "~10.64.0.9~egress-1.istio-system~istio-system.svc.cluster.local",
			Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1"})})
		if err != nil {
			t.Fatal(err)
		}
		g := proxyview.Generate(p, reg, cfg, "cluster.local", nil, func(string) {})
		rs := config.Resources{}
		for typ, items := range map[string][]types.Resource{resource.ClusterType: g.Clusters, resource.SecretType: g.Secrets} {
			rs[typ] = map[string]*anypb.Any{}
			for _, it := range items {
				a, _ := anypb.New(it)
				rs[typ][cacheName(it)] = a
			}
		}
		snap, w, err := config.Build(rs)
		if err != nil {
			t.Fatal(err)
		}
		want = w
		return snap, g.Secrets
	}
	name := "outbound|443||" + host

	gw, sent := build("router", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: MUTUAL, credentialName: ext, sni: api.example.test, subjectAltNames: [api.example.test]}}\n"), secrets: secrets})
	tls := gw.Clusters[name].TLS
	if tls == nil || tls.Originate == nil || tls.SNI != "api.example.test" || len(tls.SANs) != 1 || tls.Originate.CASecret != "kubernetes://ext-cacert" ||
		tls.Originate.CertSecret != "kubernetes://ext" || tls.Originate.Insecure {
		t.Fatalf("the egress gateway's cluster: %+v", tls)
	}
	if ca, crt := gw.Secrets["kubernetes://ext-cacert"], gw.Secrets["kubernetes://ext"]; ca == nil || ca.CA == nil || crt == nil || crt.Cert == nil || len(sent) != 2 {
		t.Errorf("the gateway was not sent the credential's CA and certificate: %v", gw.Secrets)
	}
	// The proxy asks for them (SDS names are requested as they are used).
	if w := want[resource.SecretType]; !slices.Contains(w, "kubernetes://ext-cacert") || !slices.Contains(w, "kubernetes://ext") {
		t.Errorf("the gateway's proxy does not ask for its clusters' secrets: %v", w)
	}

	sc, sent := build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {portLevelSettings: [{port: {number: 443}, tls: {mode: SIMPLE, caCertificates: /etc/certs/ext.pem}}]}\n"), secrets: secrets})
	tls = sc.Clusters[name].TLS
	if tls == nil || tls.Originate == nil || tls.SNI != host || tls.Originate.CAFile != "/etc/certs/ext.pem" || tls.Originate.CertSecret != "" || len(sent) != 0 {
		t.Fatalf("the sidecar's cluster (SNI the host's name, a CA file, no secrets sent): %+v", tls)
	}
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: SIMPLE}}\n")})
	if tls := sc.Clusters[name].TLS; tls == nil || tls.Originate == nil || tls.Originate.CAFile != proxyview.SystemRoots {
		t.Errorf("SIMPLE without a CA verifies with the system's roots: %+v", tls)
	}
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}\n")})
	if tls := sc.Clusters[name].TLS; tls == nil || tls.Originate == nil || !tls.Originate.Insecure {
		t.Errorf("insecureSkipVerify: %+v", tls)
	}
	// Istio mTLS, with no account to pin (a bare ROOTCA validation
	// context), stays Istio mTLS, not TLS of the proxy's own.
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n")})
	if tls := sc.Clusters[name].TLS; tls == nil || tls.Originate != nil || len(tls.SANs) != 0 {
		t.Errorf("ISTIO_MUTUAL without accounts: %+v", tls)
	}
	// Values no proxy could take (past the webhook) do not break the
	// whole configuration: dropped, the host's name verified instead.
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: SIMPLE, sni: '" + strings.Repeat("a", 300) + "', subjectAltNames: ['']}}\n")})
	if tls := sc.Clusters[name].TLS; tls == nil || tls.Originate == nil || tls.SNI != host || len(tls.SANs) != 0 {
		t.Errorf("a bad sni and an empty SAN: %+v", tls)
	}
	// Port-level settings replace the rule's wholesale (Istio's
	// MergeTrafficPolicy): a port entry without tls is auto mTLS.
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: SIMPLE}, portLevelSettings: [{port: {number: 443}, connectionPool: {tcp: {maxConnections: 5}}}]}\n")})
	if c := sc.Clusters[name]; c.TLS != nil && c.TLS.Originate != nil {
		t.Errorf("a port-level entry without tls kept the rule's SIMPLE: %+v", c.TLS)
	}
	sc, _ = build("sidecar", egressConfig{dr: dr("host: " + host + "\ntrafficPolicy: {tls: {mode: DISABLE}}\n")})
	if c := sc.Clusters[name]; c.TLS != nil || len(c.TLSMatches) != 0 {
		t.Errorf("DISABLE: %+v %+v", c.TLS, c.TLSMatches)
	}
}
