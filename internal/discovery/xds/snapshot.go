package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"maps"
	"sort"
	"sync"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/nds"
)

// A proxy's snapshot: the views generated once per push and shared by
// proxies alike, assembled per proxy with its inbound part and routes.

// memo holds what one push generated, for reuse across proxies.
type memo struct {
	// mu serializes use: connects and pushes share a memo, and generating
	// a view once while others wait is the point.
	mu     sync.Mutex
	views  map[viewKey]*shared
	routes map[string]*typed // sidecar routes by namespace
	// snapshots of sidecars by view, namespace and inbound ports.
	snaps map[snapKey]*snapshot
	// inbound is built by the first sidecar that needs it (from services),
	// then patched push after push.
	inbound  *proxyview.InboundIndex
	services []*registry.Service
	// changed is when the first change this push carries was seen (zero:
	// not a push, or none timed).
	changed time.Time
}

// patched is base with the load assignments of hosts regenerated; routes
// carry over (they do not depend on endpoints), the index of pods' ports
// is patched for hosts, and inbound listeners are rebuilt as proxies ask
// (a pod's ports come from its endpoints).
func (s *Server) patched(base *memo, hosts map[string]bool) *memo {
	base.mu.Lock()
	defer base.mu.Unlock()
	m := newMemo()
	maps.Copy(m.routes, base.routes)
	if base.inbound != nil {
		idx := s.Generator.PatchInbound(*base.inbound, base.services, hosts)
		m.inbound, m.services = &idx, base.services
	}
	for k, sh := range base.views {
		m.views[k] = s.patchEndpoints(sh, hosts)
	}
	return m
}

// patchEndpoints returns sh with the load assignments of hosts rebuilt
// (sh itself when it has none of them). Routers and gRPC clients are
// generated again whole: a router's listeners follow its own endpoints.
func (s *Server) patchEndpoints(sh *shared, hosts map[string]bool) *shared {
	if sh.proxy.Type == proxyview.Router || sh.proxy.Generator == proxyview.GeneratorGRPC {
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
	for _, r := range s.Generator.Endpoints(sh.proxy, svcs) {
		n := cachev3.GetResourceName(r)
		items[n] = types.ResourceWithTTL{Resource: r}
		hashes[n] = hashOf(r)
	}
	cp.items[types.Endpoint], cp.hashes[types.Endpoint], cp.versions[types.Endpoint] = items, hashes, versionFrom(hashes)
	return &cp
}

// located returns p with its locality filled in from its pod's node,
// when the node did not send one (istio-agent usually does not).
func (s *Server) located(p *proxyview.Proxy) *proxyview.Proxy {
	if p.Locality.Region != "" {
		return p
	}
	w, ok := s.workload(p.ClusterID, p.Namespace, p.IP)
	if !ok {
		return p
	}
	c := *p
	c.Locality = w.Locality
	return &c
}

func newMemo() *memo {
	return &memo{views: map[viewKey]*shared{}, routes: map[string]*typed{}, snaps: map[snapKey]*snapshot{}}
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
type viewKey struct{ typ, network, cluster, requested, generator, locality, labels, namespace, ip, scope, rules string }

func keyOf(p *proxyview.Proxy) viewKey {
	// The cluster: DestinationRule failover priorities compare it.
	k := viewKey{typ: p.Type, network: p.Network, cluster: p.ClusterID, requested: p.RequestedNetworkView, generator: p.Generator, locality: p.Locality.String(),
		scope: p.Scope.Key(), rules: p.RulesNamespace}
	if p.Type == proxyview.Router {
		k.labels, k.namespace, k.ip = labels.Set(p.Labels).String(), p.Namespace, p.IP
	}
	return k
}

// snapshot is what one proxy may watch: Envoy's types in go-control-plane's
// Snapshot, and beside them Istio's name table (NDS), which that Snapshot
// has no place for.
type snapshot struct {
	cachev3.Snapshot
	names cachev3.Resources
}

// GetVersion is the version of a type's resources.
func (s *snapshot) GetVersion(url string) string {
	if url == nds.TypeURL {
		return s.names.Version
	}
	return s.Snapshot.GetVersion(url)
}

// GetResourcesAndTTL is a type's resources by name.
func (s *snapshot) GetResourcesAndTTL(url string) map[string]types.ResourceWithTTL {
	if url == nds.TypeURL {
		return s.names.Items
	}
	return s.Snapshot.GetResourcesAndTTL(url)
}

// shared is one view's generated resources by type, with content versions.
type shared struct {
	items    [types.UnknownType]map[string]types.ResourceWithTTL
	versions [types.UnknownType]string
	// hashes per resource, the delta protocol's version map.
	hashes   [types.UnknownType]map[string]string
	services []*registry.Service
	// names is a sidecar view's name table (NDS); nil for others.
	names *typed
	// proxy is the one the view was generated for, to patch it later.
	proxy *proxyview.Proxy
}

// update installs one proxy's snapshot, reusing what was generated since
// the last change. It installs only from the memo still current: a push
// that replaced it meanwhile installed newer, which an older snapshot
// would undo until the next push.
func (s *Server) update(id string) {
	for {
		s.memoMu.Lock()
		if s.current == nil {
			s.current = newMemo()
		}
		m := s.current
		s.memoMu.Unlock()
		if s.updateWith(id, m) {
			return
		}
	}
}

// updateWith installs one proxy's snapshot from m, generating what m
// lacks, if m is still the current memo (it reports whether it was).
// A proxy's first snapshot is its connection, not a change: pushes
// (install) record changes.
func (s *Server) updateWith(id string, m *memo) bool {
	s.mu.Lock()
	st, ok := s.proxies[id]
	if !ok {
		s.mu.Unlock()
		return true
	}
	st.version++
	p := st.proxy
	s.mu.Unlock()
	snap := s.snapshotFor(p, m)
	s.memoMu.Lock()
	defer s.memoMu.Unlock()
	if s.current != m {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok = s.proxies[id]; ok {
		for _, c := range st.give(snap, nil) {
			c.notify()
		}
	}
	return true
}

// snapshot returns a proxy's latest snapshot.
func (s *Server) snapshot(id string) *snapshot {
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
func (s *Server) snapshotFor(conn *proxy, m *memo) *snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := s.Generator.Scope(s.located(conn.Proxy))
	sh, ok := m.views[keyOf(p)]
	if !ok {
		sh = s.generate(p)
		m.views[keyOf(p)] = sh
	}
	sidecar := p.Type == proxyview.Sidecar && p.Generator != proxyview.GeneratorGRPC
	var ports proxyview.InboundPorts
	var pol proxyview.InboundPolicy
	key := snapKey{view: keyOf(p), credentials: conn.credentials}
	if sidecar {
		if m.inbound == nil {
			idx := s.Generator.InboundIndex(sh.services)
			m.inbound, m.services = &idx, sh.services
		}
		ports = p.Scope.InboundPorts(m.inbound.For(p.Namespace, p.IP))
		pol = s.Generator.InboundPolicy(p)
		key.namespace, key.ports, key.policy = p.Namespace, ports.Key(), pol.Key()
	}
	if snap, ok := m.snaps[key]; ok {
		return snap
	}
	// The version map is filled here from hashes computed once per view;
	// left nil, the cache would re-hash every resource for every proxy.
	snap := &snapshot{Snapshot: cachev3.Snapshot{VersionMap: map[string]map[string]string{}}}
	for i := range sh.items {
		if types.ResponseType(i) == types.Secret && !conn.credentials {
			continue // TLS credentials go only to authorized gateways
		}
		snap.Resources[i] = cachev3.Resources{Version: sh.versions[i], Items: sh.items[i]}
		if url, err := cachev3.GetResponseTypeURL(types.ResponseType(i)); err == nil {
			snap.VersionMap[url] = sh.hashes[i]
		}
	}
	if sh.names != nil {
		snap.names = cachev3.Resources{Version: sh.names.version, Items: sh.names.items}
		snap.VersionMap[nds.TypeURL] = sh.names.hashes
	}
	if sidecar {
		l, cls := s.Generator.Inbound(ports, pol)
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
		// Per namespace (short names), cluster (ClusterIPs) and scope.
		rk := p.Namespace + "/" + p.ClusterID + "/" + p.Scope.Key()
		rt, ok := m.routes[rk]
		if !ok {
			rt = newTyped(s.Generator.Routes(p, sh.services))
			m.routes[rk] = rt
		}
		snap.Resources[types.Route] = cachev3.Resources{Version: rt.version, Items: rt.items}
		url, _ := cachev3.GetResponseTypeURL(types.Route)
		snap.VersionMap[url] = rt.hashes
	}
	m.snaps[key] = snap
	return snap
}

// generate builds the shared resources of one view.
func (s *Server) generate(p *proxyview.Proxy) *shared {
	g := s.Generator.View(p)
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
	if g.Names != nil {
		// One resource without a name, as istiod sends the table.
		sh.names = newTyped([]types.Resource{g.Names.Message()})
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
