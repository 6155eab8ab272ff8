package contract

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
)

func requestAuthentication(t *testing.T, ns, name, spec string) *securityv1.RequestAuthentication {
	t.Helper()
	ra := &securityv1.RequestAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	j, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := ra.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return ra
}

// RequestAuthentication and AuthorizationPolicy as users write them, through
// the control plane's translation, the proxy's compiled configuration and
// its request decision: Istio's answers for JWTs.
func TestRequestAuthenticationWithPolicies(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	set, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
	if err != nil {
		t.Fatal(err)
	}
	token := func(claims map[string]any) string {
		c := map[string]any{"iss": "https://issuer.example", "sub": "alice", "aud": "profile", "exp": time.Now().Add(time.Hour).Unix(), "groups": []string{"readers"}}
		for k, v := range claims {
			c[k] = v
		}
		s, err := jwt.Signed(signer).Claims(c).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	fetched := ""
	ras := []*securityv1.RequestAuthentication{requestAuthentication(t, "test", "jwt", `
selector: {matchLabels: {app: profile}}
jwtRules:
- issuer: https://issuer.example
  jwksUri: http://jwks.example/keys
  audiences: [profile]
  outputPayloadToHeader: x-jwt-payload`)}
	aps := []*securityv1.AuthorizationPolicy{policy(t, "test", "readers", `
selector: {matchLabels: {app: profile}}
rules:
- from: [{source: {requestPrincipals: [https://issuer.example/alice]}}]
  when: [{key: "request.auth.claims[groups]", values: [readers]}]`)}
	labels := map[string]string{"app": "profile"}
	pol := proxyview.InboundPolicy{
		JWT:   proxyview.ResolveJWT(ras, "istio-system", "test", labels, func(uri string) string { fetched = uri; return string(set) }, func(string) {}),
		Authz: proxyview.ResolveAuthz(aps, "istio-system", "test", labels, nil, func(m string) { t.Errorf("warning: %s", m) }),
	}
	if fetched != "http://jwks.example/keys" {
		t.Fatalf("keys asked for %q", fetched)
	}
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	in, _ := proxyview.Inbound(proxyview.NewInboundIndex(reg, reg.Services()).For("test", "10.64.0.5"), pol)
	rs := config.Resources{"type.googleapis.com/envoy.config.listener.v3.Listener": {in.Name: mustAny(in)}}
	snap, _, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	var hm *config.HTTPManager
	for _, c := range snap.Listeners[in.Name].Chains {
		if c.HTTP != nil {
			hm = c.HTTP
			break
		}
	}
	if hm == nil || hm.JWT == nil || len(hm.Authz) == 0 {
		t.Fatalf("inbound HTTP manager: %+v", hm)
	}
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"no token: the ALLOW policy needs a request principal", "", 403},
		{"alice, a reader", "Bearer " + token(nil), 0},
		{"bob is not the principal allowed", "Bearer " + token(map[string]any{"sub": "bob"}), 403},
		{"alice, not a reader", "Bearer " + token(map[string]any{"groups": []string{"writers"}}), 403},
		{"a token for another audience", "Bearer " + token(map[string]any{"aud": "accounts"}), 401},
		{"an expired token", "Bearer " + token(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()}), 401},
	} {
		hdr := map[string]string{":method": "GET", ":path": "/profile", ":authority": "profile"}
		if tc.auth != "" {
			hdr["authorization"] = tc.auth
		}
		d := decision.Decide(hm, hm.Inline, &decision.Request{Method: "GET", Target: "/profile", Host: "profile", Header: headers(hdr), RemoteIP: netip.MustParseAddr("10.64.0.9"), DestPort: 8080})
		if d.Status != tc.want {
			t.Errorf("%s: %d (%s %s), want %d", tc.name, d.Status, d.Body, d.DeniedBy, tc.want)
		}
		if d.Status == 0 && (len(d.Set) != 1 || d.Set[0][0] != "x-jwt-payload" || len(d.Remove) != 1) {
			t.Errorf("%s: header operations set %v remove %v, want the payload set and the token removed", tc.name, d.Set, d.Remove)
		}
	}
}
