// Package ca is the control plane's certificate authority: the signing key
// and certificate, the trust bundle, and how they are kept in Kubernetes.
//
// Two sources, as istiod reads them: a plug-in CA from the Secret `cacerts`
// (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) so that each
// cluster can sign under its own intermediate of one root; else a
// self-signed root kept in the Secret `istio-ca-secret`, created on first
// start so restarts keep the same root.
package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// Secret names and keys, Istio's.
const (
	PluginSecret     = "cacerts"
	SelfSignedSecret = "istio-ca-secret"
	CACertKey        = "ca-cert.pem"
	CAKeyKey         = "ca-key.pem"
	CertChainKey     = "cert-chain.pem"
	RootCertKey      = "root-cert.pem"
	// SelfSignedSecretType is the type istiod gives istio-ca-secret.
	SelfSignedSecretType = "istio.io/ca-root"
)

// Limits of issued certificates, istiod's defaults.
const (
	DefaultWorkloadTTL = 24 * time.Hour
	MaxWorkloadTTL     = 90 * 24 * time.Hour
	selfSignedRootTTL  = 10 * 365 * 24 * time.Hour
)

// Authority signs certificates with one key. It is immutable; a reload
// builds a new one.
type Authority struct {
	signer    crypto.Signer
	cert      *x509.Certificate
	chainPEM  [][]byte // from the signing certificate up, roots excluded
	rootPEM   []byte   // the trust bundle, one or more roots
	roots     *x509.CertPool
	rootCerts []*x509.Certificate
	// Source says where the material came from, for logs.
	Source string
}

// NewSelfSigned makes a root CA for a trust domain.
func NewSelfSigned(trustDomain string) (*Authority, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{trustDomain}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(selfSignedRootTTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	a, err := New(certPEM, keyPEM, nil, certPEM)
	if err != nil {
		return nil, nil, nil, err
	}
	a.Source = SelfSignedSecret
	return a, certPEM, keyPEM, nil
}

// New loads CA material in the plug-in format. chainPEM may be empty (the
// signing certificate is then its own chain) and may include the root.
// The signing certificate must chain to one of the roots in rootPEM.
func New(certPEM, keyPEM, chainPEM, rootPEM []byte) (*Authority, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CACertKey, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s: certificate %q is not a CA (basic constraints)", CACertKey, cert.Subject)
	}
	signer, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CAKeyKey, err)
	}
	if !publicKeysEqual(signer.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to %s", CAKeyKey, CACertKey)
	}
	rootCerts, err := parseCerts(rootPEM)
	if err != nil || len(rootCerts) == 0 {
		return nil, fmt.Errorf("%s: no certificate: %v", RootCertKey, err)
	}
	roots := x509.NewCertPool()
	for _, r := range rootCerts {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	chainCerts, err := parseCerts(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", CertChainKey, err)
	}
	a := &Authority{signer: signer, cert: cert, rootPEM: bytes.TrimSpace(rootPEM), roots: roots, rootCerts: rootCerts, Source: PluginSecret}
	a.rootPEM = append(a.rootPEM, '\n')
	// The chain sent to workloads: signing cert, then intermediates, no roots.
	a.chainPEM = append(a.chainPEM, pemOf(cert))
	for _, c := range chainCerts {
		inter.AddCert(c)
		if c.Equal(cert) || isRoot(c, rootCerts) {
			continue
		}
		a.chainPEM = append(a.chainPEM, pemOf(c))
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s does not chain to %s through %s: %w", CACertKey, RootCertKey, CertChainKey, err)
	}
	return a, nil
}

// RootPEM is the trust bundle (every root workloads must accept).
func (a *Authority) RootPEM() []byte { return a.rootPEM }

// Roots is the trust bundle as a pool.
func (a *Authority) Roots() *x509.CertPool { return a.roots }

// Certificate is the signing certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// RootExpiry is the earliest expiry of the trust bundle.
func (a *Authority) RootExpiry() time.Time {
	var t time.Time
	for _, r := range a.rootCerts {
		if t.IsZero() || r.NotAfter.Before(t) {
			t = r.NotAfter
		}
	}
	return t
}

// Request is what a leaf certificate is issued for.
type Request struct {
	// PublicKey of the workload (from its CSR).
	PublicKey crypto.PublicKey
	// URIs and DNSNames become the subject alternative names.
	URIs     []*url.URL
	DNSNames []string
	TTL      time.Duration
}

// Sign issues a leaf and returns its chain in Istio's response shape: leaf,
// intermediates, and the whole trust bundle as the last element.
func (a *Authority) Sign(r Request) ([]string, *x509.Certificate, error) {
	if len(r.URIs) == 0 && len(r.DNSNames) == 0 {
		return nil, nil, errors.New("no identity to certify")
	}
	ttl := r.TTL
	if ttl <= 0 {
		ttl = DefaultWorkloadTTL
	}
	ttl = min(ttl, MaxWorkloadTTL)
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		NotBefore:             now.Add(-30 * time.Second), // tolerate clock skew between nodes
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  r.URIs,
		DNSNames:              r.DNSNames,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, r.PublicKey, a.signer)
	if err != nil {
		return nil, nil, fmt.Errorf("sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	chain := []string{string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
	for _, c := range a.chainPEM {
		chain = append(chain, string(c))
	}
	return append(chain, string(a.rootPEM)), leaf, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func isRoot(c *x509.Certificate, roots []*x509.Certificate) bool {
	for _, r := range roots {
		if c.Equal(r) {
			return true
		}
	}
	return false
}

func parseCert(b []byte) (*x509.Certificate, error) {
	certs, err := parseCerts(b)
	if err != nil {
		return nil, err
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs[0], nil
}

// parseCerts reads every CERTIFICATE block.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// parseKey reads a PKCS#8, PKCS#1 (RSA) or SEC 1 (EC) private key.
func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM private key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	return nil, fmt.Errorf("cannot parse %q block as a PKCS#8, PKCS#1 or EC private key", blk.Type)
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}
