package xds_test

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/workloadentry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// A stream whose token proves test/sleep may only speak for its own pod:
// namespace, service account, pod, labels and role are the pod's, not
// what the node says.
func TestNodeMustMatchTheCallersIdentity(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func(d time.Duration) { xds.PodWait = d }(xds.PodWait)
	xds.PodWait = 300 * time.Millisecond
	reg := registry.New()
	reg.SetWorkload("", "10.0.0.1", registry.Workload{Namespace: "test", Name: "sleep-1", ServiceAccount: "sleep", Labels: map[string]string{"app": "sleep"}}, true)
	reg.SetWorkload("", "10.0.0.2", registry.Workload{Namespace: "test", Name: "bank-1", ServiceAccount: "bank", Labels: map[string]string{"app": "bank"}}, true)
	srv := xds.NewServer(xds.ServerConfig{Registry: reg})
	g := grpc.NewServer(grpc.StreamInterceptor(xds.Authenticated(func(context.Context) (xds.Identity, error) {
		return xds.Identity{Namespace: "test", ServiceAccount: "sleep"}, nil
	})))
	srv.Register(g)
	ads := adsClient(t, listen(t, g))
	go srv.Run(ctx)
	ask := func(id string, md map[string]string) error {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			return err
		}
		_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &core.Node{Id: id, Metadata: proxyview.NodeMetadata(md)}})
		_, err = s.Recv()
		return err
	}
	if err := ask("sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", map[string]string{"SERVICE_ACCOUNT": "sleep"}); err != nil {
		t.Fatalf("matching node refused: %v", err)
	}
	labelled := func(kv ...string) *structpb.Struct {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return proxyview.NodeMetadata(m)
	}
	if err := askLabelled(ctx, ads, "sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", labelled("app", "sleep")); err != nil {
		t.Fatalf("a node claiming its pod's own label refused: %v", err)
	}
	for name, tc := range map[string]struct {
		id string
		md map[string]string
	}{
		"another namespace":                     {"sidecar~10.0.0.1~x-1.prod~prod.svc.cluster.local", nil},
		"another service account":               {"sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", map[string]string{"SERVICE_ACCOUNT": "admin"}},
		"another pod's name at its own address": {"sidecar~10.0.0.1~bank-1.test~test.svc.cluster.local", nil},
		"another pod's address":                 {"sidecar~10.0.0.2~bank-1.test~test.svc.cluster.local", nil},
		"a router's role":                       {"router~10.0.0.1~sleep-1.test~test.svc.cluster.local", nil},
	} {
		if err := ask(tc.id, tc.md); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: %v, want PermissionDenied", name, err)
		}
	}
	if err := askLabelled(ctx, ads, "sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local", labelled("istio", "ingressgateway")); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a label its pod lacks: %v, want PermissionDenied", err)
	}
	if err := ask("sidecar~10.0.0.9~sleep-9.test~test.svc.cluster.local", nil); status.Code(err) != codes.Unavailable {
		t.Errorf("no pod at the address: %v, want Unavailable (the proxy retries)", err)
	}
}

// askLabelled opens a stream for a node with LABELS and returns the
// first response's error.
func askLabelled(ctx context.Context, ads discoverygrpc.AggregatedDiscoveryServiceClient, id string, labels *structpb.Struct) error {
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	s, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		return err
	}
	_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &core.Node{Id: id,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{"LABELS": structpb.NewStructValue(labels)}}}})
	_, err = s.Recv()
	return err
}

// A proxy outside Kubernetes connects as the WorkloadEntry at its address
// when the config cluster reviewed its token; a pod keeps its address
// against an entry of another namespace, and another cluster's token
// cannot use an entry.
func TestWorkloadEntryIdentity(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer func(d time.Duration) { xds.PodWait = d }(xds.PodWait)
	xds.PodWait = 300 * time.Millisecond
	reg := registry.New()
	reg.SetWorkload("c1", "10.0.0.1", registry.Workload{Namespace: "prod", Name: "bank-1", ServiceAccount: "bank"}, true)
	reg.ReplaceCluster(workloadentry.Shard, registry.Shard{Workloads: map[string]registry.Workload{
		workloadentry.Key("vm", "198.19.1.10"):   {Namespace: "vm", Name: "vm-1", ServiceAccount: "vm", Labels: map[string]string{"app": "vmapp"}},
		workloadentry.Key("vm", "10.0.0.1"):      {Namespace: "vm", Name: "squat", ServiceAccount: "vm"}, // a pod's address
		workloadentry.Key("evil", "198.19.1.11"): {Namespace: "evil", Name: "squat", ServiceAccount: "vm"},
	}})
	srv := xds.NewServer(xds.ServerConfig{Registry: reg, ConfigCluster: "c1"})
	g := grpc.NewServer(grpc.StreamInterceptor(xds.Authenticated(func(ctx context.Context) (xds.Identity, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return xds.Identity{Cluster: md.Get("clusterid")[0], Namespace: "vm", ServiceAccount: "vm"}, nil
	})))
	srv.Register(g)
	ads := adsClient(t, listen(t, g))
	go srv.Run(ctx)
	ask := func(cluster, id string) error {
		sctx, scancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, "clusterid", cluster), 10*time.Second)
		defer scancel()
		return askLabelled(sctx, ads, id, proxyview.NodeMetadata(map[string]string{"app": "vmapp"}))
	}
	if err := ask("c1", "sidecar~198.19.1.10~vm-1.vm~vm.svc.cluster.local"); err != nil {
		t.Fatalf("the entry's own proxy refused: %v", err)
	}
	if err := ask("c2", "sidecar~198.19.1.10~vm-1.vm~vm.svc.cluster.local"); status.Code(err) != codes.Unavailable {
		t.Errorf("a token of another cluster than the config cluster: %v, want Unavailable (no workload there)", err)
	}
	if err := ask("c1", "sidecar~198.19.1.11~squat.vm~vm.svc.cluster.local"); status.Code(err) != codes.Unavailable {
		t.Errorf("another namespace's entry at the address: %v, want Unavailable (no entry of the token's namespace there)", err)
	}
	if err := ask("c1", "sidecar~10.0.0.1~squat.vm~vm.svc.cluster.local"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an entry at a pod's address: %v, want PermissionDenied (the pod is prod/bank-1)", err)
	}
}
