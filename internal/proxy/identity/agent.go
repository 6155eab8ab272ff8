// Package identity is the proxy's certificate agent (the role of Istio's
// pilot-agent SDS): it makes a key and a CSR, gets the workload certificate
// from the control plane's IstioCertificateService with the pod's
// service-account token, renews it at 80% of its life, and hands it to the
// proxy's listeners in memory. Renewal swaps what new handshakes see;
// established connections are untouched.
package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	pb "istio.io/api/security/v1alpha1"
)

// Istio's defaults for where a pod keeps what the agent needs.
const (
	DefaultTokenFile = "/var/run/secrets/tokens/istio-token"
	DefaultRootFile  = "/var/run/secrets/istio/root-cert.pem"
	// renewAt is the share of a certificate's remaining life after which it is renewed.
	renewAt = 0.8
)

// Config says where the CA is and how to prove who we are.
type Config struct {
	// CAAddr is host:port of the certificate service, e.g.
	// istiod.istio-system.svc:15012, or a gRPC target such as unix:///path.
	CAAddr string
	// CAServerName is the name the control plane's certificate must carry;
	// default: the host of CAAddr.
	CAServerName string
	// RootCert is the PEM trust bundle to verify the control plane with
	// until the CA sends its own (the ConfigMap istio-ca-root-cert).
	RootCert []byte
	// TokenFile holds the projected service-account token (audience istio-ca);
	// read at every request, since the kubelet rotates it.
	TokenFile string
	// ClusterID tells the CA which cluster reviews the token.
	ClusterID string
	// TTL asked for; 0 lets the CA choose (24 h by default).
	TTL time.Duration
	// Dial overrides how the CA is reached (tests, or a pod network namespace).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	Log  *slog.Logger
}

// Agent holds the current certificate and trust bundle.
type Agent struct {
	cfg   Config
	cur   atomic.Pointer[material]
	boot  *x509.CertPool
	ready chan struct{}
	conn  *grpc.ClientConn
}

// material is one issued certificate and the bundle that came with it.
type material struct {
	cert   *tls.Certificate
	svid   *x509svid.SVID
	roots  []*x509.Certificate
	pool   *x509.CertPool
	bundle []byte
}

// New checks the configuration and connects lazily.
func New(cfg Config) (*Agent, error) {
	if cfg.CAAddr == "" {
		return nil, errors.New("CA address is required (the control plane's 15012, e.g. istiod.istio-system.svc:15012)")
	}
	target := cfg.CAAddr
	if !strings.Contains(target, "://") {
		host, _, err := net.SplitHostPort(cfg.CAAddr)
		if err != nil {
			return nil, fmt.Errorf("CA address %q: %w", cfg.CAAddr, err)
		}
		if cfg.CAServerName == "" {
			cfg.CAServerName = host
		}
		target = "passthrough:///" + target
	}
	if cfg.CAServerName == "" {
		return nil, fmt.Errorf("CA address %q: the control plane's certificate name is needed (--server-name)", cfg.CAAddr)
	}
	if cfg.TokenFile == "" {
		cfg.TokenFile = DefaultTokenFile
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	boot := x509.NewCertPool()
	if !boot.AppendCertsFromPEM(cfg.RootCert) {
		return nil, errors.New("no root certificate to verify the control plane with (mount the ConfigMap istio-ca-root-cert)")
	}
	a := &Agent{cfg: cfg, boot: boot, ready: make(chan struct{})}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(a.ControlPlaneCredentials())}
	if cfg.Dial != nil {
		opts = append(opts, grpc.WithContextDialer(cfg.Dial))
	}
	var err error
	a.conn, err = grpc.NewClient(target, opts...)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Run gets the first certificate and renews it until ctx ends. Failures
// are retried with backoff while the current certificate keeps serving.
func (a *Agent) Run(ctx context.Context) error {
	defer a.conn.Close()
	backoff := time.Second
	for {
		next := backoff
		m, err := a.fetch(ctx)
		if err == nil {
			first := a.cur.Swap(m) == nil
			if first {
				close(a.ready)
			}
			leaf := m.svid.Certificates[0]
			next = time.Duration(float64(time.Until(leaf.NotAfter)) * renewAt)
			a.cfg.Log.Info("workload certificate issued", "identity", m.svid.ID.String(), "expires", leaf.NotAfter.Format(time.RFC3339), "renew_in", next.Round(time.Second))
			backoff = time.Second
		} else {
			if ctx.Err() != nil {
				return nil
			}
			a.cfg.Log.Warn("workload certificate not issued; retrying", "ca", a.cfg.CAAddr, "in", backoff, "err", err)
			backoff = min(2*backoff, 30*time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(next):
		}
	}
}

// Ready is closed once the first certificate is in.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// ID is the workload's SPIFFE ID (zero before the first certificate).
func (a *Agent) ID() spiffeid.ID {
	if m := a.cur.Load(); m != nil {
		return m.svid.ID
	}
	return spiffeid.ID{}
}

// Leaf is the current certificate, nil before the first.
func (a *Agent) Leaf() *x509.Certificate {
	if m := a.cur.Load(); m != nil {
		return m.svid.Certificates[0]
	}
	return nil
}

// BundlePEM is the trust bundle the CA sent last.
func (a *Agent) BundlePEM() []byte {
	if m := a.cur.Load(); m != nil {
		return m.bundle
	}
	return nil
}

// GetX509SVID makes the agent a go-spiffe SVID source.
func (a *Agent) GetX509SVID() (*x509svid.SVID, error) {
	m := a.cur.Load()
	if m == nil {
		return nil, errors.New("no workload certificate yet")
	}
	return m.svid, nil
}

// GetX509BundleForTrustDomain makes the agent a go-spiffe bundle source.
// A mesh has one bundle; trust domain aliases all resolve to it.
func (a *Agent) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	m := a.cur.Load()
	if m == nil {
		return nil, errors.New("no trust bundle yet")
	}
	return x509bundle.FromX509Authorities(td, m.roots), nil
}

// bundleSource is one set of roots for every trust domain.
type bundleSource []*x509.Certificate

func (b bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return x509bundle.FromX509Authorities(td, b), nil
}

// getCertificate hands out the cached certificate: no per-handshake work.
func (a *Agent) getCertificate() (*tls.Certificate, error) {
	m := a.cur.Load()
	if m == nil {
		return nil, errors.New("no workload certificate yet")
	}
	return m.cert, nil
}

// controlPlaneRoots trusts the bootstrap root and the CA's latest bundle.
func (a *Agent) controlPlaneRoots() *x509.CertPool {
	if m := a.cur.Load(); m != nil {
		pool := a.boot.Clone()
		for _, r := range m.roots {
			pool.AddCert(r)
		}
		return pool
	}
	return a.boot
}

// ControlPlaneCredentials verify the control plane's certificate (its DNS
// name, CAServerName) against the current trust bundle, for the CA and the
// xDS connection alike.
func (a *Agent) ControlPlaneCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: a.cfg.CAServerName,
		// Verified below against roots that change over time.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("control plane sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				DNSName: a.cfg.CAServerName, Roots: a.controlPlaneRoots(), Intermediates: inter,
			})
			if err != nil {
				return fmt.Errorf("control plane certificate: %w", err)
			}
			return nil
		},
	})
}

// CallMetadata is what the control plane needs on every call: the token
// and the cluster that reviews it.
func (a *Agent) CallMetadata(ctx context.Context) (context.Context, error) {
	token, err := os.ReadFile(a.cfg.TokenFile)
	if err != nil {
		return ctx, fmt.Errorf("service-account token: %w", err)
	}
	return metadata.AppendToOutgoingContext(ctx,
		"authorization", "Bearer "+strings.TrimSpace(string(token)), "clusterid", a.cfg.ClusterID), nil
}

func (a *Agent) fetch(ctx context.Context) (*material, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	ctx, err = a.CallMetadata(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := pb.NewIstioCertificateServiceClient(a.conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValidityDuration: int64(a.cfg.TTL / time.Second),
	})
	if err != nil {
		return nil, err
	}
	return parseResponse(resp.GetCertChain(), key)
}

// parseResponse reads Istio's chain: leaf, intermediates, trust bundle last.
func parseResponse(chain []string, key *ecdsa.PrivateKey) (*material, error) {
	if len(chain) < 2 {
		return nil, fmt.Errorf("CA answered %d certificates; want the leaf and the root at least", len(chain))
	}
	m := &material{cert: &tls.Certificate{PrivateKey: key}, pool: x509.NewCertPool(), bundle: []byte(chain[len(chain)-1])}
	var certs []*x509.Certificate
	for i, p := range chain[:len(chain)-1] {
		cs, err := parsePEM([]byte(p))
		if err != nil || len(cs) == 0 {
			return nil, fmt.Errorf("CA chain element %d: not a certificate: %v", i, err)
		}
		certs = append(certs, cs...)
	}
	roots, err := parsePEM(m.bundle)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("CA trust bundle: not a certificate: %v", err)
	}
	for _, c := range certs {
		m.cert.Certificate = append(m.cert.Certificate, c.Raw)
	}
	m.cert.Leaf = certs[0]
	for _, r := range roots {
		m.pool.AddCert(r)
	}
	m.roots = roots
	if pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("CA certified another key than ours")
	}
	id, _, err := x509svid.Verify(certs, bundleSource(roots))
	if err != nil {
		return nil, fmt.Errorf("issued certificate does not verify against the bundle: %w", err)
	}
	m.svid = &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}
	return m, nil
}

func parsePEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
