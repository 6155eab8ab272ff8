package xds

import (
	"encoding/json"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statusv3 "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// istiod's debug types on the ADS stream, which Istio's own istioctl
// asks over a port-forward to 15012 with a token of istio-system's
// default service account: proxy-status and version read syncz, and
// proxy-status POD compares config_dump with the proxy's own.

const (
	debugPrefix = "istio.io/debug/"
	// TypeDebugSyncz lists every proxy's sync state (envoy.service.status.v3.ClientConfig).
	TypeDebugSyncz = debugPrefix + "syncz"
	// TypeDebugConfigDump is what one proxy (named pod.namespace) was sent,
	// as the clusters, listeners and routes of Envoy's config dump.
	TypeDebugConfigDump = debugPrefix + "config_dump"
)

// ControlPlane is how this control plane names itself in debug answers
// (istiod's IstioControlPlaneInstance, in each response's control_plane).
type ControlPlane struct {
	Component string `json:"Component"`
	ID        string `json:"ID"`
	Info      struct {
		Version string `json:"version"`
	} `json:"info"`
}

// serveDebug answers a stream whose first request asked a debug type.
// It never registers a proxy: the caller is a tool, not a workload. Only
// a token proves who asks (no answer on the plaintext port), and a
// caller outside the system namespace sees its own namespace's proxies
// only, as istiod with its default ENABLE_DEBUG_ENDPOINT_AUTH.
func (s *Server) serveDebug(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer, first *discovery.DiscoveryRequest) error {
	who, ok := stream.Context().Value(identityKey{}).(Identity)
	if !ok {
		return status.Error(codes.Unauthenticated, "debug types are served on the TLS port (15012) to a caller with a service account token")
	}
	scope := who.Namespace
	if s.SystemNamespace != "" && who.Namespace == s.SystemNamespace {
		scope = ""
	}
	s.Log.Info("debug client connected", "caller", who.String(), "type", first.GetTypeUrl())
	cp, _ := json.Marshal(s.Instance)
	var (
		answered  int    // nonces are 1..answered
		lastURL   string // what the last answer answered
		lastNames []string
		next      time.Time
	)
	for r := first; ; {
		url := r.GetTypeUrl()
		if !strings.HasPrefix(url, debugPrefix) {
			return status.Errorf(codes.InvalidArgument, "a debug stream serves %s* only, not %q", debugPrefix, url)
		}
		// The acknowledgement of an answer (its nonce, the same question)
		// asks nothing new.
		n, err := strconv.Atoi(r.GetResponseNonce())
		ack := err == nil && n >= 1 && n <= answered && url == lastURL && slices.Equal(r.GetResourceNames(), lastNames)
		if !ack {
			// One answer at a time, at most debugRate a second: each walks
			// every proxy or marshals one's whole configuration.
			if wait := time.Until(next); wait > 0 {
				select {
				case <-time.After(wait):
				case <-stream.Context().Done():
					return nil
				}
			}
			next = time.Now().Add(time.Second / debugRate)
			res, err := s.debug(url, r.GetResourceNames(), scope)
			if err != nil {
				return err
			}
			answered++
			if err := stream.Send(&discovery.DiscoveryResponse{TypeUrl: url, VersionInfo: time.Now().UTC().Format(time.RFC3339Nano),
				Nonce: strconv.Itoa(answered), Resources: res, ControlPlane: &core.ControlPlane{Identifier: string(cp)}}); err != nil {
				return err
			}
			lastURL, lastNames = url, slices.Clone(r.GetResourceNames())
		}
		if r, err = stream.Recv(); err != nil {
			return streamEnd(err)
		}
	}
}

// debugRate bounds the answers of one debug stream per second.
const debugRate = 10

// debug is the answer to one debug request; scope "" sees every proxy.
func (s *Server) debug(url string, names []string, scope string) ([]*anypb.Any, error) {
	switch url {
	case TypeDebugSyncz:
		return s.syncz(scope)
	case TypeDebugConfigDump:
		if len(names) != 1 {
			return nil, status.Errorf(codes.InvalidArgument, "%s names exactly one proxy (POD.NAMESPACE), not %d", url, len(names))
		}
		// Like istiod: an unknown proxy (or one of another namespace) is an
		// empty answer, the client says it found no config dump.
		return s.configDump(names[0], scope), nil
	}
	return nil, status.Errorf(codes.InvalidArgument, "unknown debug type %q: the debug types are %s and %s", url, TypeDebugSyncz, TypeDebugConfigDump)
}

// istioID is istiod's proxy ID: POD.NAMESPACE.
func istioID(p *proxy) string {
	if p.Pod == "" {
		return p.ID
	}
	return p.Pod + "." + p.Namespace
}

// syncz is every proxy in scope as Envoy's CSDS ClientConfig, the node
// carrying istiod's metadata keys. Only proxies that proved who they are
// (the TLS port): on 15010 a node could pose as any pod.
func (s *Server) syncz(scope string) ([]*anypb.Any, error) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.proxies))
	for k, st := range s.proxies {
		if st.proxy.identity != nil && (scope == "" || st.proxy.Namespace == scope) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	ccs := make([]*statusv3.ClientConfig, 0, len(keys))
	for _, k := range keys {
		st := s.proxies[k]
		md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": st.proxy.ClusterID, "NAMESPACE": st.proxy.Namespace, "ISTIO_VERSION": st.proxy.IstioVersion})
		cc := &statusv3.ClientConfig{Node: &core.Node{Id: istioID(st.proxy), Metadata: md}}
		sy := st.sync
		sy.mu.Lock()
		urls := make([]string, 0, len(sy.sent))
		for u := range sy.sent {
			urls = append(urls, u)
		}
		sort.Strings(urls)
		for _, u := range urls {
			x := &statusv3.ClientConfig_GenericXdsConfig{TypeUrl: u, ConfigStatus: sy.configStatus(u)}
			if t, ok := sy.sentAt[u]; ok {
				x.LastUpdated = timestamppb.New(t)
			}
			if e := sy.nack[u]; e != "" {
				x.ErrorState = &adminv3.UpdateFailureState{Details: e}
			}
			cc.GenericXdsConfigs = append(cc.GenericXdsConfigs, x)
		}
		sy.mu.Unlock()
		ccs = append(ccs, cc)
	}
	s.mu.Unlock()
	out := make([]*anypb.Any, 0, len(ccs))
	for _, cc := range ccs {
		a, err := anypb.New(cc)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// configStatus is istiod's reading of a type's state for a proxy; st.mu
// is held.
func (st *syncState) configStatus(url string) statusv3.ConfigStatus {
	switch {
	case st.nack[url] != "":
		return statusv3.ConfigStatus_ERROR
	case st.sent[url] == "":
		return statusv3.ConfigStatus_NOT_SENT
	case st.acked[url] == st.sent[url]:
		return statusv3.ConfigStatus_SYNCED
	}
	return statusv3.ConfigStatus_STALE
}

// configDump is the clusters, listeners and routes of the snapshot the
// named (authenticated) proxy was last given, as the dynamic sections of Envoy's config
// dump (the proxy's /config_dump shows the same when it is in sync).
// Secrets and endpoints are left out: istioctl compares neither, and a
// gateway's secrets hold private keys.
func (s *Server) configDump(name, scope string) []*anypb.Any {
	s.mu.Lock()
	var snap *snapshot
	first := "" // the same proxy in two clusters: the first key, always
	for k, st := range s.proxies {
		if st.proxy.identity != nil && istioID(st.proxy) == name && (scope == "" || st.proxy.Namespace == scope) && st.snap != nil && (first == "" || k < first) {
			first, snap = k, st.snap
		}
	}
	s.mu.Unlock()
	if snap == nil {
		return nil
	}
	// ordered is a type's resources of the snapshot, by name as the
	// proxy's own dump lists them.
	ordered := func(url string) (names []string, anys []*anypb.Any) {
		rs := snap.GetResourcesAndTTL(url)
		for _, n := range slices.Sorted(maps.Keys(rs)) {
			if m, err := s.anys.marshalled(rs[n].Resource); err == nil {
				names, anys = append(names, n), append(anys, m.any)
			}
		}
		return names, anys
	}
	cv, lv, rv := snap.GetVersion(resource.ClusterType), snap.GetVersion(resource.ListenerType), snap.GetVersion(resource.RouteType)
	clusters := &adminv3.ClustersConfigDump{VersionInfo: cv}
	_, anys := ordered(resource.ClusterType)
	for _, a := range anys {
		clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: cv, Cluster: a})
	}
	listeners := &adminv3.ListenersConfigDump{VersionInfo: lv}
	names, anys := ordered(resource.ListenerType)
	for i, a := range anys {
		listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{Name: names[i],
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: lv, Listener: a}})
	}
	routes := &adminv3.RoutesConfigDump{}
	_, anys = ordered(resource.RouteType)
	for _, a := range anys {
		routes.DynamicRouteConfigs = append(routes.DynamicRouteConfigs, &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: rv, RouteConfig: a})
	}
	var out []*anypb.Any
	for _, m := range []proto.Message{clusters, listeners, routes} {
		if a, err := anypb.New(m); err == nil {
			out = append(out, a)
		}
	}
	return out
}
