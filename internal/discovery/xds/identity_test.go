package xds_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identityStream) Context() context.Context { return s.ctx }

// A stream whose token proves test/sleep may only speak for a node of
// namespace test with that service account.
func TestNodeMustMatchTheCallersIdentity(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := xds.NewServer(registry.New(), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.StreamInterceptor(func(s any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		return h(s, identityStream{ss, xds.WithIdentity(ss.Context(), xds.Identity{Namespace: "test", ServiceAccount: "sleep"})})
	}))
	srv.Register(g)
	go g.Serve(l)
	defer g.Stop()
	go srv.Run(ctx)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ask := func(id string, md map[string]string) error {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			return err
		}
		_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &core.Node{Id: id, Metadata: xds.NodeMetadata(md)}})
		_, err = s.Recv()
		return err
	}
	if err := ask("sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", map[string]string{"SERVICE_ACCOUNT": "sleep"}); err != nil {
		t.Fatalf("matching node refused: %v", err)
	}
	for name, tc := range map[string]struct {
		id string
		md map[string]string
	}{
		"another namespace":       {"sidecar~10.0.0.1~x-1.prod~prod.svc.cluster.local", nil},
		"another service account": {"sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", map[string]string{"SERVICE_ACCOUNT": "admin"}},
	} {
		if err := ask(tc.id, tc.md); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, err)
		}
	}
}
