package identity

import (
	"crypto/tls"
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerConfig is mutual TLS for an inbound listener: the peer must show a
// workload certificate of the mesh's bundle that authorize accepts
// (tlsconfig.AuthorizeAny for any workload).
func (a *Agent) ServerConfig(authorize tlsconfig.Authorizer, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:            tls.VersionTLS12,
		NextProtos:            nextProtos,
		ClientAuth:            tls.RequireAnyClientCert,
		GetCertificate:        func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.getCertificate() },
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(a, authorize),
	}
}

// ClientConfig is mutual TLS for an upstream connection: sni is sent as
// the server name (Istio's outbound_.PORT_._.HOST), and the server must be
// a workload authorize accepts (the destination's service accounts).
func (a *Agent) ClientConfig(sni string, authorize tlsconfig.Authorizer, nextProtos ...string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: sni,
		NextProtos: nextProtos,
		// SPIFFE verification replaces host name verification.
		InsecureSkipVerify:    true,
		GetClientCertificate:  func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.getCertificate() },
		VerifyPeerCertificate: tlsconfig.VerifyPeerCertificate(a, authorize),
	}
}

// PeerID is the SPIFFE ID of a connection's verified peer.
func PeerID(cs tls.ConnectionState) (spiffeid.ID, error) {
	if len(cs.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("peer sent no certificate")
	}
	return x509svid.IDFromCert(cs.PeerCertificates[0])
}
