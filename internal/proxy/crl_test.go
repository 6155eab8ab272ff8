package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// testCA is a CA that issues a server certificate and revocation lists.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) server(t *testing.T, serial int64) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "server.example"}, DNSNames: []string{"server.example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// crl is a PEM CRL of the CA listing serials, current until next.
func (ca *testCA) crl(t *testing.T, next time.Time, serials ...int64) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, s := range serials {
		entries = append(entries, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: time.Now().Add(-time.Minute)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: next,
		RevokedCertificateEntries: entries}, ca.cert, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
}

// A DestinationRule's caCrl (the validation context's crl, as istiod
// sends it): a server whose certificate the CRL revokes is refused, and so
// is one the file cannot vouch for (no CRL from its issuer, an expired
// CRL, no file): revocation that cannot be checked is not assumed absent.
func TestOriginatedTLSChecksTheCRL(t *testing.T) {
	ca, other := newTestCA(t, "ca"), newTestCA(t, "other")
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.server(t, 7)}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })}
	go func() { _ = srv.Serve(l) }()
	defer srv.Close()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(time.Hour)
	for _, c := range []struct {
		name string
		crl  []byte // nil: no file
		sans bool   // subjectAltNames rather than the SNI
		want int
	}{
		{"a CRL that lists other serials", ca.crl(t, soon, 3, 4), false, 200},
		{"a CRL that lists the server", ca.crl(t, soon, 3, 7), false, 503},
		{"a CRL that lists the server, names checked against subjectAltNames", ca.crl(t, soon, 7), true, 503},
		{"a CRL that does not, names checked against subjectAltNames", ca.crl(t, soon), true, 200},
		{"a CRL of another CA only", other.crl(t, soon), false, 503},
		{"an expired CRL", ca.crl(t, time.Now().Add(-time.Minute)), false, 503},
		{"no CRL file", nil, false, 503},
	} {
		t.Run(c.name, func(t *testing.T) {
			crlFile := filepath.Join(t.TempDir(), "crl.pem")
			if c.crl != nil {
				if err := os.WriteFile(crlFile, c.crl, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vc := &tlsv3.CertificateValidationContext{TrustedCa: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: caFile}},
				Crl: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: crlFile}}}
			if c.sans {
				vc.MatchTypedSubjectAltNames = []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "server.example"}}}}
			}
			ctx := &tlsv3.UpstreamTlsContext{Sni: "server.example", CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc}}}
			_, front := startProxy(t, l.Addr().(*net.TCPAddr).String(), func(cl *cluster.Cluster) {
				cl.TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(t, ctx)}}
			}, nil)
			resp, err := http.Get("http://" + front + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("%d, want %d", resp.StatusCode, c.want)
			}
		})
	}
}
