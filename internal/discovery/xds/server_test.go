package xds_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// serve runs an xDS server over reg on a loopback port until the test ends.
func serve(t *testing.T, reg *registry.Registry) (*xds.Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	srv := xds.NewServer(reg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	srv.Debounce = 10 * time.Millisecond
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go g.Serve(l)
	t.Cleanup(g.Stop)
	go srv.Run(ctx)
	return srv, l.Addr().String()
}
