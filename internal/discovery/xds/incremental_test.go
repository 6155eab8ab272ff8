package xds

import (
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// An endpoints-only push must leave every proxy with exactly what a full
// push would have given it: same resources, versions and version maps.
func TestEndpointPushEqualsFullPush(t *testing.T) {
	reg := benchRegistry()
	s := NewServer(ServerConfig{Registry: reg})
	ids := []string{}
	// Two networks, and a sidecar whose own pod is an endpoint of the
	// changed service (its inbound listener follows the endpoints).
	for i, p := range []*proxyview.Proxy{
		{Type: proxyview.Sidecar, Network: "network1", Namespace: "ns-0", IP: "100.127.0.1"},
		{Type: proxyview.Sidecar, Network: "network2", Namespace: "ns-1", IP: "100.127.0.2"},
		{Type: proxyview.Sidecar, Network: "network1", Namespace: "ns-0", IP: "100.64.0.250"},
	} {
		p.ID = "sidecar~" + p.IP + "~p" + string(rune('a'+i)) + "." + p.Namespace + "~" + p.Namespace + ".svc.cluster.local"
		s.proxies[p.ID] = &proxyState{proxy: &proxy{Proxy: p}, sync: newSyncState(p.ID)}
		ids = append(ids, p.ID)
	}
	s.pushAll(true, nil, time.Time{})
	before := snapshots(t, s, ids)

	host := "svc-0.ns-0.svc.cluster.local"
	eps := append(reg.Endpoints(host)[:0:0], registry.Endpoint{Address: "100.64.0.250", Ports: map[string]int32{"http": 8080},
		Cluster: "cluster-eks", Network: "network1", TLSMode: "istio", Ready: true})
	reg.SetEndpoints("cluster-eks", host, eps)
	s.pushAll(false, map[string]bool{host: true}, time.Time{})
	patched := snapshots(t, s, ids)
	s.pushAll(true, nil, time.Time{})
	full := snapshots(t, s, ids)

	for i, id := range ids {
		for typ := types.ResponseType(0); typ < types.UnknownType; typ++ {
			p, f := patched[i].Resources[typ], full[i].Resources[typ]
			if p.Version != f.Version {
				t.Errorf("%s type %d: version %s after the endpoint push, %s after a full push", id, typ, p.Version, f.Version)
			}
			if len(p.Items) != len(f.Items) {
				t.Errorf("%s type %d: %d resources after the endpoint push, %d after a full push", id, typ, len(p.Items), len(f.Items))
			}
			for n, r := range f.Items {
				if !proto.Equal(p.Items[n].Resource, r.Resource) {
					t.Errorf("%s: %s differs after the endpoint push", id, n)
				}
			}
		}
		if before[i].Resources[types.Endpoint].Version == patched[i].Resources[types.Endpoint].Version {
			t.Errorf("%s: the endpoint push did not change the load assignments' version", id)
		}
		if i < 2 && before[i].Resources[types.Cluster].Version != patched[i].Resources[types.Cluster].Version {
			t.Errorf("%s: the endpoint push changed the clusters", id)
		}
	}
	// The sidecar at 100.64.0.250 now serves svc-0's port: an inbound
	// chain and cluster (the other two keep theirs, checked above).
	if patched[2].Resources[types.Listener].Version == before[2].Resources[types.Listener].Version {
		t.Error("the sidecar that became an endpoint kept its old listeners")
	}
}

func snapshots(t *testing.T, s *Server, ids []string) []*snapshot {
	t.Helper()
	var out []*snapshot
	for _, id := range ids {
		snap := s.snapshot(id)
		if snap == nil {
			t.Fatalf("no snapshot for %s", id)
		}
		out = append(out, snap)
	}
	return out
}
