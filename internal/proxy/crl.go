package proxy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// A DestinationRule's caCrl (Envoy's validation context crl) is checked as
// Envoy checks it by default: every certificate of the server's chain but
// the trust anchor needs a current CRL from its issuer in the file, and
// none of them may be listed. A CRL that cannot be read, or a chain it
// does not cover, refuses the connection: revocation that cannot be
// checked is not assumed absent.

// crlList is the CRLs of a file (PEM "X509 CRL" blocks, or one DER list),
// parsed again only when the file changes.
func (p *Proxy) crlList(path string) ([]*x509.RevocationList, error) {
	return parseCached(&p.crlFiles, path, func(b []byte) ([]*x509.RevocationList, error) {
		var list []*x509.RevocationList
		if !bytes.Contains(b, []byte("-----BEGIN")) {
			l, err := x509.ParseRevocationList(b)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			list = append(list, l)
		}
		for rest := b; ; {
			var block *pem.Block
			if block, rest = pem.Decode(rest); block == nil {
				break
			}
			if block.Type != "X509 CRL" {
				continue
			}
			l, err := x509.ParseRevocationList(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			list = append(list, l)
		}
		if len(list) == 0 {
			return nil, fmt.Errorf("no CRL in %s", path)
		}
		return list, nil
	})
}

// notRevoked accepts a connection if one of its verified chains is
// covered by crls and revoked by none.
func notRevoked(chains [][]*x509.Certificate, crls []*x509.RevocationList, now time.Time) error {
	if len(chains) == 0 {
		return errors.New("no verified chain to check against the CRL")
	}
	var first error
	for _, chain := range chains {
		err := chainNotRevoked(chain, crls, now)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	return first
}

func chainNotRevoked(chain []*x509.Certificate, crls []*x509.RevocationList, now time.Time) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		var crl *x509.RevocationList
		for _, l := range crls {
			if bytes.Equal(l.RawIssuer, cert.RawIssuer) && l.CheckSignatureFrom(issuer) == nil {
				crl = l
				break
			}
		}
		if crl == nil {
			return fmt.Errorf("the CRL file has no CRL signed by the issuer of %q", cert.Subject)
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			return fmt.Errorf("the CRL of %q's issuer expired at %s", cert.Subject, crl.NextUpdate.Format(time.RFC3339))
		}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber != nil && e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return fmt.Errorf("the certificate %q (serial %s) is revoked", cert.Subject, cert.SerialNumber)
			}
		}
	}
	return nil
}
