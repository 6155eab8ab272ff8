package config

import (
	"strings"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

func TestChainMatchPrefersSpecific(t *testing.T) {
	l := &Listener{Chains: []*Chain{
		{Name: "any"},
		{Name: "wild", ServerNames: []string{"*.local"}},
		{Name: "exact", ServerNames: []string{"a.svc.local"}},
		{Name: "alpn", ServerNames: []string{"b.svc.local"}, ALPN: []string{"istio"}},
	}}
	for sni, want := range map[string]string{"a.svc.local": "exact", "z.local": "wild", "example.com": "any"} {
		if got := l.Match(Connection{SNI: sni}); got.Name != want {
			t.Errorf("SNI %s -> %s, want %s", sni, got.Name, want)
		}
	}
	if got := l.Match(Connection{SNI: "b.svc.local", ALPN: []string{"h2"}}); got.Name != "wild" {
		t.Errorf("ALPN mismatch -> %s, want the wildcard", got.Name)
	}
}

// Peer trust domains come from URI SAN prefixes spiffe://TD/; anything
// the proxy could not check is refused, never read as "any peer".
func TestPeerTrustDomains(t *testing.T) {
	uri := func(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
		return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
	}
	prefix := func(p string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}
	}
	ctx := func(ms ...*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
		return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: ms}}}}
	}
	if tds, err := peerTrustDomains(ctx(uri(prefix("spiffe://example.org/")), uri(prefix("spiffe://old.org/")))); err != nil || strings.Join(tds, ",") != "example.org,old.org" {
		t.Fatalf("trust domains %v %v", tds, err)
	}
	if tds, err := peerTrustDomains(ctx(uri(prefix("spiffe://")))); err != nil || tds != nil {
		t.Fatalf("any trust domain: %v %v", tds, err)
	}
	for name, m := range map[string]*tlsv3.SubjectAltNameMatcher{
		"an exact URI":             uri(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://example.org/ns/a/sa/b"}}),
		"a DNS SAN":                {SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: prefix("spiffe://example.org/")},
		"a path inside the domain": uri(prefix("spiffe://example.org/ns/a/")),
		"not SPIFFE":               uri(prefix("https://")),
	} {
		if _, err := peerTrustDomains(ctx(m)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
