package xds_test

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// Istio's istioctl asks istiod for proxy-status (syncz) and a proxy's
// config (config_dump) on the ADS stream of the TLS port: only with a
// token, every proxy for the system namespace, a namespace's own proxies
// for anyone else, and never on the plaintext port.
func TestDebugTypesAnswerIstioctlWithinTheCallersScope(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := registry.New()
	reg.SetWorkload("", "10.0.0.1", registry.Workload{Namespace: "test", Name: "sleep-1", ServiceAccount: "sleep"}, true)
	reg.SetWorkload("", "10.0.0.2", registry.Workload{Namespace: "prod", Name: "bank-1", ServiceAccount: "bank"}, true)
	reg.SetService("", "profile.test.svc.cluster.local", &registry.Service{Hostname: "profile.test.svc.cluster.local", Namespace: "test", Name: "profile", Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "HTTP"}}})
	cp := xds.ControlPlane{Component: "istiod", ID: "istiod-1"}
	srv := xds.NewServer(xds.ServerConfig{Registry: reg, SystemNamespace: "istio-system", Instance: cp, Debounce: 10 * time.Millisecond})
	// The test's token is a header naming namespace/service account.
	secure := grpc.NewServer(grpc.StreamInterceptor(xds.Authenticated(func(ctx context.Context) (xds.Identity, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if len(md.Get("ns")) == 0 {
			return xds.Identity{}, status.Error(codes.Unauthenticated, "no token")
		}
		return xds.Identity{Namespace: md.Get("ns")[0], ServiceAccount: md.Get("sa")[0]}, nil
	})))
	plain := grpc.NewServer()
	srv.Register(secure, plain)
	secureADS, plainADS := adsClient(t, listen(t, secure)), adsClient(t, listen(t, plain))
	go srv.Run(ctx)
	as := func(ns, sa string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "ns", ns, "sa", sa)
	}

	// Two proxies connect and acknowledge their clusters.
	for _, p := range []struct{ ns, sa, id string }{
		{"test", "sleep", "sidecar~10.0.0.1~sleep-1.test~test.svc.cluster.local"},
		{"prod", "bank", "sidecar~10.0.0.2~bank-1.prod~prod.svc.cluster.local"},
	} {
		s, err := secureADS.StreamAggregatedResources(as(p.ns, p.sa))
		if err != nil {
			t.Fatal(err)
		}
		md := proxyview.NodeMetadata(map[string]string{"ISTIO_VERSION": "1.29.0"})
		if err := s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &core.Node{Id: p.id, Metadata: md}}); err != nil {
			t.Fatal(err)
		}
		r, err := s.Recv()
		if err != nil {
			t.Fatalf("%s: %v", p.id, err)
		}
		_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	}

	// An impostor on the plaintext port names sleep's pod as a router: it
	// gets configuration (as on Istio's 15010) but is no proxy of the debug
	// answers, which it would otherwise shadow.
	imp, err := plainADS.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := imp.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType, Node: &core.Node{Id: "router~10.0.0.1~sleep-1.test~test.svc.cluster.local"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := imp.Recv(); err != nil {
		t.Fatal(err)
	}

	// debug asks one debug request as a caller and returns its answer.
	debug := func(ads discoverygrpc.AggregatedDiscoveryServiceClient, ctx context.Context, url string, names ...string) (*discoverygrpc.DiscoveryResponse, error) {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		s, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			return nil, err
		}
		// istioctl's ADS client: a node of no pod, a nonce of its own.
		if err := s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: url, ResourceNames: names, ResponseNonce: time.Now().String(),
			Node: &core.Node{Id: "sidecar~10.9.9.9~istioctl.istio-system~istio-system.svc.cluster.local"}}); err != nil {
			return nil, err
		}
		return s.Recv()
	}
	syncz := func(ctx context.Context) map[string]*statusv3.ClientConfig {
		t.Helper()
		r, err := debug(secureADS, ctx, xds.TypeDebugSyncz)
		if err != nil {
			t.Fatal(err)
		}
		var id xds.ControlPlane
		if err := json.Unmarshal([]byte(r.GetControlPlane().GetIdentifier()), &id); err != nil || id.ID != "istiod-1" {
			t.Errorf("control plane identifier %q: %v", r.GetControlPlane().GetIdentifier(), err)
		}
		out := map[string]*statusv3.ClientConfig{}
		for _, a := range r.Resources {
			cc := &statusv3.ClientConfig{}
			if err := a.UnmarshalTo(cc); err != nil {
				t.Fatal(err)
			}
			if out[cc.GetNode().GetId()] != nil {
				t.Errorf("syncz names %s twice", cc.GetNode().GetId())
			}
			out[cc.GetNode().GetId()] = cc
		}
		return out
	}
	synced := func(cc *statusv3.ClientConfig) bool {
		for _, x := range cc.GetGenericXdsConfigs() {
			if x.GetTypeUrl() == resource.ClusterType {
				return x.GetConfigStatus() == statusv3.ConfigStatus_SYNCED
			}
		}
		return false
	}
	deadline := time.Now().Add(10 * time.Second)
	all := syncz(as("istio-system", "default"))
	for !(len(all) == 2 && synced(all["sleep-1.test"]) && synced(all["bank-1.prod"])) {
		if time.Now().After(deadline) {
			t.Fatalf("the system namespace sees %v, want sleep-1.test and bank-1.prod with CDS SYNCED", all)
		}
		time.Sleep(50 * time.Millisecond)
		all = syncz(as("istio-system", "default"))
	}
	if md := all["sleep-1.test"].GetNode().GetMetadata().GetFields(); md["NAMESPACE"].GetStringValue() != "test" || md["ISTIO_VERSION"].GetStringValue() != "1.29.0" {
		t.Errorf("node metadata %v: want istiod's NAMESPACE and ISTIO_VERSION", md)
	}
	if own := syncz(as("test", "default")); len(own) != 1 || own["sleep-1.test"] == nil {
		t.Errorf("namespace test sees %v, want its own proxy only", slices.Collect(maps.Keys(own)))
	}

	dump := func(ctx context.Context) *adminv3.ClustersConfigDump {
		t.Helper()
		r, err := debug(secureADS, ctx, xds.TypeDebugConfigDump, "sleep-1.test")
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range r.Resources {
			cd := &adminv3.ClustersConfigDump{}
			if a.UnmarshalTo(cd) == nil {
				return cd
			}
		}
		return nil
	}
	cd := dump(as("istio-system", "default"))
	if cd == nil || !slices.ContainsFunc(cd.DynamicActiveClusters, func(c *adminv3.ClustersConfigDump_DynamicCluster) bool {
		return strings.Contains(string(c.GetCluster().GetValue()), "outbound|8080||profile.test.svc.cluster.local")
	}) {
		t.Errorf("config_dump of sleep-1.test: %v, want its clusters", cd)
	}
	if cd := dump(as("prod", "bank")); cd != nil {
		t.Errorf("another namespace got sleep-1.test's config: %v", cd)
	}

	if _, err := debug(plainADS, ctx, xds.TypeDebugSyncz); status.Code(err) != codes.Unauthenticated {
		t.Errorf("syncz on the plaintext port: %v, want Unauthenticated", err)
	}
	// A debug stream serves debug types only: it is no proxy.
	s, err := secureADS.StreamAggregatedResources(as("istio-system", "default"))
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: xds.TypeDebugSyncz})
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	_ = s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType})
	for {
		if _, err = s.Recv(); err != nil {
			break
		}
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("clusters asked on a debug stream: %v, want InvalidArgument", err)
	}
}
