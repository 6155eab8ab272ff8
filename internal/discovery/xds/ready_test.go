package xds_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// TestNotReadyRefusesStreams: until the control plane says it is ready, a
// proxy's stream (either protocol) is refused as Unavailable with the
// reason, not given a mesh missing what was not synced yet; once ready,
// the same request is answered.
func TestNotReadyRefusesStreams(t *testing.T) {
	reg := registry.New()
	host := "profile.ns.svc.cluster.local"
	reg.SetService("c1", host, &registry.Service{Namespace: "ns", Name: "profile", Hostname: host, Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	var synced atomic.Bool
	_, addr := serveConfig(t, xds.ServerConfig{Registry: reg, Debounce: 10 * time.Millisecond, Ready: func() error {
		if !synced.Load() {
			return errors.New("remote cluster c2 syncing")
		}
		return nil
	}})
	client := adsClient(t, addr)
	node := &core.Node{Id: "sidecar~10.0.0.9~sleep.ns~ns.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	// The first response of a stream of each protocol, or its error.
	first := map[string]func(ctx context.Context) (int, error){
		"delta": func(ctx context.Context) (int, error) {
			stream, err := client.DeltaAggregatedResources(ctx)
			if err != nil {
				return 0, err
			}
			if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
				return 0, err
			}
			resp, err := stream.Recv()
			return len(resp.GetResources()), err
		},
		"state of the world": func(ctx context.Context) (int, error) {
			stream, err := client.StreamAggregatedResources(ctx)
			if err != nil {
				return 0, err
			}
			if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
				return 0, err
			}
			resp, err := stream.Recv()
			return len(resp.GetResources()), err
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, f := range first {
		n, err := f(ctx)
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "remote cluster c2 syncing") {
			t.Errorf("%s, before ready: %d clusters, err %v; want Unavailable saying why", name, n, err)
		}
	}
	synced.Store(true)
	for name, f := range first {
		if n, err := f(ctx); err != nil || n == 0 {
			t.Errorf("%s, once ready: %d clusters, err %v", name, n, err)
		}
	}
}
