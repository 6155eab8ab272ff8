package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
)

// Authenticator names the caller of a request.
type Authenticator interface {
	Authenticate(ctx context.Context) (Caller, error)
}

// Server is Istio's certificate service (istio.v1.auth.IstioCertificateService).
type Server struct {
	// The generated interface requires this embedding (forward
	// compatibility); the service's one method, CreateCertificate, is below.
	pb.UnimplementedIstioCertificateServiceServer
	Store       *Store
	Auth        Authenticator
	TrustDomain string
	// DefaultTTL applies when a request asks for none.
	DefaultTTL time.Duration
	Log        *slog.Logger

	csrs, issued, authFailures *prometheus.CounterVec
}

// NewServer makes the service; Register serves it.
func NewServer(store *Store, auth Authenticator, trustDomain string, defaultTTL time.Duration, log *slog.Logger) *Server {
	return &Server{Store: store, Auth: auth, TrustDomain: trustDomain, DefaultTTL: defaultTTL, Log: log,
		csrs:         prometheus.NewCounterVec(prometheus.CounterOpts{Name: "citadel_server_csr_count", Help: "Certificate signing requests received."}, nil),
		issued:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "citadel_server_success_cert_issuance_count", Help: "Certificates issued."}, nil),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "citadel_server_authentication_failure_count", Help: "Requests refused because the caller was not authenticated."}, nil),
	}
}

// Register adds the service and its metrics (Istio's citadel_server_* names).
func (s *Server) Register(g *grpc.Server, metrics prometheus.Registerer) error {
	rootExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_root_cert_expiry_timestamp", Help: "Unix time the earliest root of the trust bundle expires."},
		func() float64 { return float64(s.Store.Current().RootExpiry().Unix()) })
	chainExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "citadel_server_cert_chain_expiry_timestamp", Help: "Unix time the signing certificate expires."},
		func() float64 { return float64(s.Store.Current().Certificate().NotAfter.Unix()) })
	if metrics != nil {
		for _, c := range []prometheus.Collector{s.csrs, s.issued, s.authFailures, rootExpiry, chainExpiry} {
			if err := metrics.Register(c); err != nil {
				return err
			}
		}
	}
	pb.RegisterIstioCertificateServiceServer(g, s)
	return nil
}

// CreateCertificate signs a workload's CSR with the identity its token
// proves. A CSR naming any other identity is refused rather than ignored,
// so a confused or malicious caller learns at once.
func (s *Server) CreateCertificate(ctx context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	s.csrs.WithLabelValues().Inc()
	caller, err := s.Auth.Authenticate(ctx)
	if err != nil {
		s.authFailures.WithLabelValues().Inc()
		s.Log.Warn("certificate request refused", "err", err)
		return nil, err
	}
	blk, _ := pem.Decode([]byte(req.GetCsr()))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, status.Error(codes.InvalidArgument, "csr is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr signature: %v", err)
	}
	id := caller.Identity(s.TrustDomain)
	for _, u := range csr.URIs {
		if u.String() != id {
			s.Log.Warn("certificate request for another identity refused", "caller", id, "asked", u.String(), "cluster", caller.Cluster)
			return nil, status.Errorf(codes.PermissionDenied, "csr asks for %s but the token proves %s", u, id)
		}
	}
	ttl := time.Duration(req.GetValidityDuration()) * time.Second
	if ttl == 0 {
		ttl = s.DefaultTTL
	}
	if ttl > MaxWorkloadTTL {
		return nil, status.Errorf(codes.InvalidArgument, "requested TTL %s is greater than the maximum %s", ttl, MaxWorkloadTTL)
	}
	uri, _ := url.Parse(id)
	chain, leaf, err := s.Store.Current().Sign(Request{PublicKey: csr.PublicKey, URIs: []*url.URL{uri}, TTL: ttl})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	s.issued.WithLabelValues().Inc()
	s.Log.Debug("certificate issued", "identity", id, "cluster", caller.Cluster, "expires", leaf.NotAfter)
	return &pb.IstioCertificateResponse{CertChain: chain}, nil
}
