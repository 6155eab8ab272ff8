package proxy

import (
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// A DestinationRule's tls SIMPLE as istiod sends it: the proxy originates
// TLS to a server outside the mesh, verifies its certificate against the
// CA it is given (a file, or an SDS secret) and its name against the SNI
// or the subjectAltNames, and refuses a server that fails either;
// insecureSkipVerify (no validation context) verifies nothing.
func TestOriginateTLS(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "tls "+r.TLS.ServerName)
	}))
	defer up.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	// httptest's certificate names example.com (and 127.0.0.1).
	san := func(names ...string) []*tlsv3.SubjectAltNameMatcher {
		var out []*tlsv3.SubjectAltNameMatcher
		for _, n := range names {
			out = append(out, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: n}}})
		}
		return out
	}
	fileCA := func(sans ...string) *tlsv3.CommonTlsContext {
		return &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: caFile}}, MatchTypedSubjectAltNames: san(sans...)}}}
	}
	sdsCA := &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
		DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
		ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "kubernetes://ext-cacert"}}}}
	for _, c := range []struct {
		name   string
		ctx    *tlsv3.UpstreamTlsContext
		secret bool
		want   int
	}{
		{"a file CA and the SNI", &tlsv3.UpstreamTlsContext{Sni: "example.com", CommonTlsContext: fileCA()}, false, 200},
		{"a file CA and a SNI the certificate does not name", &tlsv3.UpstreamTlsContext{Sni: "other.example", CommonTlsContext: fileCA()}, false, 503},
		{"subjectAltNames over the SNI", &tlsv3.UpstreamTlsContext{Sni: "other.example", CommonTlsContext: fileCA("nope.example", "example.com")}, false, 200},
		{"subjectAltNames the certificate lacks", &tlsv3.UpstreamTlsContext{Sni: "example.com", CommonTlsContext: fileCA("nope.example")}, false, 503},
		{"the CA of an SDS secret", &tlsv3.UpstreamTlsContext{Sni: "example.com", CommonTlsContext: sdsCA}, true, 200},
		{"an SDS CA not received", &tlsv3.UpstreamTlsContext{Sni: "example.com", CommonTlsContext: sdsCA}, false, 503},
		// No validation context at all: Envoy's (and Istio's) insecureSkipVerify.
		{"insecureSkipVerify", &tlsv3.UpstreamTlsContext{Sni: "other.example", CommonTlsContext: &tlsv3.CommonTlsContext{}}, false, 200},
	} {
		t.Run(c.name, func(t *testing.T) {
			var more xdsclient.State
			if c.secret {
				more = xdsclient.State{resource.SecretType: {"kubernetes://ext-cacert": mustAny(t, &tlsv3.Secret{Name: "kubernetes://ext-cacert",
					Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: caPEM}}}}})}}
			}
			_, front := startProxyWith(t, up.Listener.Addr().String(), func(cl *cluster.Cluster) {
				cl.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(t, c.ctx)}}
			}, nil, proxySetup{more: more})
			resp, err := http.Get("http://" + front + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%s: %d %s, want %d", c.name, resp.StatusCode, body, c.want)
			}
			if c.want == 200 && string(body) != "tls "+c.ctx.GetSni() {
				t.Errorf("%s: the server saw %q, want SNI %s", c.name, body, c.ctx.GetSni())
			}
		})
	}
}

// A CA file is parsed once, and again when it changes.
func TestCAPoolFollowsTheFile(t *testing.T) {
	up := httptest.NewTLSServer(http.NotFoundHandler())
	defer up.Close()
	f := filepath.Join(t.TempDir(), "ca.pem")
	one := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw})
	if err := os.WriteFile(f, one, 0o644); err != nil {
		t.Fatal(err)
	}
	p := New(Options{})
	a, err := p.caPool(f)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := p.caPool(f); b != a {
		t.Error("an unchanged file was parsed again")
	}
	if err := os.WriteFile(f, append(one, one...), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, _ := p.caPool(f); c == a {
		t.Error("a changed file was not read again")
	}
	if err := os.WriteFile(f, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := p.caPool(f); err == nil {
		t.Error("a file without certificates gave a pool")
	}
}
