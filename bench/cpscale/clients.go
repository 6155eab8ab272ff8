package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

// adsClient is one simulated sidecar: it subscribes to every cluster and
// its load assignment as Envoy does, and records when it has all of the
// bench's services and when the watched load assignment shows the change.
type adsClient struct {
	id      int
	cluster string
	network string
	// total is how many of the bench's load assignments make it whole.
	total int
	// target is the load assignment watched; the change shows as want
	// among its addresses (same network) or as its endpoints' weights
	// summing to wantWeight (another network: its gateway's weight).
	target     string
	want       string
	wantWeight uint32

	gotAll  chan struct{}
	sawWant chan struct{}
	once1   sync.Once
	once2   sync.Once
	// full is when each of its streams had every load assignment: a
	// reconnection after a control plane restart adds one.
	mu   sync.Mutex
	full []time.Time
}

// gotFull notes that the current stream has everything (once per stream).
func (c *adsClient) gotFull() {
	c.once1.Do(func() { close(c.gotAll) })
	c.mu.Lock()
	c.full = append(c.full, time.Now())
	c.mu.Unlock()
}

// fullTimes is how many streams had everything, and when the last did.
func (c *adsClient) fullTimes() (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.full) == 0 {
		return 0, time.Time{}
	}
	return len(c.full), c.full[len(c.full)-1]
}

// node is the client's identity, shaped as Istio's proxies send it.
func (c *adsClient) node() *core.Node {
	// ISTIO_VERSION as a current proxy sends it (istiod warns without it).
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": c.cluster, "NETWORK": c.network, "ISTIO_VERSION": "1.28.0"})
	return &core.Node{Id: fmt.Sprintf("sidecar~100.127.%d.%d~c%d.scale~scale.svc.cluster.local", c.id/250, c.id%250, c.id), Metadata: md}
}

// benchCLA reports whether a load assignment's name is one of the bench's services.
func benchCLA(name string) bool {
	return strings.HasPrefix(name, "outbound|8080||svc-c") && strings.HasSuffix(name, ".scale.svc.cluster.local")
}

// reconnecting runs a client's streams one after the other, as a proxy
// does: after a stream ends, a new one 250-500 ms later (the proxy's first
// retry), waiting for the connection to be ready.
func reconnecting(ctx context.Context, run func(ctx context.Context)) {
	for ctx.Err() == nil {
		run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(250*time.Millisecond + time.Duration(rand.Int64N(int64(250*time.Millisecond)))):
		}
	}
}

func (c *adsClient) run(ctx context.Context, conn *grpc.ClientConn, delta bool) {
	if delta {
		reconnecting(ctx, func(ctx context.Context) { c.deltaStream(ctx, conn) })
		return
	}
	reconnecting(ctx, func(ctx context.Context) { c.sotwStream(ctx, conn) })
}

func (c *adsClient) sotwStream(ctx context.Context, conn *grpc.ClientConn) {
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return
	}
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{Node: c.node(), TypeUrl: resource.ClusterType})
	subscribed, full := 0, false
	for {
		var resp sotwResponse
		resp.target = c.target
		if err := stream.RecvMsg(&resp); err != nil {
			return
		}
		_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resp.typeURL, VersionInfo: resp.version, ResponseNonce: resp.nonce})
		switch resp.typeURL {
		case resource.ClusterType:
			// As Envoy: the load assignments of the clusters it has, asked
			// again when they change (a control plane that restarts may
			// send its own cluster's before the remotes').
			var names []string
			for _, n := range resp.names {
				if strings.HasPrefix(n, "outbound|") {
					names = append(names, n)
				}
			}
			if len(names) != subscribed {
				subscribed = len(names)
				_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: names})
			}
		case resource.EndpointType:
			n := 0
			for _, name := range resp.names {
				if benchCLA(name) {
					n++
				}
			}
			if resp.value != nil {
				c.check(resp.value)
			}
			if n >= c.total && !full {
				full = true
				c.gotFull()
			}
		}
	}
}

// deltaStream is sotwStream over incremental xDS, as isthmus's and Istio's
// proxies speak it: a change sends only the resources that changed.
func (c *adsClient) deltaStream(ctx context.Context, conn *grpc.ClientConn) {
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return
	}
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: c.node(), TypeUrl: resource.ClusterType})
	var subscribed bits
	full, have := false, 0
	for {
		var resp deltaResponse
		resp.target = c.target
		if err := stream.RecvMsg(&resp); err != nil {
			return
		}
		_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.typeURL, ResponseNonce: resp.nonce})
		switch resp.typeURL {
		case resource.ClusterType:
			// Every new cluster's load assignment, as Envoy asks for them.
			var names []string
			for _, n := range resp.names {
				if id := nameID(n); !subscribed.has(id) && strings.HasPrefix(n, "outbound|") {
					subscribed.set(id, true)
					names = append(names, n)
				}
			}
			if len(names) > 0 {
				_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names})
			}
		case resource.EndpointType:
			for _, n := range resp.names {
				if id := nameID(n); subscribed.has(id) && benchCLA(n) {
					// Counted once: the subscription is spent.
					subscribed.set(id, false)
					have++
				}
			}
			if resp.value != nil {
				c.check(resp.value)
			}
			if have >= c.total && !full {
				full = true
				c.gotFull()
			}
		}
	}
}

// check records when the watched load assignment shows the change.
func (c *adsClient) check(b []byte) {
	addrs, weight, err := scanCLA(b)
	if err != nil {
		return
	}
	if slices.Contains(addrs, c.want) || weight >= c.wantWeight {
		c.once2.Do(func() { close(c.sawWant) })
	}
}

// clusterName reads field 1 (name) of a serialized Cluster or
// ClusterLoadAssignment without a full decode.
func clusterName(b []byte) string {
	if len(b) < 2 || b[0] != 0x0a {
		return ""
	}
	n, k := 0, 1
	for shift := 0; k < len(b) && shift < 21; shift += 7 {
		n |= int(b[k]&0x7f) << shift
		k++
		if b[k-1] < 0x80 {
			break
		}
	}
	if k+n > len(b) {
		return ""
	}
	return string(b[k : k+n])
}

// nameIDs numbers the resource names the clients see, once for them all,
// so that a client's subscriptions are bits rather than a map of its own
// 2000 names: 5000 such maps hold 1.3 GiB (measured alone), live heap of
// the bench process whose marking took the CPU the control plane under
// measurement shares (the clients stand for proxies on other machines).
var nameIDs struct {
	sync.Map // name -> int
	mu       sync.Mutex
	next     int
}

func nameID(n string) int {
	if id, ok := nameIDs.Load(n); ok {
		return id.(int)
	}
	nameIDs.mu.Lock()
	defer nameIDs.mu.Unlock()
	if id, ok := nameIDs.Load(n); ok {
		return id.(int)
	}
	id := nameIDs.next
	nameIDs.next++
	nameIDs.Store(strings.Clone(n), id)
	return id
}

// bits is a set of name IDs.
type bits []uint64

func (b bits) has(i int) bool { return i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

func (b *bits) set(i int, on bool) {
	for i/64 >= len(*b) {
		*b = append(*b, 0)
	}
	if on {
		(*b)[i/64] |= 1 << (i % 64)
	} else {
		(*b)[i/64] &^= 1 << (i % 64)
	}
}
