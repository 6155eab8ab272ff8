package xds

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Generator is all that delivery asks of generation
// (proxyview.Generator): a view's shared resources, its load assignments
// again, and a sidecar's own part (namespace routes, inbound side).
type Generator interface {
	View(p *proxyview.Proxy) proxyview.Generated
	Endpoints(p *proxyview.Proxy, services []*registry.Service) []types.Resource
	Routes(p *proxyview.Proxy, services []*registry.Service) []types.Resource
	// Scope is p with the Sidecar resource that applies to it.
	Scope(p *proxyview.Proxy) *proxyview.Proxy
	InboundIndex(services []*registry.Service) proxyview.InboundIndex
	PatchInbound(idx proxyview.InboundIndex, services []*registry.Service, hosts map[string]bool) proxyview.InboundIndex
	InboundPolicy(p *proxyview.Proxy) proxyview.InboundPolicy
	Inbound(ports proxyview.InboundPorts, pol proxyview.InboundPolicy) (*listener.Listener, []types.Resource)
}

// ServerConfig is what the xDS server is given at construction.
type ServerConfig struct {
	// Registry is where the proxies' pods and the services are; pushes
	// follow its changes.
	Registry *registry.Registry
	// Generator decides what each proxy gets; nil: proxyview's over the
	// registry alone (no Istio configuration).
	Generator Generator
	Log       *slog.Logger
	// Debounce is the quiet time gathered before a push (default 100 ms);
	// a push never waits more than 10 debounce periods.
	Debounce time.Duration
	Metrics  prometheus.Registerer
	// Credentials decides which authenticated routers receive their
	// namespace's TLS credentials; nil: none does. Streams without a
	// proven identity (the plaintext port) never do.
	Credentials CredentialAuthorizer
	// ConfigCluster is the cluster whose WorkloadEntries the registry
	// holds (workloadentry.Shard): a proxy whose token that cluster
	// reviewed may connect as an entry where no pod has its address.
	ConfigCluster string
	// SystemNamespace is istiod's: tokens of its service accounts see
	// every proxy in the debug types (others, their namespace's only).
	SystemNamespace string
	// Instance names this control plane in debug answers.
	Instance ControlPlane
	// Ready says whether the control plane has what a proxy needs (its
	// caches synced); until it does, streams are refused as Unavailable,
	// as istiod refuses them, and the proxies retry. nil: always ready.
	Ready func() error
}

// Server pushes per-proxy snapshots whenever the registry changes.
type Server struct {
	ServerConfig

	anys *anyCache
	sets nameSets
	push chan struct{}

	pendMu sync.Mutex // guards pendFull, pendHosts and pendWhy
	// pendFull asks the next push to regenerate everything; otherwise it
	// regenerates only the load assignments of pendHosts.
	pendFull  bool
	pendHosts map[string]bool
	// pendWhy are the reasons for a full push, for its log line.
	pendWhy map[string]int

	mu      sync.Mutex // guards proxies
	proxies map[string]*proxyState

	warned sync.Map // message -> struct{}

	// admission bounds the streams being served their first configuration.
	admission  *admission
	connecting prometheus.GaugeFunc

	memoMu sync.Mutex // guards current; taken before mu, never after
	// current is what was generated since the last change; proxies that
	// connect in between reuse it instead of generating their view again.
	current *memo

	connected prometheus.GaugeFunc
	pushes    *prometheus.CounterVec
	rejects   *prometheus.CounterVec
	pushTime  prometheus.Histogram
	// converged: change to acknowledgement, per proxy and type.
	converged     convergence
	convergedTime prometheus.Histogram
}

type proxyState struct {
	proxy *proxy
	// snap is the proxy's latest snapshot, handed to its streams.
	snap    *snapshot
	conns   map[*adsConn]struct{}
	version int64
	// sync is what the proxy was sent and acknowledged.
	sync *syncState
}

// syncState is what a proxy was sent and acknowledged, under a lock of
// its own: every stream writes it per response and per acknowledgement,
// and 5000 streams doing so under the proxies' lock kept pushes (and
// each other) waiting.
type syncState struct {
	id     string // the proxy's node ID, for logs
	mu     sync.Mutex
	sent   map[string]string // type URL -> version or nonce sent
	acked  map[string]string // type URL -> version or nonce acknowledged
	nack   map[string]string // type URL -> last error detail
	sentAt map[string]time.Time
	// changed is when the change behind changedSnap was first seen;
	// pending holds it per type sent from that snapshot until the proxy
	// acknowledges the type (its convergence).
	changed     time.Time
	changedSnap *snapshot
	pending     map[string]time.Time
	counted     map[string]*snapshot // type URL -> the snapshot last timed
}

func newSyncState(id string) *syncState {
	return &syncState{id: id, sent: map[string]string{}, acked: map[string]string{}, nack: map[string]string{}}
}

// NewServer prepares the cache and metrics; Register and Run start it.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Generator == nil {
		cfg.Generator = &proxyview.Generator{Registry: cfg.Registry, Log: cfg.Log}
	}
	reg, metrics := cfg.Registry, cfg.Metrics
	s := &Server{ServerConfig: cfg,
		anys: newAnyCache(),
		push: make(chan struct{}, 1), pendHosts: map[string]bool{}, pendWhy: map[string]int{},
		proxies: map[string]*proxyState{}, admission: newAdmission()}
	s.connecting = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "isthmus_xds_streams_waiting",
		Help: "xDS streams waiting for their first configuration while others are served theirs (16 per CPU at once)."},
		func() float64 { return float64(s.admission.waiting.Load()) })
	s.connected = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "pilot_xds", Help: "Connected xDS clients."},
		func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(len(s.proxies)) })
	s.pushes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_xds_pushes", Help: "xDS responses sent, by type."}, []string{"type"})
	s.rejects = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "pilot_total_xds_rejects", Help: "xDS responses rejected (NACKed) by proxies, by type."}, []string{"type"})
	s.pushTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "isthmus_push_time", Help: "Seconds from a registry change to every proxy's snapshot being updated.",
		Buckets: []float64{.01, .05, .1, .2, .5, 1, 3, 5, 10}})
	s.convergedTime = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "pilot_proxy_convergence_time",
		Help:    "Delay in seconds between a configuration or endpoint change and a proxy acknowledging it, per proxy and type.",
		Buckets: []float64{.01, .05, .1, .2, .5, 1, 3, 5, 10}})
	if metrics != nil {
		for _, c := range []prometheus.Collector{s.connected, s.connecting, s.pushes, s.rejects, s.pushTime, s.convergedTime} {
			_ = metrics.Register(c)
		}
	}
	reg.Subscribe(func(e registry.Event) {
		if e.Reason == registry.ReasonEndpoints && !e.Full {
			s.triggerEndpoints(e.Hostnames)
			return
		}
		s.TriggerFor(e.Reason)
	})
	// A proxy that connected before its pod was seen learns its locality.
	reg.SubscribeWorkloads(func(cluster, address string) {
		s.mu.Lock()
		var ids []string
		for id, st := range s.proxies {
			if st.proxy.ClusterID == cluster && st.proxy.IP == address && st.proxy.Locality.Region == "" {
				ids = append(ids, id)
			}
		}
		s.mu.Unlock()
		if len(ids) > 0 {
			go func() {
				for _, id := range ids {
					s.update(id)
				}
			}()
		}
	})
	return s
}

// Trigger asks for a (debounced) full push to every proxy after a
// change of Istio configuration.
func (s *Server) Trigger() { s.TriggerFor("Istio configuration") }

// TriggerFor asks for a (debounced) full push to every proxy; the push's
// log line says why (a full push regenerates every view, and one nobody
// expected is the first thing to look for when changes arrive late).
func (s *Server) TriggerFor(reason string) {
	s.memoMu.Lock()
	s.current = nil
	s.memoMu.Unlock()
	s.pendMu.Lock()
	s.pendFull = true
	s.pendWhy[reason]++
	s.pendMu.Unlock()
	s.signal()
}

// triggerEndpoints asks for a push of the named services' endpoints only.
// Until it happens, proxies that connect get the last push's view (and
// then the push).
func (s *Server) triggerEndpoints(hosts []string) {
	s.pendMu.Lock()
	for _, h := range hosts {
		s.pendHosts[h] = true
	}
	s.pendMu.Unlock()
	s.signal()
}

func (s *Server) signal() {
	select {
	case s.push <- struct{}{}:
	default:
	}
}

// Register adds the ADS service to gRPC servers (one Server for every
// port: a proxy's streams on either port share its state).
func (s *Server) Register(gs ...*grpc.Server) {
	for _, g := range gs {
		discovery.RegisterAggregatedDiscoveryServiceServer(g, s)
	}
}

// Run pushes debounced registry changes until ctx ends. An endpoint
// change after a quiet spell (no push for a debounce period) goes out at
// once: the debounce is there to gather bursts, and a lone change (a pod
// turning ready, one scaled away) need not wait for company. What follows
// it within a debounce period is gathered as before, as is every
// configuration change.
func (s *Server) Run(ctx context.Context) error {
	var last time.Time // when the last push ended
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.push:
		}
		start := time.Now()
		if start.Sub(last) < s.Debounce || !s.endpointsOnly() {
			if !s.gather(ctx, start) {
				return nil
			}
		}
		s.pendMu.Lock()
		full, hosts, why := s.pendFull, s.pendHosts, s.pendWhy
		s.pendFull, s.pendHosts, s.pendWhy = false, map[string]bool{}, map[string]int{}
		s.pendMu.Unlock()
		began := time.Now()
		ps := s.pushAll(full, hosts, start)
		last = time.Now()
		s.pushTime.Observe(last.Sub(start).Seconds())
		// As istiod's "Push debounce stable" line: where a push's time went.
		attrs := []any{"full", full, "services", len(hosts), "proxies", ps.proxies,
			"gathered", began.Sub(start).Round(time.Millisecond), "took", last.Sub(began).Round(time.Millisecond),
			"views", ps.views.Round(time.Millisecond), "snapshots", ps.snapshots.Round(time.Millisecond), "installed", ps.installed.Round(time.Millisecond)}
		if full {
			attrs = append(attrs, "why", reasons(why))
		}
		s.Log.Info("pushed", attrs...)
	}
}

// gather waits until no change came for a debounce period, or ten periods
// since start; false when ctx ended.
func (s *Server) gather(ctx context.Context, start time.Time) bool {
	quiet := time.NewTimer(s.Debounce)
	defer quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-s.push:
			if time.Since(start) < 10*s.Debounce {
				quiet.Reset(s.Debounce)
			}
		case <-quiet.C:
			return true
		}
	}
}

// endpointsOnly reports whether what is pending is endpoint changes alone.
func (s *Server) endpointsOnly() bool {
	s.pendMu.Lock()
	defer s.pendMu.Unlock()
	return !s.pendFull && len(s.pendHosts) > 0
}

// pushStats is where one push's time went: the views patched (or none,
// generated as proxies are), every proxy's snapshot assembled (and views
// generated then), the snapshots installed under the proxies' lock.
type pushStats struct {
	proxies                     int
	views, snapshots, installed time.Duration
}

// pushAll updates every proxy: from scratch when full, else by
// regenerating only the load assignments of hosts in the views the last
// push generated.
func (s *Server) pushAll(full bool, hosts map[string]bool, changed time.Time) pushStats {
	start := time.Now()
	if full {
		s.reauthorize()
	}
	// Proxies with the same view share generated resources: once per view.
	s.anys.rotate()
	s.memoMu.Lock()
	base := s.current
	s.memoMu.Unlock()
	var m *memo
	if full || base == nil {
		m = newMemo()
	} else {
		m = s.patched(base, hosts)
	}
	m.changed = changed
	s.memoMu.Lock()
	s.current = m
	s.memoMu.Unlock()
	// Listed once m is current: a proxy that connects later reads m itself.
	// Listed before, one connecting while base was patched took base's
	// stale view and missed this push.
	ps := s.install(m)
	ps.views = time.Since(start) - ps.snapshots - ps.installed
	return ps
}

// give makes snap the proxy's snapshot and its streams', and returns
// wake with those streams, to be woken.
func (st *proxyState) give(snap *snapshot, wake []*adsConn) []*adsConn {
	st.snap = snap
	for c := range st.conns {
		c.snap.Store(snap)
		wake = append(wake, c)
	}
	return wake
}

// install gives every proxy its snapshot from m, taking the proxies' lock
// twice in all: every stream takes it for each response sent and each
// acknowledgement, and at 5000 streams a push that took it twice per
// proxy waited behind them most of its time (276 ms of wall for a
// fraction of that in CPU).
func (s *Server) install(m *memo) pushStats {
	type todo struct {
		id string
		p  *proxy
	}
	s.mu.Lock()
	list := make([]todo, 0, len(s.proxies))
	for id, st := range s.proxies {
		st.version++
		list = append(list, todo{id, st.proxy})
	}
	s.mu.Unlock()
	start := time.Now()
	snaps := make([]*snapshot, len(list))
	for i, t := range list {
		snaps[i] = s.snapshotFor(t.p, m)
	}
	ps := pushStats{proxies: len(list), snapshots: time.Since(start)}
	start = time.Now()
	var wake []*adsConn
	s.mu.Lock()
	for i, t := range list {
		st, ok := s.proxies[t.id]
		if !ok || st.proxy != t.p {
			continue // reconnected meanwhile: its connection installed its own
		}
		snap := snaps[i]
		if !m.changed.IsZero() && st.snap != nil && snap != st.snap {
			st.sync.mu.Lock()
			st.sync.changed, st.sync.changedSnap = m.changed, snap
			st.sync.mu.Unlock()
		}
		wake = st.give(snap, wake)
	}
	s.mu.Unlock()
	for _, c := range wake {
		c.notify()
	}
	ps.installed = time.Since(start)
	return ps
}

// warnOnce logs a configuration problem the first time it is seen.
func (s *Server) warnOnce(msg string) {
	if _, loaded := s.warned.LoadOrStore(msg, struct{}{}); !loaded {
		s.Log.Warn(msg)
	}
}

// reasons lists why a push was full, most frequent first, at most five.
func reasons(why map[string]int) string {
	if len(why) == 0 {
		return ""
	}
	list := slices.SortedFunc(maps.Keys(why), func(a, b string) int {
		return cmp.Or(why[b]-why[a], strings.Compare(a, b))
	})
	var out []string
	for i, r := range list {
		if i == 5 {
			out = append(out, fmt.Sprintf("%d more", len(list)-5))
			break
		}
		if why[r] > 1 {
			r = fmt.Sprintf("%s (x%d)", r, why[r])
		}
		out = append(out, r)
	}
	return strings.Join(out, "; ")
}
