package xds_test

import (
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// TestEndpointsSurvivePushRaces: a sidecar ends up with the endpoint a
// Service gets after its cluster was pushed (no service account change:
// an endpoints-only push), however that push interleaves with the full
// push that added the Service and with the sidecar's own connection.
func TestEndpointsSurvivePushRaces(t *testing.T) {
	host := "issuer.jwt-issuer.svc.cluster.local"
	name := proxyview.OutboundCluster(8080, "", host)
	addService := func(reg *registry.Registry) {
		reg.SetService("c1", host, &registry.Service{Namespace: "jwt-issuer", Name: "issuer", Hostname: host,
			Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP"}}})
	}
	setEndpoints := func(reg *registry.Registry) {
		reg.SetEndpoints("c1", host, []registry.Endpoint{{Address: "100.64.0.10", Ports: map[string]int32{"http": 8080},
			Cluster: "c1", Network: "n1", Namespace: "jwt-issuer", Ready: true}})
	}
	// start serves a registry, with the service already in it when asked
	// (so that no push of it runs while a test sets hooks).
	start := func(t *testing.T, withService bool) (*registry.Registry, *steppedGenerator, *xds.Server, string) {
		reg := registry.New()
		if withService {
			addService(reg)
		}
		g := &steppedGenerator{Generator: &proxyview.Generator{Registry: reg}}
		srv, addr := serveConfig(t, xds.ServerConfig{Registry: reg, Generator: g, Debounce: 10 * time.Millisecond})
		return reg, g, srv, addr
	}

	t.Run("service and endpoints within one debounce", func(t *testing.T) {
		reg, _, _, addr := start(t, false)
		sleep := connectSidecar(t, addr, "10.0.0.9", "ns")
		eventually(t, "sleep's first clusters", func() bool { return sleep.clusters() > 0 })
		addService(reg)
		setEndpoints(reg)
		eventually(t, "sleep's endpoint of "+host, func() bool { return sleep.endpoints(name) == 1 })
	})

	t.Run("endpoints set while the full push that adds the service generates", func(t *testing.T) {
		reg, g, _, addr := start(t, false)
		sleep := connectSidecar(t, addr, "10.0.0.9", "ns")
		eventually(t, "sleep's first clusters", func() bool { return sleep.clusters() > 0 })
		g.set(&g.afterView, func() { setEndpoints(reg) })
		addService(reg)
		eventually(t, "sleep's endpoint of "+host, func() bool { return sleep.endpoints(name) == 1 })
	})

	// The snapshot a connection generated must not replace the newer ones
	// pushes installed while it generated.
	t.Run("the sidecar's connection overtaken by later pushes", func(t *testing.T) {
		reg, g, srv, addr := start(t, true)
		generated, release := make(chan struct{}), unblock(t)
		g.set(&g.afterView, func() { close(generated); <-release })
		sleep := connectSidecar(t, addr, "10.0.0.9", "ns")
		wait(t, generated, "the connection's view") // the service, no endpoint yet
		full := make(chan struct{})
		g.set(&g.afterView, func() { close(full) })
		srv.Trigger() // a configuration change: a full push
		wait(t, full, "the full push")
		patching := make(chan struct{})
		g.set(&g.beforeEndpoints, func() { close(patching) })
		setEndpoints(reg)
		wait(t, patching, "the endpoints push")
		time.Sleep(50 * time.Millisecond) // the endpoints push installs
		close(release)
		eventually(t, "sleep's endpoint of "+host, func() bool { return sleep.endpoints(name) == 1 })
	})

	// A sidecar that connects while a push patches the memo it reads must
	// still get that push.
	t.Run("a sidecar connecting while an endpoints push patches", func(t *testing.T) {
		reg, g, srv, addr := start(t, true)
		other := connectSidecar(t, addr, "10.0.0.8", "other") // the same view as sleep's
		eventually(t, "other's empty load assignment", func() bool { return other.endpoints(name) == 0 })
		patching, release := make(chan struct{}), unblock(t)
		g.set(&g.beforeEndpoints, func() { close(patching); <-release })
		setEndpoints(reg)
		wait(t, patching, "the endpoints push")
		sleep := connectSidecar(t, addr, "10.0.0.9", "ns")
		eventually(t, "sleep connected", func() bool { return len(srv.Syncz()) == 2 })
		time.Sleep(50 * time.Millisecond) // its snapshot waits for the memo being patched
		close(release)
		eventually(t, "sleep's endpoint of "+host, func() bool { return sleep.endpoints(name) == 1 })
		eventually(t, "other's endpoint of "+host, func() bool { return other.endpoints(name) == 1 })
	})
}

// steppedGenerator is proxyview's generator with hooks a test sets to act
// at a point of generation; each runs once.
type steppedGenerator struct {
	xds.Generator
	mu                         sync.Mutex
	afterView, beforeEndpoints func()
}

func (g *steppedGenerator) set(hook *func(), fn func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	*hook = fn
}

func (g *steppedGenerator) run(hook *func()) {
	g.mu.Lock()
	fn := *hook
	*hook = nil
	g.mu.Unlock()
	if fn != nil {
		fn()
	}
}

func (g *steppedGenerator) View(p *proxyview.Proxy) proxyview.Generated {
	out := g.Generator.View(p)
	g.run(&g.afterView)
	return out
}

func (g *steppedGenerator) Endpoints(p *proxyview.Proxy, services []*registry.Service) []types.Resource {
	g.run(&g.beforeEndpoints)
	return g.Generator.Endpoints(p, services)
}

// sidecarClient is a delta ADS client as the proxy's: every cluster, the
// load assignment of each EDS cluster it is sent, every response ACKed.
type sidecarClient struct {
	mu  sync.Mutex
	cds int            // clusters held
	eps map[string]int // endpoints by load assignment
}

func connectSidecar(t *testing.T, addr, ip, namespace string) *sidecarClient {
	t.Helper()
	stream, err := adsClient(t, addr).DeltaAggregatedResources(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "sidecar~" + ip + "~sleep." + namespace + "~" + namespace + ".svc.cluster.local",
		Metadata: proxyview.NodeMetadata(map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"})}
	if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	c := &sidecarClient{eps: map[string]int{}}
	go func() {
		subscribed := map[string]bool{}
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			var subscribe []string
			c.mu.Lock()
			for _, res := range r.Resources {
				switch r.TypeUrl {
				case resource.ClusterType:
					c.cds++
					var cl cluster.Cluster
					if res.Resource.UnmarshalTo(&cl) == nil && cl.GetType() == cluster.Cluster_EDS && !subscribed[cl.Name] {
						subscribed[cl.Name] = true
						subscribe = append(subscribe, cl.Name)
					}
				case resource.EndpointType:
					var cla endpoint.ClusterLoadAssignment
					_ = res.Resource.UnmarshalTo(&cla)
					n := 0
					for _, l := range cla.Endpoints {
						n += len(l.LbEndpoints)
					}
					c.eps[res.Name] = n
				}
			}
			c.mu.Unlock()
			if len(subscribe) > 0 {
				_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: subscribe})
			}
		}
	}()
	return c
}

func (c *sidecarClient) clusters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cds
}

// endpoints of a load assignment the client holds; -1 when it has none.
func (c *sidecarClient) endpoints(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n, ok := c.eps[name]; ok {
		return n
	}
	return -1
}

// unblock is a channel a hook waits on, closed by the test or at its end.
func unblock(t *testing.T) chan struct{} {
	ch := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-ch:
		default:
			close(ch)
		}
	})
	return ch
}

// wait waits up to 3 s for ch to close.
func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(3 * time.Second):
		t.Fatalf("no %s within 3 s", what)
	}
}

// eventually waits up to 3 s for ok.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 3 s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
