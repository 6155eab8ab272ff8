package xds_test

import (
	"context"
	"net"
	"testing"
	"time"

	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// serve runs an xDS server over reg on a loopback port until the test ends.
func serve(t *testing.T, reg *registry.Registry) (*xds.Server, string) {
	t.Helper()
	return serveConfig(t, xds.ServerConfig{Registry: reg, Debounce: 10 * time.Millisecond})
}

// serveConfig runs an xDS server of cfg on a loopback port until the test ends.
func serveConfig(t *testing.T, cfg xds.ServerConfig) (*xds.Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := xds.NewServer(cfg)
	g := grpc.NewServer(xds.ServerOption())
	srv.Register(g)
	go srv.Run(ctx)
	return srv, listen(t, g)
}

// listen serves g on a loopback port until the test ends and returns
// its address.
func listen(t *testing.T, g *grpc.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(l)
	t.Cleanup(g.Stop)
	return l.Addr().String()
}

// adsClient opens a connection to the server for the test.
func adsClient(t *testing.T, addr string) discoverygrpc.AggregatedDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return discoverygrpc.NewAggregatedDiscoveryServiceClient(conn)
}

// receive passes a stream's responses on a channel until it ends.
func receive[R any](recv func() (R, error)) <-chan R {
	out := make(chan R, 16)
	go func() {
		defer close(out)
		for {
			r, err := recv()
			if err != nil {
				return
			}
			out <- r
		}
	}()
	return out
}

// gather hands take the responses that arrive within a moment of the
// first one (which must come within 5 s).
func gather[R any](t *testing.T, responses <-chan R, take func(R)) {
	t.Helper()
	select {
	case r := <-responses:
		take(r)
	case <-time.After(5 * time.Second):
		t.Fatal("no response")
	}
	quiet := time.After(300 * time.Millisecond)
	for {
		select {
		case r := <-responses:
			take(r)
		case <-quiet:
			return
		}
	}
}
