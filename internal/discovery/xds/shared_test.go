package xds

import (
	"context"
	"slices"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
)

// Two streams of one view get the very same marshalled resources, and the
// response is what the snapshot cache would have sent.
func TestSharedCacheMarshalsOnce(t *testing.T) {
	c := newSharedCache(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil))
	snap, err := cachev3.NewSnapshot("v1", map[resource.Type][]types.Resource{
		resource.ClusterType: {&cluster.Cluster{Name: "a"}, &cluster.Cluster{Name: "b"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var got []*cachev3.PassthroughResponse
	for _, node := range []string{"n1", "n2"} {
		if err := c.SetSnapshot(context.Background(), node, snap); err != nil {
			t.Fatal(err)
		}
		req := &cachev3.Request{Node: &core.Node{Id: node}, TypeUrl: resource.ClusterType}
		out := make(chan cachev3.Response, 1)
		sub := stream.NewSotwSubscription(nil, true)
		if _, err := c.CreateWatch(req, sub, out); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-out:
			p, ok := r.(*cachev3.PassthroughResponse)
			if !ok {
				t.Fatalf("%T, want a passthrough response", r)
			}
			got = append(got, p)
		case <-time.After(5 * time.Second):
			t.Fatal("no response")
		}
	}
	a, b := got[0].DiscoveryResponse, got[1].DiscoveryResponse
	if a == b || a.VersionInfo != "v1" || len(a.Resources) != 2 || len(b.Resources) != 2 || len(got[0].ReturnedResources) != 2 {
		t.Fatalf("responses %v %v", a, b)
	}
	shared := map[any]bool{a.Resources[0]: true, a.Resources[1]: true}
	if !shared[b.Resources[0]] || !shared[b.Resources[1]] {
		t.Error("the second stream's resources were marshalled again")
	}
	var cl cluster.Cluster
	if err := a.Resources[0].UnmarshalTo(&cl); err != nil || (cl.Name != "a" && cl.Name != "b") {
		t.Errorf("resource %v: %v", cl.Name, err)
	}
}

// Delta: shared Anys with the snapshot's versions; what the client has
// and the new state lacks is removed.
func TestSharedCacheDelta(t *testing.T) {
	c := newSharedCache(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil))
	a, b := &cluster.Cluster{Name: "a"}, &cluster.Cluster{Name: "b"}
	snap, _ := cachev3.NewSnapshot("v1", map[resource.Type][]types.Resource{resource.ClusterType: {a, b}})
	watch := func(node string, sub stream.Subscription) *cachev3.DeltaPassthroughResponse {
		t.Helper()
		out := make(chan cachev3.DeltaResponse, 1)
		req := &cachev3.DeltaRequest{Node: &core.Node{Id: node}, TypeUrl: resource.ClusterType}
		if _, err := c.CreateDeltaWatch(req, sub, out); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-out:
			p, ok := r.(*cachev3.DeltaPassthroughResponse)
			if !ok {
				t.Fatalf("%T, want a passthrough response", r)
			}
			return p
		case <-time.After(5 * time.Second):
			t.Fatal("no response")
		}
		return nil
	}
	var first []*cachev3.DeltaPassthroughResponse
	for _, node := range []string{"n1", "n2"} {
		if err := c.SetSnapshot(context.Background(), node, snap); err != nil {
			t.Fatal(err)
		}
		first = append(first, watch(node, stream.NewDeltaSubscription(nil, nil, nil, true)))
	}
	r1, r2 := first[0].DeltaDiscoveryResponse, first[1].DeltaDiscoveryResponse
	if len(r1.Resources) != 2 || len(r2.Resources) != 2 || r1.Resources[0].Version == "" {
		t.Fatalf("responses %v %v", r1, r2)
	}
	byName := map[string]any{r1.Resources[0].Name: r1.Resources[0].Resource, r1.Resources[1].Name: r1.Resources[1].Resource}
	for _, r := range r2.Resources {
		if byName[r.Name] != any(r.Resource) {
			t.Errorf("%s was marshalled again for the second stream", r.Name)
		}
	}
	// b goes away: a client that has both is told to remove b, and gets nothing else.
	snap2, _ := cachev3.NewSnapshot("v2", map[resource.Type][]types.Resource{resource.ClusterType: {a}})
	if err := c.SetSnapshot(context.Background(), "n1", snap2); err != nil {
		t.Fatal(err)
	}
	sub := stream.NewDeltaSubscription(nil, nil, nil, true)
	sub.SetReturnedResources(first[0].NextVersionMap)
	r := watch("n1", sub).DeltaDiscoveryResponse
	if len(r.Resources) != 0 || len(r.RemovedResources) != 1 || r.RemovedResources[0] != "b" {
		t.Errorf("after removing b: resources %v, removed %v", r.Resources, r.RemovedResources)
	}
}

// State of the world: a load assignment response leaves out what the
// client already has at its current content; a cluster response (which
// must carry the whole state) does not.
func TestSharedCacheSotwSendsOnlyChangedLoadAssignments(t *testing.T) {
	c := newSharedCache(cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil))
	cla := func(name, addr string) *endpoint.ClusterLoadAssignment {
		return &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{
				SocketAddress: &core.SocketAddress{Address: addr}}}}}}}}}}
	}
	snapOf := func(rs map[resource.Type][]types.Resource) *cachev3.Snapshot {
		snap := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
		for url, items := range rs {
			version, hashes := versionOf(items)
			typ := cachev3.GetResponseType(url)
			snap.Resources[typ] = cachev3.NewResources(version, items)
			snap.VersionMap[url] = hashes
		}
		return snap
	}
	a, b := cla("a", "10.0.0.1"), cla("b", "10.0.0.2")
	ca, cb := &cluster.Cluster{Name: "a"}, &cluster.Cluster{Name: "b"}
	sotw := func(names []string) *stream.Subscription {
		s := stream.NewSotwSubscription(names, names == nil)
		return &s
	}
	subs := map[string]*stream.Subscription{resource.EndpointType: sotw([]string{"a", "b"}), resource.ClusterType: sotw(nil)}
	versions := map[string]string{}
	watch := func(url string) []string {
		t.Helper()
		out := make(chan cachev3.Response, 1)
		req := &cachev3.Request{Node: &core.Node{Id: "n"}, TypeUrl: url, VersionInfo: versions[url]}
		if url == resource.EndpointType {
			req.ResourceNames = []string{"a", "b"}
		}
		if _, err := c.CreateWatch(req, subs[url], out); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-out:
			d, _ := r.GetDiscoveryResponse()
			versions[url] = d.VersionInfo
			subs[url].SetReturnedResources(r.GetReturnedResources())
			var names []string
			for _, res := range d.Resources {
				if url == resource.EndpointType {
					var m endpoint.ClusterLoadAssignment
					_ = res.UnmarshalTo(&m)
					names = append(names, m.ClusterName)
				} else {
					var m cluster.Cluster
					_ = res.UnmarshalTo(&m)
					names = append(names, m.Name)
				}
			}
			slices.Sort(names)
			return names
		case <-time.After(5 * time.Second):
			t.Fatal("no response")
		}
		return nil
	}
	c.rotate()
	if err := c.SetSnapshot(context.Background(), "n", snapOf(map[resource.Type][]types.Resource{
		resource.EndpointType: {a, b}, resource.ClusterType: {ca, cb}})); err != nil {
		t.Fatal(err)
	}
	if got := watch(resource.EndpointType); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first load assignments %v, want a and b", got)
	}
	if got := watch(resource.ClusterType); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("first clusters %v, want a and b", got)
	}
	// b's endpoints change, and a new cluster appears.
	c.rotate()
	if err := c.SetSnapshot(context.Background(), "n", snapOf(map[resource.Type][]types.Resource{
		resource.EndpointType: {a, cla("b", "10.0.0.3")}, resource.ClusterType: {ca, cb, &cluster.Cluster{Name: "c"}}})); err != nil {
		t.Fatal(err)
	}
	if got := watch(resource.EndpointType); !slices.Equal(got, []string{"b"}) {
		t.Errorf("after b changed, load assignments %v, want only b", got)
	}
	if got := watch(resource.ClusterType); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("after c was added, clusters %v, want the whole state", got)
	}
	// A client that knows nothing (a reconnect) gets everything.
	subs[resource.EndpointType] = sotw([]string{"a", "b"})
	versions[resource.EndpointType] = ""
	if got := watch(resource.EndpointType); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("a new stream got %v, want a and b", got)
	}
}
