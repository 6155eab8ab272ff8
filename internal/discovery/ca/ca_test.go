package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// testCA makes a CA certificate and key, signed by parent (self-signed if nil).
func testCA(t *testing.T, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, []byte, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kd, _ := x509.MarshalECPrivateKey(key)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
}

func csrPEM(t *testing.T, uris ...string) (string, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		p, _ := url.Parse(u)
		tmpl.URIs = append(tmpl.URIs, p)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), key
}

func TestPluginCAChainsToRoot(t *testing.T) {
	root, rootKey, rootPEM, _ := testCA(t, "root", nil, nil)
	_, _, interPEM, interKeyPEM := testCA(t, "intermediate", root, rootKey)
	a, err := New(interPEM, interKeyPEM, append(append([]byte{}, interPEM...), rootPEM...), rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	u, _ := url.Parse("spiffe://cluster.local/ns/multicluster/sa/profile")
	chain, leaf, err := a.Sign(Request{PublicKey: key.Public(), URIs: []*url.URL{u}, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	// Istio's shape: leaf, the intermediate, and the bundle last; the root is not repeated.
	if len(chain) != 3 || chain[2] != string(rootPEM) {
		t.Fatalf("chain has %d elements, last %q; want leaf, intermediate, root bundle", len(chain), chain[len(chain)-1])
	}
	inter := x509.NewCertPool()
	inter.AppendCertsFromPEM([]byte(chain[1]))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: a.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("leaf does not chain to the root: %v", err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != u.String() || leaf.IsCA {
		t.Fatalf("leaf URIs %v, CA %v", leaf.URIs, leaf.IsCA)
	}
	if d := time.Until(leaf.NotAfter); d < 59*time.Minute || d > time.Hour {
		t.Fatalf("leaf lives %s, want 1h", d)
	}
}

func TestPluginCARejectsBrokenMaterial(t *testing.T) {
	root, rootKey, rootPEM, _ := testCA(t, "root", nil, nil)
	_, _, otherRootPEM, otherKeyPEM := testCA(t, "other root", nil, nil)
	_, _, interPEM, interKeyPEM := testCA(t, "intermediate", root, rootKey)
	for name, tc := range map[string]struct {
		cert, key, root []byte
		want            string
	}{
		"key of another certificate":   {interPEM, otherKeyPEM, rootPEM, "does not belong"},
		"intermediate of another root": {interPEM, interKeyPEM, otherRootPEM, "does not chain"},
		"no root":                      {interPEM, interKeyPEM, nil, "root-cert.pem"},
		"garbage key":                  {interPEM, []byte("nope"), rootPEM, "ca-key.pem"},
	} {
		if _, err := New(tc.cert, tc.key, nil, tc.root); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", name, err, tc.want)
		}
	}
}

// stubAuth is a caller fixed by the test.
type stubAuth struct {
	caller Caller
	err    error
}

func (s stubAuth) Authenticate(context.Context) (Caller, error) { return s.caller, s.err }

func TestCreateCertificate(t *testing.T) {
	client := fake.NewClientset()
	store := &Store{Client: client, Namespace: "istio-system", TrustDomain: "cluster.local", Log: slog.Default()}
	if err := store.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	srv := NewServer(store, stubAuth{caller: Caller{Cluster: "cluster-aks", Namespace: "multicluster", ServiceAccount: "profile"}},
		"cluster.local", 2*time.Hour, slog.Default())
	ctx := context.Background()

	csr, _ := csrPEM(t)
	resp, err := srv.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, _ := x509.ParseCertificate(blk.Bytes)
	if got := leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/multicluster/sa/profile" {
		t.Fatalf("identity %s", got)
	}
	if d := time.Until(leaf.NotAfter); d < 119*time.Minute || d > 2*time.Hour {
		t.Fatalf("default TTL gave %s", d)
	}

	for name, tc := range map[string]struct {
		req  *pb.IstioCertificateRequest
		code codes.Code
	}{
		"another identity": {&pb.IstioCertificateRequest{Csr: func() string { c, _ := csrPEM(t, "spiffe://cluster.local/ns/multicluster/sa/admin"); return c }()}, codes.PermissionDenied},
		"not a CSR":        {&pb.IstioCertificateRequest{Csr: "hello"}, codes.InvalidArgument},
		"TTL over the max": {&pb.IstioCertificateRequest{Csr: csr, ValidityDuration: int64((MaxWorkloadTTL + time.Hour) / time.Second)}, codes.InvalidArgument},
	} {
		if _, err := srv.CreateCertificate(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", name, err, tc.code)
		}
	}
	srv.Auth = stubAuth{err: status.Error(codes.Unauthenticated, "no")}
	if _, err := srv.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("unauthenticated caller: %v", err)
	}

	// A restart reads the same root back from istio-ca-secret.
	again := &Store{Client: client, Namespace: "istio-system", TrustDomain: "cluster.local", Log: slog.Default()}
	if err := again.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if string(again.Current().RootPEM()) != string(store.Current().RootPEM()) {
		t.Fatal("a second load made a new root instead of reading istio-ca-secret")
	}
}

func TestLoadPrefersPluginSecretAndRefusesABrokenOne(t *testing.T) {
	root, rootKey, rootPEM, _ := testCA(t, "root", nil, nil)
	_, _, interPEM, interKeyPEM := testCA(t, "intermediate", root, rootKey)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: PluginSecret, Namespace: "istio-system"},
		Data: map[string][]byte{CACertKey: interPEM, CAKeyKey: interKeyPEM, RootCertKey: rootPEM, CertChainKey: interPEM}}
	s := &Store{Client: fake.NewClientset(sec), Namespace: "istio-system", TrustDomain: "cluster.local", Log: slog.Default()}
	if err := s.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.Current().Source != PluginSecret || !s.Current().Certificate().Equal(mustParse(t, interPEM)) {
		t.Fatal("plug-in CA not used")
	}
	broken := sec.DeepCopy()
	delete(broken.Data, CAKeyKey)
	s = &Store{Client: fake.NewClientset(broken), Namespace: "istio-system", TrustDomain: "cluster.local", Log: slog.Default()}
	if err := s.Load(context.Background()); err == nil || !strings.Contains(err.Error(), "ca-key.pem is missing") {
		t.Fatalf("broken plug-in Secret: %v", err)
	}
}

func mustParse(t *testing.T, p []byte) *x509.Certificate {
	c, err := parseCert(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
