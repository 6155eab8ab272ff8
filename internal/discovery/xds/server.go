package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"sort"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// ServerConfig is what the xDS server is given at construction.
type ServerConfig struct {
	Registry *registry.Registry
	// Config is the Istio configuration (Gateways, VirtualServices); may be nil.
	Config Config
	// Domain is the cluster DNS domain, for short hosts in configuration.
	Domain string
	// RootNamespace holds mesh-wide policy (meshConfig.rootNamespace).
	RootNamespace string
	Log           *slog.Logger
	// Debounce is the quiet time gathered before a push (default 100 ms);
	// a push never waits more than 10 debounce periods.
	Debounce time.Duration
	Metrics  prometheus.Registerer
	// TrustDomains are the mesh's trust domain and its aliases
	// (meshConfig.trustDomainAliases): outbound clusters pin the SPIFFE
	// IDs of their service's accounts in each (secure naming).
	TrustDomains []string
	// Credentials decides which authenticated routers receive their
	// namespace's TLS credentials; nil: none does. Streams without a
	// proven identity (the plaintext port) never do.
	Credentials CredentialAuthorizer
}

// Server pushes per-proxy snapshots whenever the registry changes.
type Server struct {
	ServerConfig

	anys   *anyCache
	budget *sendBudget
	sets   nameSets
	push   chan struct{}

	pendMu sync.Mutex // guards pendFull and pendHosts
	// pendFull asks the next push to regenerate everything; otherwise it
	// regenerates only the load assignments of pendHosts.
	pendFull  bool
	pendHosts map[string]bool

	mu      sync.Mutex // guards proxies
	proxies map[string]*proxyState

	warnedNoGW sync.Map // network -> struct{}
	warned     sync.Map // message -> struct{}

	memoMu sync.Mutex // guards current
	// current is what was generated since the last change; proxies that
	// connect in between reuse it instead of generating their view again.
	current *memo

	connected prometheus.GaugeFunc
	pushes    *prometheus.CounterVec
	rejects   *prometheus.CounterVec
	pushTime  prometheus.Histogram
}

type proxyState struct {
	proxy *Proxy
	// snap is the proxy's latest snapshot, handed to its streams.
	snap    *cachev3.Snapshot
	conns   map[*adsConn]struct{}
	sent    map[string]string // type URL -> version or nonce sent
	acked   map[string]string // type URL -> version or nonce acknowledged
	nack    map[string]string // type URL -> last error detail
	version int64
}

// Identity is who opened a stream, proven by its token on the TLS port:
// the cluster whose API server reviewed the token, and the token's
// service account.
type Identity struct{ Cluster, Namespace, ServiceAccount string }

func (id Identity) String() string {
	return id.Namespace + "/" + id.ServiceAccount + "@" + id.Cluster
}

// CredentialAuthorizer decides whether a workload may receive the TLS
// credentials (Secrets named by credentialName) of its own namespace:
// as in Istio, when its service account may read Secrets there.
type CredentialAuthorizer interface {
	AuthorizeCredentials(ctx context.Context, id Identity) error
}

type identityKey struct{}

// WithIdentity marks a stream's context with its caller's identity; the
// server then refuses a node that claims another namespace or service
// account (istiod's PILOT_ENABLE_XDS_IDENTITY_CHECK).
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// ProxyStatus is one proxy's sync state, what proxy-status prints.
type ProxyStatus struct {
	ID        string            `json:"id"`
	ClusterID string            `json:"clusterID"`
	Network   string            `json:"network"`
	Version   string            `json:"istioVersion,omitempty"`
	Sent      map[string]string `json:"sent"`
	Acked     map[string]string `json:"acked"`
	Nacked    map[string]string `json:"nacked,omitempty"`
}

// NewServer prepares the cache and metrics; Register and Run start it.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Debounce == 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	reg, metrics := cfg.Registry, cfg.Metrics
	s := &Server{ServerConfig: cfg,
		anys: newAnyCache(), budget: newSendBudget(sendBudgetBytes),
		push: make(chan struct{}, 1), pendHosts: map[string]bool{},
		proxies: map[string]*proxyState{}}
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
	reg.Subscribe(func(e registry.Event) {
		if e.Reason == registry.ReasonEndpoints && !e.Full {
			s.triggerEndpoints(e.Hostnames)
			return
		}
		s.Trigger()
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

// Trigger asks for a (debounced) push to every proxy, e.g. after a
// configuration change.
func (s *Server) Trigger() {
	s.memoMu.Lock()
	s.current = nil
	s.memoMu.Unlock()
	s.pendMu.Lock()
	s.pendFull = true
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
		s.pendMu.Lock()
		full, hosts := s.pendFull, s.pendHosts
		s.pendFull, s.pendHosts = false, map[string]bool{}
		s.pendMu.Unlock()
		s.pushAll(full, hosts)
		s.pushTime.Observe(time.Since(start).Seconds())
	}
}

// pushAll updates every proxy: from scratch when full, else by
// regenerating only the load assignments of hosts in the views the last
// push generated.
func (s *Server) pushAll(full bool, hosts map[string]bool) {
	if full {
		s.reauthorize()
	}
	s.mu.Lock()
	ids := make([]string, 0, len(s.proxies))
	for id := range s.proxies {
		ids = append(ids, id)
	}
	s.mu.Unlock()
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
	s.memoMu.Lock()
	s.current = m
	s.memoMu.Unlock()
	for _, id := range ids {
		s.updateWith(id, m)
	}
}

// reauthorize decides again which gateways may receive their
// credentials (a Role granted or taken away since they connected; the
// authorizer caches its answers briefly).
func (s *Server) reauthorize() {
	s.mu.Lock()
	var routers []*Proxy
	for _, st := range s.proxies {
		if st.proxy.identity != nil && st.proxy.Type == Router {
			routers = append(routers, st.proxy)
		}
	}
	s.mu.Unlock()
	for _, p := range routers {
		ok := s.authorizeCredentials(context.Background(), p)
		if ok == p.credentials {
			continue
		}
		cp := *p
		cp.credentials = ok
		s.mu.Lock()
		if st := s.proxies[p.key()]; st != nil && st.proxy == p {
			st.proxy = &cp
		}
		s.mu.Unlock()
	}
}

// memo holds what one push generated, for reuse across proxies.
type memo struct {
	// mu serializes use: connects and pushes share a memo, and generating
	// a view once while others wait is the point.
	mu     sync.Mutex
	views  map[viewKey]*shared
	routes map[string]*typed // sidecar routes by namespace
	// snapshots of sidecars by view, namespace and inbound ports.
	snaps   map[snapKey]*cachev3.Snapshot
	inbound InboundIndex
}

// patched is base with the load assignments of hosts regenerated; routes
// carry over (they do not depend on endpoints), inbound listeners are
// rebuilt as proxies ask (a pod's ports come from its endpoints).
func (s *Server) patched(base *memo, hosts map[string]bool) *memo {
	base.mu.Lock()
	defer base.mu.Unlock()
	m := newMemo()
	maps.Copy(m.routes, base.routes)
	for k, sh := range base.views {
		m.views[k] = s.patchEndpoints(sh, hosts)
	}
	return m
}

// patchEndpoints returns sh with the load assignments of hosts rebuilt
// (sh itself when it has none of them). Routers and gRPC clients are
// generated again whole: a router's listeners follow its own endpoints.
func (s *Server) patchEndpoints(sh *shared, hosts map[string]bool) *shared {
	if sh.proxy.Type == Router || sh.proxy.Generator == GeneratorGRPC {
		return s.generate(sh.proxy)
	}
	var svcs []*registry.Service
	for _, svc := range sh.services {
		if hosts[svc.Hostname] {
			svcs = append(svcs, svc)
		}
	}
	if len(svcs) == 0 {
		return sh
	}
	cp := *sh
	items, hashes := maps.Clone(sh.items[types.Endpoint]), maps.Clone(sh.hashes[types.Endpoint])
	for _, r := range GenerateEndpoints(sh.proxy, s.Registry, s.Config, s.Domain, svcs, s.noGateway, s.warnOnce) {
		n := cachev3.GetResourceName(r)
		items[n] = types.ResourceWithTTL{Resource: r}
		hashes[n] = hashOf(r)
	}
	cp.items[types.Endpoint], cp.hashes[types.Endpoint], cp.versions[types.Endpoint] = items, hashes, versionFrom(hashes)
	return &cp
}

// located returns p with its locality filled in from its pod's node,
// when the node did not send one (istio-agent usually does not).
func (s *Server) located(p *Proxy) *Proxy {
	if p.Locality.Region != "" {
		return p
	}
	l, ok := s.Registry.WorkloadLocality(p.ClusterID, p.IP)
	if !ok {
		return p
	}
	c := *p
	c.Locality = l
	return &c
}

func newMemo() *memo {
	return &memo{views: map[viewKey]*shared{}, routes: map[string]*typed{}, snaps: map[snapKey]*cachev3.Snapshot{}}
}

// typed is one type's resources with versions.
type typed struct {
	items   map[string]types.ResourceWithTTL
	version string
	hashes  map[string]string
}

func newTyped(rs []types.Resource) *typed {
	t := &typed{items: make(map[string]types.ResourceWithTTL, len(rs))}
	for _, r := range rs {
		t.items[cachev3.GetResourceName(r)] = types.ResourceWithTTL{Resource: r}
	}
	t.version, t.hashes = versionOf(rs)
	return t
}

// viewKey is everything shared generation depends on besides the registry
// and configuration (the locality: DestinationRules' locality failover and
// distribute); for routers also labels (Gateways select by label),
// namespace (where credentialName secrets live) and address (its Service's
// target ports).
type viewKey struct{ typ, network, cluster, requested, generator, locality, labels, namespace, ip string }

func keyOf(p *Proxy) viewKey {
	// The cluster: DestinationRule failover priorities compare it.
	k := viewKey{typ: p.Type, network: p.Network, cluster: p.ClusterID, requested: p.RequestedNetworkView, generator: p.Generator, locality: p.Locality.String()}
	if p.Type == Router {
		k.labels, k.namespace, k.ip = labels.Set(p.Labels).String(), p.Namespace, p.IP
	}
	return k
}

// shared is one view's generated resources by type, with content versions.
type shared struct {
	items    [types.UnknownType]map[string]types.ResourceWithTTL
	versions [types.UnknownType]string
	// hashes per resource, the delta protocol's version map.
	hashes   [types.UnknownType]map[string]string
	services []*registry.Service
	// proxy is the one the view was generated for, to patch it later.
	proxy *Proxy
}

// update installs one proxy's snapshot, reusing what was generated since
// the last change.
func (s *Server) update(id string) {
	s.memoMu.Lock()
	if s.current == nil {
		s.current = newMemo()
	}
	m := s.current
	s.memoMu.Unlock()
	s.updateWith(id, m)
}

// updateWith installs one proxy's snapshot from m, generating what m lacks.
func (s *Server) updateWith(id string, m *memo) {
	s.mu.Lock()
	st, ok := s.proxies[id]
	if !ok {
		s.mu.Unlock()
		return
	}
	st.version++
	p := st.proxy
	s.mu.Unlock()
	snap := s.snapshotFor(p, m)
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok = s.proxies[id]; ok {
		st.snap = snap
		for c := range st.conns {
			c.snap.Store(snap)
			c.notify()
		}
	}
}

// snapshot returns a proxy's latest snapshot.
func (s *Server) snapshot(id string) *cachev3.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.proxies[id]; ok {
		return st.snap
	}
	return nil
}

// snapKey is what a proxy's snapshot depends on: its view and, for
// sidecars, its namespace (routes), inbound ports and inbound policy.
type snapKey struct {
	view                     viewKey
	namespace, ports, policy string
	credentials              bool
}

// snapshotFor assembles a proxy's snapshot from what the push already
// generated: the view's shared resources, the namespace's routes and, for
// sidecars, the inbound listener of its port set. Sidecars alike in all
// three share one snapshot.
func (s *Server) snapshotFor(p *Proxy, m *memo) *cachev3.Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	p = s.located(p)
	sh, ok := m.views[keyOf(p)]
	if !ok {
		sh = s.generate(p)
		m.views[keyOf(p)] = sh
	}
	sidecar := p.Type == Sidecar && p.Generator != GeneratorGRPC
	var ports InboundPorts
	var pol InboundPolicy
	key := snapKey{view: keyOf(p), credentials: p.credentials}
	if sidecar {
		if m.inbound == nil {
			m.inbound = NewInboundIndex(s.Registry, sh.services)
		}
		ports = m.inbound[p.IP]
		if s.Config != nil {
			pol.MTLS = ResolveMTLS(s.Config.PeerAuthentications(), s.RootNamespace, p.Namespace, p.Labels)
			pol.Authz = ResolveAuthz(s.Config.AuthorizationPolicies(), s.RootNamespace, p.Namespace, p.Labels, s.TrustDomains, s.warnOnce)
		}
		pol.TrustDomains = s.TrustDomains
		key.namespace, key.ports, key.policy = p.Namespace, ports.Key(), pol.Key()
	}
	if snap, ok := m.snaps[key]; ok {
		return snap
	}
	// The version map is filled here from hashes computed once per view;
	// left nil, the cache would re-hash every resource for every proxy.
	snap := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
	for i := range sh.items {
		if types.ResponseType(i) == types.Secret && !p.credentials {
			continue // TLS credentials go only to authorized gateways
		}
		snap.Resources[i] = cachev3.Resources{Version: sh.versions[i], Items: sh.items[i]}
		if url, err := cachev3.GetResponseTypeURL(types.ResponseType(i)); err == nil {
			snap.VersionMap[url] = sh.hashes[i]
		}
	}
	if sidecar {
		l, cls := Inbound(ports, pol)
		add := func(typ types.ResponseType, rs []types.Resource) {
			version, hashes := versionOf(rs)
			items := make(map[string]types.ResourceWithTTL, len(sh.items[typ])+len(rs))
			vm := make(map[string]string, len(sh.items[typ])+len(rs))
			for k, v := range sh.items[typ] {
				items[k] = v
			}
			for k, v := range sh.hashes[typ] {
				vm[k] = v
			}
			for _, r := range rs {
				n := cachev3.GetResourceName(r)
				items[n] = types.ResourceWithTTL{Resource: r}
				vm[n] = hashes[n]
			}
			snap.Resources[typ] = cachev3.Resources{Version: sh.versions[typ] + "-" + version, Items: items}
			url, _ := cachev3.GetResponseTypeURL(typ)
			snap.VersionMap[url] = vm
		}
		add(types.Listener, []types.Resource{l})
		add(types.Cluster, cls)
		rt, ok := m.routes[p.Namespace]
		if !ok {
			rt = newTyped(SidecarRoutes(p.Namespace, sh.services, s.Config, s.domainOrDefault(), s.warnOnce))
			m.routes[p.Namespace] = rt
		}
		snap.Resources[types.Route] = cachev3.Resources{Version: rt.version, Items: rt.items}
		url, _ := cachev3.GetResponseTypeURL(types.Route)
		snap.VersionMap[url] = rt.hashes
	}
	m.snaps[key] = snap
	return snap
}

// generate builds the shared resources of one view.
func (s *Server) generate(p *Proxy) *shared {
	var g Generated
	if p.Generator == GeneratorGRPC {
		g = GenerateGRPC(p, s.Registry, s.noGateway)
	} else {
		g = Generate(p, s.Registry, s.Config, s.Domain, s.noGateway, s.warnOnce)
	}
	sh := &shared{services: s.Registry.Services(), proxy: p}
	for typ, rs := range map[types.ResponseType][]types.Resource{
		types.Cluster:  g.Clusters,
		types.Endpoint: g.Endpoints,
		types.Listener: g.Listeners,
		types.Route:    g.Routes,
		types.Secret:   g.Secrets,
	} {
		t := newTyped(rs)
		sh.items[typ], sh.versions[typ], sh.hashes[typ] = t.items, t.version, t.hashes
	}
	return sh
}

// versionOf names a resource set by its content, so an unchanged type is
// not re-sent to state-of-the-world clients, and returns each resource's
// own hash for delta clients.
func versionOf(rs []types.Resource) (string, map[string]string) {
	hashes := make(map[string]string, len(rs))
	for _, r := range rs {
		hashes[cachev3.GetResourceName(r)] = hashOf(r)
	}
	return versionFrom(hashes), hashes
}

// hashOf is one resource's content version.
func hashOf(r types.Resource) string {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// versionFrom is a resource set's version: a hash of its names and
// content versions.
func versionFrom(hashes map[string]string) string {
	names := make([]string, 0, len(hashes))
	for n := range hashes {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte(hashes[n]))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func (s *Server) noGateway(network string) {
	if _, loaded := s.warnedNoGW.LoadOrStore(network, struct{}{}); !loaded {
		s.Log.Warn("network has no east-west gateway: its endpoints are sent as pod addresses, which other networks cannot reach; install a gateway labelled topology.istio.io/network", "network", network)
	}
}

// connect registers a stream's proxy on its first request; a node that
// claims another identity than its token proves is refused.
func (s *Server) connect(c *adsConn, n *core.Node) error {
	if n == nil {
		return status.Error(codes.InvalidArgument, "the first request on a stream must carry the node")
	}
	p, err := ParseNode(n)
	if err == nil {
		if who, ok := c.ctx.Value(identityKey{}).(Identity); ok {
			if err = claims(p, who); err == nil {
				err = s.fromPod(c.ctx, p, who)
			}
			if err == nil {
				p.identity = &who
				p.credentials = s.authorizeCredentials(c.ctx, p)
			}
		}
	}
	if err != nil {
		s.Log.Warn("xDS client refused", "node", n.GetId(), "err", err)
		return err
	}
	p.TrustDomains = s.TrustDomains
	key := p.key()
	s.mu.Lock()
	c.proxy = key
	st, ok := s.proxies[key]
	if !ok {
		st = &proxyState{sent: map[string]string{}, acked: map[string]string{}, nack: map[string]string{}, conns: map[*adsConn]struct{}{}}
		s.proxies[key] = st
	}
	st.proxy = p
	st.conns[c] = struct{}{}
	if st.snap != nil {
		c.snap.Store(st.snap)
	}
	s.mu.Unlock()
	s.Log.Info("proxy connected", "proxy", p.ID, "cluster", p.ClusterID, "network", p.Network, "authenticated", p.identity != nil)
	s.update(key)
	return nil
}

// claims checks what a node says of itself against what its token
// proved: namespace, service account (when it names one) and cluster (a
// node naming none is in the cluster that reviewed its token).
func claims(p *Proxy, who Identity) error {
	var err error
	switch {
	case p.Namespace != who.Namespace:
		err = fmt.Errorf("node %q is in namespace %q but its token is for %s/%s", p.ID, p.Namespace, who.Namespace, who.ServiceAccount)
	case p.ServiceAccount != "" && p.ServiceAccount != who.ServiceAccount:
		err = fmt.Errorf("node %q claims service account %q but its token is for %s/%s", p.ID, p.ServiceAccount, who.Namespace, who.ServiceAccount)
	case p.ClusterID != "" && who.Cluster != "" && p.ClusterID != who.Cluster:
		err = fmt.Errorf("node %q claims cluster %q but its token was reviewed by cluster %q (the clusterid the proxy sends with its token must be its CLUSTER_ID)", p.ID, p.ClusterID, who.Cluster)
	}
	if err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	if p.ClusterID == "" {
		p.ClusterID = who.Cluster
	}
	return nil
}

// PodWait bounds how long an authenticated proxy's connection waits for
// its pod to reach the registry (a pod just started may be seen by the
// informers a moment after its proxy dials).
var PodWait = 10 * time.Second

// fromPod takes an authenticated proxy's labels and role from its pod in
// the registry (the pod at the node's address in the token's cluster),
// never from the node: a node naming another pod, or claiming labels or a
// role its pod does not have, is refused.
func (s *Server) fromPod(ctx context.Context, p *Proxy, who Identity) error {
	w, ok := s.Registry.Workload(who.Cluster, p.IP)
	if !ok {
		wait, cancel := context.WithTimeout(ctx, PodWait)
		defer cancel()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for !ok {
			select {
			case <-wait.Done():
				return status.Errorf(codes.Unavailable, "node %q: no running pod at %s in cluster %q is known to the control plane (yet); the proxy retries", p.ID, p.IP, who.Cluster)
			case <-tick.C:
			}
			w, ok = s.Registry.Workload(who.Cluster, p.IP)
		}
	}
	deny := func(format string, args ...any) error {
		return status.Errorf(codes.PermissionDenied, "node %q: "+format, append([]any{p.ID}, args...)...)
	}
	switch {
	case w.Namespace != who.Namespace || w.ServiceAccount != who.ServiceAccount:
		return deny("the pod at %s is %s/%s with service account %s, not the token's %s/%s", p.IP, w.Namespace, w.Name, w.ServiceAccount, who.Namespace, who.ServiceAccount)
	case p.Pod != "" && p.Pod != w.Name:
		return deny("claims pod %s but the pod at %s is %s", p.Pod, p.IP, w.Name)
	case (p.Type == Router) != w.Router:
		return deny("claims to be a %s but its pod %s/%s runs a %s", p.Type, w.Namespace, w.Name, map[bool]string{true: Router, false: Sidecar}[w.Router])
	}
	for k, v := range p.Labels {
		if got, ok := w.Labels[k]; !ok || got != v {
			return deny("claims label %s=%s that its pod %s/%s does not have", k, v, w.Namespace, w.Name)
		}
	}
	p.Labels = w.Labels
	return nil
}

// authorizeCredentials tells whether an authenticated router may receive
// the TLS credentials of its namespace. Only routers are sent any.
func (s *Server) authorizeCredentials(ctx context.Context, p *Proxy) bool {
	if p.identity == nil || p.Type != Router {
		return false
	}
	if s.Credentials == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.Credentials.AuthorizeCredentials(ctx, *p.identity); err != nil {
		s.warnOnce(fmt.Sprintf("gateway %s gets no TLS credentials (credentialName): %v", p.identity, err))
		return false
	}
	return true
}

// disconnect forgets a stream, and its proxy with its last stream.
func (s *Server) disconnect(c *adsConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.proxies[c.proxy]; st != nil {
		delete(st.conns, c)
		if len(st.conns) == 0 {
			delete(s.proxies, c.proxy)
		}
	}
}

// record notes what a stream's proxy acknowledged or rejected.
func (s *Server) record(c *adsConn, typeURL, version string, errDetail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.proxies[c.proxy]
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

func (s *Server) sent(c *adsConn, typeURL, version string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.proxies[c.proxy]; st != nil {
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
	case resource.SecretType:
		return "sds"
	}
	return url
}

// Status lists every connected proxy with what it was sent and acknowledged.
func (s *Server) Status() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ProxyStatus, 0, len(s.proxies))
	for _, st := range s.proxies {
		ps := ProxyStatus{ID: st.proxy.ID, ClusterID: st.proxy.ClusterID, Network: st.proxy.Network, Version: st.proxy.IstioVersion,
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

// warnOnce logs a configuration problem the first time it is seen.
func (s *Server) warnOnce(msg string) {
	if _, loaded := s.warned.LoadOrStore(msg, struct{}{}); !loaded {
		s.Log.Warn(msg)
	}
}

func (s *Server) domainOrDefault() string {
	if s.Domain == "" {
		return "cluster.local"
	}
	return s.Domain
}
