package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The agent verifies the control plane's name against its root: a server
// whose certificate (under that root) names another host is refused
// before any token is sent. (The agent against the real CA is tested in
// test/contract.)
func TestControlPlaneNameIsVerified(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"istiod.istio-system.svc"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	tokenFile := filepath.Join(t.TempDir(), "t")
	_ = os.WriteFile(tokenFile, []byte("sleep-token"), 0o600)
	a, err := New(Config{CAAddr: l.Addr().String(), CAServerName: "evil.example", RootCert: root, TokenFile: tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a.fetch(ctx); err == nil || !strings.Contains(err.Error(), "control plane certificate") {
		t.Fatalf("wrong control plane name: %v", err)
	}
	if _, err := New(Config{CAAddr: l.Addr().String(), TokenFile: tokenFile}); err == nil {
		t.Fatal("agent started without a root to verify the control plane")
	}
}
