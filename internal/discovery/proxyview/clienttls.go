package proxyview

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	apinetworking "istio.io/api/networking/v1alpha3"
)

// SystemRoots is the trust store a proxy verifies servers outside the
// mesh with when a DestinationRule names no CA (Istio's
// VERIFY_CERTIFICATE_AT_CLIENT): Debian's bundle, in the proxy image too.
const SystemRoots = "/etc/ssl/certs/ca-certificates.crt"

// clientTLS is the transport socket of a DestinationRule's tls settings
// for a cluster of host: nothing (DISABLE), Istio mTLS to every endpoint
// (ISTIO_MUTUAL), or TLS of the proxy's own (SIMPLE, MUTUAL) as istiod
// sends it: SNI (the rule's, else the host's name, as Istio's auto SNI
// for a request to it), the server checked against the rule's
// subjectAltNames (else its SNI), with the CA of credentialName (SDS
// kubernetes://NAME-cacert; routers only), of the caCertificates file, or
// the system's trust store; MUTUAL's client certificate from
// credentialName (kubernetes://NAME). credential names the Secret a
// router must be sent.
func clientTLS(s *apinetworking.ClientTLSSettings, p *Proxy, host, sni string, sans []string, warn func(string)) (ts *core.TransportSocket, credential string) {
	switch s.GetMode() {
	case apinetworking.ClientTLSSettings_DISABLE:
		return nil, ""
	case apinetworking.ClientTLSSettings_ISTIO_MUTUAL:
		// The rule's sni and SPIFFE subjectAltNames over the defaults.
		if s.GetSni() != "" && len(s.GetSni()) <= 255 && !strings.ContainsAny(s.GetSni(), " \t\r\n\x00") {
			sni = s.GetSni()
		}
		var ids []string
		for _, san := range s.GetSubjectAltNames() {
			if !strings.HasPrefix(san, "spiffe://") {
				warn("DestinationRule tls for " + host + ": ISTIO_MUTUAL subjectAltName " + san + " is not a SPIFFE ID; ignored")
				continue
			}
			ids = append(ids, san)
		}
		if len(ids) > 0 {
			sans = ids
		}
		return istioMTLS(sni, sans), ""
	}
	where := "DestinationRule tls for " + host
	ctx := &tlsv3.UpstreamTlsContext{Sni: s.GetSni(), CommonTlsContext: &tlsv3.CommonTlsContext{}}
	if len(ctx.Sni) > 255 || strings.ContainsAny(ctx.Sni, " \t\r\n\x00") {
		warn(where + ": sni is not a server name; the host's name is sent instead")
		ctx.Sni = ""
	}
	if ctx.Sni == "" && !strings.HasPrefix(host, "*") {
		ctx.Sni = host
	}
	vc := &tlsv3.CertificateValidationContext{}
	for _, san := range s.GetSubjectAltNames() {
		if san == "" {
			warn(where + ": an empty subjectAltName is ignored")
			continue
		}
		typ := tlsv3.SubjectAltNameMatcher_DNS
		if strings.Contains(san, "://") {
			typ = tlsv3.SubjectAltNameMatcher_URI
		}
		vc.MatchTypedSubjectAltNames = append(vc.MatchTypedSubjectAltNames, &tlsv3.SubjectAltNameMatcher{SanType: typ,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: san}}})
	}
	common := ctx.CommonTlsContext
	mutual := s.GetMode() == apinetworking.ClientTLSSettings_MUTUAL
	cred := s.GetCredentialName()
	if cred != "" && p.Type != Router {
		warn(where + ": credentialName is sent to gateways only (a sidecar gets no Secrets); this sidecar's TLS to it fails until the rule names caCertificates instead")
	}
	if s.GetClientCertificate() != "" || s.GetPrivateKey() != "" {
		warn(where + ": clientCertificate and privateKey files are not supported; use credentialName (at a gateway)")
	}
	if s.GetCaCrl() != "" {
		if s.GetInsecureSkipVerify().GetValue() {
			warn(where + ": caCrl with insecureSkipVerify: nothing is verified, revocation neither")
		}
		// The proxy refuses a server its chain's CRLs revoke or do not cover.
		vc.Crl = &core.DataSource{Specifier: &core.DataSource_Filename{Filename: s.GetCaCrl()}}
	}
	switch {
	case s.GetInsecureSkipVerify().GetValue():
		// No validation context: Envoy verifies nothing.
	case cred != "":
		common.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         vc,
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SDSPrefix + cred + "-cacert", SdsConfig: adsSource()},
		}}
	default:
		ca := s.GetCaCertificates()
		if ca == "" {
			ca = SystemRoots
		}
		vc.TrustedCa = &core.DataSource{Specifier: &core.DataSource_Filename{Filename: ca}}
		common.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}
	}
	if mutual {
		if cred == "" {
			warn(where + ": MUTUAL without credentialName has no client certificate isthmus can send; the server may refuse")
		} else {
			common.TlsCertificateSdsSecretConfigs = []*tlsv3.SdsSecretConfig{{Name: SDSPrefix + cred, SdsConfig: adsSource()}}
		}
	}
	if p.Type != Router {
		cred = ""
	}
	if err := ctx.ValidateAll(); err != nil {
		// A value Envoy's rules refuse would make every proxy refuse the
		// whole configuration: TLS verified by the host's name instead.
		warn(fmt.Sprintf("%s: %v; TLS is originated to the host's name with the system's roots instead", where, err))
		ctx = &tlsv3.UpstreamTlsContext{Sni: host, CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{
			ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: SystemRoots}}}}}}
		cred = ""
	}
	typed := mustAny(ctx)
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: typed}}, cred
}

// credentialSecrets are the SDS secrets of the DestinationRule
// credentialNames a router's clusters use, from Secrets of its own
// namespace as Istio reads them: the CA from ca.crt (or cacert) of the
// Secret or of NAME-cacert; for MUTUAL the certificate and key from
// tls.crt and tls.key (or cert and key).
func credentialSecrets(p *Proxy, cfg Config, names map[string]bool, warn func(string)) []types.Resource {
	src, ok := cfg.(Secrets)
	if !ok || len(names) == 0 {
		return nil
	}
	var out []types.Resource
	for _, name := range slices.Sorted(maps.Keys(names)) {
		where := fmt.Sprintf("DestinationRule credentialName %q", name)
		sec := src.Secret(p.Namespace, name)
		if ca := caSecret(src, p.Namespace, name, sec); ca == nil {
			warn(fmt.Sprintf("%s: no CA (ca.crt or cacert) in Secret %s/%s or %s-cacert; TLS to its servers fails until there is", where, p.Namespace, name, name))
		} else {
			out = append(out, ca)
		}
		if !names[name] {
			continue
		}
		cs, err := certSecret(name, sec)
		if err != nil {
			warn(fmt.Sprintf("%s: MUTUAL needs a client certificate and key in Secret %s/%s (tls.crt and tls.key): %v", where, p.Namespace, name, err))
			continue
		}
		out = append(out, cs)
	}
	return out
}
