package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
)

func TestIssuedCertificatesChainToTheCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.LoadOrIssue(dir, "server", Request{CommonName: "api", DNSNames: []string{"kubernetes"}, IPs: []net.IP{net.ParseIP("198.18.1.1")}, Server: true})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := tls.LoadX509KeyPair(pair.CertFile, pair.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(kp.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "198.18.1.1"}); err != nil {
		t.Fatalf("server certificate does not verify for its IP: %v", err)
	}

	// A second load returns the same CA and leaves issued files alone.
	before, _ := os.ReadFile(pair.CertFile)
	ca2, err := LoadOrCreateCA(dir, "ca", "test-ca")
	if err != nil || !ca2.Cert.Equal(ca.Cert) {
		t.Fatalf("reload CA: %v", err)
	}
	if _, err := ca2.LoadOrIssue(dir, "server", Request{CommonName: "other"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(pair.CertFile)
	if string(before) != string(after) {
		t.Fatal("an existing certificate was re-issued")
	}
}

func TestRSAKeyIsReused(t *testing.T) {
	dir := t.TempDir()
	k1, p1, err := LoadOrCreateRSAKey(dir, "sa")
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := os.ReadFile(k1)
	k2, p2, _ := LoadOrCreateRSAKey(dir, "sa")
	b2, _ := os.ReadFile(k2)
	if k1 != k2 || p1 != p2 || string(b1) != string(b2) {
		t.Fatal("service-account key changed between calls")
	}
}
