package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"sort"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Server pushes per-proxy snapshots whenever the registry changes.
type Server struct {
	Registry *registry.Registry
	// Config is the Istio configuration (Gateways, VirtualServices); may be nil.
	Config Config
	// Domain is the cluster DNS domain, for short hosts in configuration.
	Domain string
	Log    *slog.Logger
	// Debounce is the quiet time gathered before a push (default 100 ms);
	// a push never waits more than 10 debounce periods.
	Debounce time.Duration
	Metrics  prometheus.Registerer

	cache cachev3.SnapshotCache
	push  chan struct{}

	mu      sync.Mutex // guards streams and proxies
	streams map[int64]string
	proxies map[string]*proxyState

	warnedNoGW sync.Map // network -> struct{}

	connected prometheus.GaugeFunc
	pushes    *prometheus.CounterVec
	rejects   *prometheus.CounterVec
	pushTime  prometheus.Histogram
}

type proxyState struct {
	proxy   *Proxy
	streams int
	sent    map[string]string // type URL -> version or nonce sent
	acked   map[string]string // type URL -> version or nonce acknowledged
	nack    map[string]string // type URL -> last error detail
	version int64
}

// ProxyStatus is one proxy's sync state, what proxy-status prints.
type ProxyStatus struct {
	ID        string            `json:"id"`
	ClusterID string            `json:"clusterID"`
	Network   string            `json:"network"`
	Sent      map[string]string `json:"sent"`
	Acked     map[string]string `json:"acked"`
	Nacked    map[string]string `json:"nacked,omitempty"`
}

// NewServer prepares the cache and metrics; Register and Run start it.
func NewServer(reg *registry.Registry, log *slog.Logger, metrics prometheus.Registerer) *Server {
	s := &Server{Registry: reg, Log: log, Debounce: 100 * time.Millisecond, Metrics: metrics,
		// ads=false: in ADS mode the cache answers only requests that name
		// every resource of the type, which a gRPC client asking for one
		// listener never does. Responses are still filtered to what was asked.
		cache:   cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil),
		push:    make(chan struct{}, 1),
		streams: map[int64]string{}, proxies: map[string]*proxyState{}}
	s.connected = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilot_xds", Help: "Connected xDS clients."},
		func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(len(s.proxies)) })
	s.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_xds_pushes", Help: "xDS responses sent, by type."}, []string{"type"})
	s.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_total_xds_rejects", Help: "xDS responses rejected (NACKed) by proxies, by type."}, []string{"type"})
	s.pushTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pilot_proxy_convergence_time", Help: "Seconds from a registry change to every proxy's snapshot being updated.",
		Buckets: []float64{.01, .05, .1, .2, .5, 1, 3, 5, 10}})
	if metrics != nil {
		for _, c := range []prometheus.Collector{s.connected, s.pushes, s.rejects, s.pushTime} {
			_ = metrics.Register(c)
		}
	}
	reg.Subscribe(func(registry.Event) { s.Trigger() })
	return s
}

// Trigger asks for a (debounced) push to every proxy, e.g. after a
// configuration change.
func (s *Server) Trigger() {
	select {
	case s.push <- struct{}{}:
	default:
	}
}

// Register adds the ADS service (and the per-type services) to a gRPC server.
func (s *Server) Register(ctx context.Context, g *grpc.Server) {
	srv := serverv3.NewServer(ctx, s.cache, s.callbacks())
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(g, srv)
}

// Run pushes debounced registry changes until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.push:
		}
		start := time.Now()
		quiet := time.NewTimer(s.Debounce)
	gather:
		for {
			select {
			case <-ctx.Done():
				quiet.Stop()
				return nil
			case <-s.push:
				if time.Since(start) < 10*s.Debounce {
					quiet.Reset(s.Debounce)
				}
			case <-quiet.C:
				break gather
			}
		}
		s.pushAll()
		s.pushTime.Observe(time.Since(start).Seconds())
	}
}

func (s *Server) pushAll() {
	s.mu.Lock()
	ids := make([]string, 0, len(s.proxies))
	for id := range s.proxies {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	// Proxies with the same view get the same resources: generate once per view.
	memo := map[viewKey]*cachev3.Snapshot{}
	for _, id := range ids {
		s.updateWith(id, memo)
	}
}

// viewKey is everything generation depends on besides the registry and
// configuration. Labels count for routers, which Gateways select by label.
type viewKey struct{ typ, network, requested, generator, labels string }

func keyOf(p *Proxy) viewKey {
	k := viewKey{typ: p.Type, network: p.Network, requested: p.RequestedNetworkView, generator: p.Generator}
	if p.Type == Router {
		k.labels = labels.Set(p.Labels).String()
	}
	return k
}

// update regenerates and installs one proxy's snapshot.
func (s *Server) update(id string) { s.updateWith(id, nil) }

func (s *Server) updateWith(id string, memo map[viewKey]*cachev3.Snapshot) {
	s.mu.Lock()
	st, ok := s.proxies[id]
	if !ok {
		s.mu.Unlock()
		return
	}
	st.version++
	p := st.proxy
	s.mu.Unlock()
	snap, ok := memo[keyOf(p)]
	if !ok {
		snap = s.snapshot(p)
		if memo != nil {
			memo[keyOf(p)] = snap
		}
	}
	if err := s.cache.SetSnapshot(context.Background(), id, snap); err != nil {
		s.Log.Error("set snapshot", "proxy", id, "err", err)
	}
}

// snapshot generates the resources of one view. The result is shared by
// every proxy of that view and never modified.
func (s *Server) snapshot(p *Proxy) *cachev3.Snapshot {
	var g Generated
	if p.Generator == GeneratorGRPC {
		g = GenerateGRPC(p, s.Registry, s.noGateway)
	} else {
		g = Generate(p, s.Registry, s.Config, s.Domain, s.noGateway)
	}
	snap := &cachev3.Snapshot{}
	for typ, rs := range map[resource.Type][]types.Resource{
		resource.ClusterType:  g.Clusters,
		resource.EndpointType: g.Endpoints,
		resource.ListenerType: g.Listeners,
		resource.RouteType:    g.Routes,
	} {
		idx := cachev3.GetResponseType(typ)
		items := make(map[string]types.ResourceWithTTL, len(rs))
		for _, r := range rs {
			items[cachev3.GetResourceName(r)] = types.ResourceWithTTL{Resource: r}
		}
		snap.Resources[idx] = cachev3.Resources{Version: contentVersion(rs), Items: items}
	}
	// Built now, before the snapshot is shared: the cache would otherwise
	// build it lazily for delta streams, concurrently for each proxy.
	if err := snap.ConstructVersionMap(); err != nil {
		s.Log.Error("snapshot version map", "err", err)
	}
	return snap
}

// contentVersion names a resource set by its content, so an unchanged type
// is not re-sent to state-of-the-world clients.
func contentVersion(rs []types.Resource) string {
	names := make([]string, 0, len(rs))
	byName := map[string]types.Resource{}
	for _, r := range rs {
		n := cachev3.GetResourceName(r)
		names = append(names, n)
		byName[n] = r
	}
	sort.Strings(names)
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, n := range names {
		b, _ := opts.Marshal(byName[n])
		h.Write([]byte(n))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *Server) noGateway(network string) {
	if _, loaded := s.warnedNoGW.LoadOrStore(network, struct{}{}); !loaded {
		s.Log.Warn("network has no east-west gateway: its endpoints are sent as pod addresses, which other networks cannot reach; install a gateway labelled topology.istio.io/network", "network", network)
	}
}

// connect registers a proxy on its first request.
func (s *Server) connect(stream int64, n *core.Node) error {
	s.mu.Lock()
	if _, known := s.streams[stream]; known || n == nil {
		s.mu.Unlock()
		return nil
	}
	p, err := ParseNode(n)
	if err != nil {
		s.mu.Unlock()
		s.Log.Warn("xDS client refused", "node", n.GetId(), "err", err)
		return err
	}
	s.streams[stream] = p.ID
	st, ok := s.proxies[p.ID]
	if !ok {
		st = &proxyState{sent: map[string]string{}, acked: map[string]string{}, nack: map[string]string{}}
		s.proxies[p.ID] = st
	}
	st.proxy = p
	st.streams++
	s.mu.Unlock()
	s.Log.Info("proxy connected", "proxy", p.ID, "cluster", p.ClusterID, "network", p.Network)
	s.update(p.ID)
	return nil
}

func (s *Server) disconnect(stream int64) {
	s.mu.Lock()
	id, ok := s.streams[stream]
	delete(s.streams, stream)
	if ok {
		if st := s.proxies[id]; st != nil {
			st.streams--
			if st.streams <= 0 {
				delete(s.proxies, id)
				s.cache.ClearSnapshot(id)
			}
		}
	}
	s.mu.Unlock()
}

// record notes what a proxy acknowledged or rejected.
func (s *Server) record(stream int64, typeURL, version string, errDetail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.proxies[s.streams[stream]]
	if st == nil || typeURL == "" {
		return
	}
	if errDetail != "" {
		st.nack[typeURL] = errDetail
		s.rejects.WithLabelValues(shortType(typeURL)).Inc()
		s.Log.Warn("proxy rejected config (NACK)", "proxy", st.proxy.ID, "type", shortType(typeURL), "error", errDetail)
		return
	}
	if version != "" {
		st.acked[typeURL] = version
		delete(st.nack, typeURL)
	}
}

func (s *Server) sent(stream int64, typeURL, version string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.proxies[s.streams[stream]]; st != nil {
		st.sent[typeURL] = version
	}
	s.pushes.WithLabelValues(shortType(typeURL)).Inc()
}

func shortType(url string) string {
	switch url {
	case resource.ClusterType:
		return "cds"
	case resource.EndpointType:
		return "eds"
	case resource.ListenerType:
		return "lds"
	case resource.RouteType:
		return "rds"
	}
	return url
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamRequestFunc: func(id int64, r *discovery.DiscoveryRequest) error {
			if err := s.connect(id, r.GetNode()); err != nil {
				return err
			}
			s.record(id, r.GetTypeUrl(), r.GetVersionInfo(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.sent(id, resp.GetTypeUrl(), resp.GetVersionInfo())
		},
		StreamClosedFunc: func(id int64, _ *core.Node) { s.disconnect(id) },
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			if err := s.connect(id, r.GetNode()); err != nil {
				return err
			}
			s.record(id, r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail().GetMessage())
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			s.sent(id, resp.GetTypeUrl(), resp.GetNonce())
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { s.disconnect(id) },
	}
}

// Status lists every connected proxy with what it was sent and acknowledged.
func (s *Server) Status() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for id, st := range s.proxies {
		ps := ProxyStatus{ID: id, ClusterID: st.proxy.ClusterID, Network: st.proxy.Network,
			Sent: map[string]string{}, Acked: map[string]string{}, Nacked: map[string]string{}}
		for k, v := range st.sent {
			ps.Sent[shortType(k)] = v
		}
		for k, v := range st.acked {
			ps.Acked[shortType(k)] = v
		}
		for k, v := range st.nack {
			ps.Nacked[shortType(k)] = v
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
