package xds_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsresolver "google.golang.org/grpc/xds"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// TestGRPCGoClient: grpc-go's own xDS resolver and balancer, a third-party
// client, resolve xds:///HOST:PORT through our server and call the backend.
func TestGRPCGoClient(t *testing.T) {
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := int32(backend.Addr().(*net.TCPAddr).Port)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(backend)
	defer gs.Stop()

	reg := registry.New()
	// Another service, so the client asks for one listener among several.
	reg.SetService("c1", "other.ns.svc.cluster.local", &registry.Service{Namespace: "ns", Name: "other", Hostname: "other.ns.svc.cluster.local", Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP"}}})
	host := "greeter.ns.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "greeter", Hostname: host, Ports: []registry.Port{{Name: "grpc", Port: port, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", host, []registry.Endpoint{{Address: "127.0.0.1", Ports: map[string]int32{"grpc": port}, Cluster: "c1", Ready: true}})

	ctx := context.Background()
	srv, addr := serve(t, reg)

	bootstrap := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
"node": {"id": "sidecar~127.0.0.1~client.ns~ns.svc.cluster.local", "metadata": {"GENERATOR": "grpc", "CLUSTER_ID": "c1"}}}`, addr)
	builder, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(fmt.Sprintf("xds:///%s:%d", host, port), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
	defer ccancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		t.Fatalf("call via xDS: %v\nproxies: %+v", err, srv.Syncz())
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("status %v", resp.Status)
	}
}
