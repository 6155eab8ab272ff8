package xds

import (
	"context"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/workloadentry"
)

// Who a stream is: the node it names, held to what its token proved, and
// what it may receive.

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

// Authenticated is the stream interceptor of the TLS port, as istiod's
// XDS_AUTH: authenticate proves who opened each stream (a token review),
// a stream it refuses never reaches the server, and the server holds the
// node of every other stream to that identity (istiod's
// PILOT_ENABLE_XDS_IDENTITY_CHECK, and more: see fromPod).
func Authenticated(authenticate func(ctx context.Context) (Identity, error)) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		id, err := authenticate(ss.Context())
		if err != nil {
			return err
		}
		return h(srv, identityStream{ss, context.WithValue(ss.Context(), identityKey{}, id)})
	}
}

// IdentityOf is the caller Authenticated proved for a stream (false on
// the plaintext port): other services on the TLS port hold their callers
// to it as xDS does.
func IdentityOf(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// identityStream carries the authenticated caller in the stream's context.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s identityStream) Context() context.Context { return s.ctx }

// reauthorize decides again which gateways may receive their
// credentials (a Role granted or taken away since they connected; the
// authorizer caches its answers briefly).
func (s *Server) reauthorize() {
	s.mu.Lock()
	var routers []*proxy
	for _, st := range s.proxies {
		if st.proxy.identity != nil && st.proxy.Type == proxyview.Router {
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

// connect registers a stream's proxy on its first request; a node that
// claims another identity than its token proves is refused.
func (s *Server) connect(c *adsConn, n *core.Node) error {
	if n == nil {
		return status.Error(codes.InvalidArgument, "the first request on a stream must carry the node")
	}
	// A proxy served before the caches synced would be given a mesh
	// without the services not yet listed, and drop its routes to them.
	if s.Ready != nil {
		if err := s.Ready(); err != nil {
			return status.Errorf(codes.Unavailable, "the control plane is not ready yet (%v); the proxy retries", err)
		}
	}
	parsed, err := proxyview.ParseNode(n)
	p := &proxy{Proxy: parsed}
	if err == nil {
		if who, ok := c.ctx.Value(identityKey{}).(Identity); ok {
			if err = claims(parsed, who); err == nil {
				err = s.fromPod(c.ctx, parsed, who)
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
	key := p.key()
	s.mu.Lock()
	c.proxy = key
	st, ok := s.proxies[key]
	if !ok {
		st = &proxyState{sync: newSyncState(p.ID), conns: map[*adsConn]struct{}{}}
		s.proxies[key] = st
	}
	st.proxy = p
	st.conns[c] = struct{}{}
	c.sync = st.sync
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
func claims(p *proxyview.Proxy, who Identity) error {
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
func (s *Server) fromPod(ctx context.Context, p *proxyview.Proxy, who Identity) error {
	w, ok := s.workload(who.Cluster, who.Namespace, p.IP)
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
			w, ok = s.workload(who.Cluster, who.Namespace, p.IP)
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
	case (p.Type == proxyview.Router) != w.Router:
		return deny("claims to be a %s but its pod %s/%s runs a %s", p.Type, w.Namespace, w.Name, map[bool]string{true: proxyview.Router, false: proxyview.Sidecar}[w.Router])
	}
	for k, v := range p.Labels {
		if got, ok := w.Labels[k]; !ok || got != v {
			return deny("claims label %s=%s that its pod %s/%s does not have", k, v, w.Namespace, w.Name)
		}
	}
	p.Labels = w.Labels
	return nil
}

// workload is the pod at an address in a cluster or, in the config
// cluster where no pod has it, the WorkloadEntry of namespace there: a
// pod always wins its address, so an entry (which any namespace may
// write) cannot stand in for another namespace's pod, and entries are
// found in the proxy's own namespace only.
func (s *Server) workload(cluster, namespace, address string) (registry.Workload, bool) {
	if w, ok := s.Registry.Workload(cluster, address); ok {
		return w, true
	}
	if cluster != "" && cluster == s.ConfigCluster {
		return s.Registry.Workload(workloadentry.Shard, workloadentry.Key(namespace, address))
	}
	return registry.Workload{}, false
}

// authorizeCredentials tells whether an authenticated router may receive
// the TLS credentials of its namespace. Only routers are sent any.
func (s *Server) authorizeCredentials(ctx context.Context, p *proxy) bool {
	if p.identity == nil || p.Type != proxyview.Router {
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
