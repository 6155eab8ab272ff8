// Package catest runs the real certificate service for tests of its
// clients, with a fixed token table in place of TokenReview (which
// test/e2e checks against real API servers).
package catest

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/isthmus-mesh/isthmus/internal/discovery/ca"
)

// TokenAuth maps a bearer token to the workload it proves.
type TokenAuth map[string]ca.Caller

// Authenticate implements ca.Authenticator.
func (m TokenAuth) Authenticate(ctx context.Context) (ca.Caller, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if c, ok := m[strings.TrimPrefix(v, "Bearer ")]; ok {
			return c, nil
		}
	}
	return ca.Caller{}, errors.New("unknown token")
}

// Serve runs the certificate service over TLS on l (a certificate for
// serverName, e.g. istiod.istio-system.svc) until the test ends, and
// returns the root to trust.
func Serve(t testing.TB, l net.Listener, serverName string, auth ca.Authenticator) []byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	log := slog.Default()
	if _, ok := t.(*testing.B); ok {
		log = slog.New(slog.DiscardHandler) // benchmark output must stay parseable
	}
	store := &ca.Store{Client: fake.NewClientset(), Namespace: "istio-system", TrustDomain: "cluster.local", Log: log}
	if err := store.Load(ctx); err != nil {
		t.Fatal(err)
	}
	serving := &ca.ServingCert{Store: store, DNSNames: []string{serverName}, Log: log}
	if err := serving.Issue(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = serving.Run(ctx) }()
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{GetCertificate: serving.GetCertificate})))
	if err := ca.NewServer(store, auth, "cluster.local", time.Hour, log).Register(g, nil); err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(l) }()
	t.Cleanup(g.Stop)
	return store.Current().RootPEM()
}
