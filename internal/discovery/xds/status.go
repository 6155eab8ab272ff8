package xds

import (
	"sort"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// What each proxy was sent and acknowledged: proxy-status's view.

// record notes what a stream's proxy acknowledged or rejected.
func (s *Server) record(c *adsConn, typeURL, version string, errDetail string) {
	st := c.sync
	if st == nil || typeURL == "" {
		return
	}
	st.mu.Lock()
	if at, ok := st.pending[typeURL]; ok {
		delete(st.pending, typeURL)
		if errDetail == "" {
			d := time.Since(at)
			s.converged.observe(d)
			s.convergedTime.Observe(d.Seconds())
		}
	}
	if errDetail != "" {
		st.nack[typeURL] = errDetail
		st.mu.Unlock()
		s.rejects.WithLabelValues(shortType(typeURL)).Inc()
		s.Log.Warn("proxy rejected config (NACK)", "proxy", st.id, "type", shortType(typeURL), "error", errDetail)
		return
	}
	if version != "" {
		st.acked[typeURL] = version
		delete(st.nack, typeURL)
	}
	st.mu.Unlock()
}

func (s *Server) sent(c *adsConn, typeURL, version string, snap *snapshot) {
	s.pushes.WithLabelValues(shortType(typeURL)).Inc()
	first := !c.sentTypes[typeURL]
	c.sentTypes[typeURL] = true
	st := c.sync
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	st.markSent(typeURL, version)
	// A change's convergence: the first response of each type from the
	// snapshot a push made for it, on a stream that had that type already
	// (not a reconnection), timed once per snapshot.
	if snap == st.changedSnap && !st.changed.IsZero() && !first && st.counted[typeURL] != snap {
		if st.pending == nil {
			st.pending, st.counted = map[string]time.Time{}, map[string]*snapshot{}
		}
		st.counted[typeURL] = snap
		if _, ok := st.pending[typeURL]; !ok {
			st.pending[typeURL] = st.changed
		}
	}
}

// markSent notes a type's version (or nonce) as sent now; st.mu is held.
func (st *syncState) markSent(typeURL, version string) {
	st.sent[typeURL] = version
	if st.sentAt == nil {
		st.sentAt = map[string]time.Time{}
	}
	st.sentAt[typeURL] = time.Now()
}

// upToDate notes that a stream's proxy holds a type's current resources
// without a response: it said so when it reconnected (incremental
// initial versions).
func (s *Server) upToDate(c *adsConn, typeURL, version string) {
	if st := c.sync; st != nil {
		st.mu.Lock()
		st.markSent(typeURL, version)
		st.acked[typeURL] = version
		st.mu.Unlock()
	}
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

// SyncStatus is one proxy of /debug/syncz on the monitoring port, in
// istiod's JSON (pilot's xds.SyncStatus: what Istio's istioctl version
// reads); Network and Nacked are isthmus's additions.
type SyncStatus struct {
	ClusterID     string            `json:"cluster_id,omitempty"`
	ProxyID       string            `json:"proxy,omitempty"`
	ProxyType     string            `json:"proxy_type,omitempty"`
	IstioVersion  string            `json:"istio_version,omitempty"`
	ClusterSent   string            `json:"cluster_sent,omitempty"`
	ClusterAcked  string            `json:"cluster_acked,omitempty"`
	ListenerSent  string            `json:"listener_sent,omitempty"`
	ListenerAcked string            `json:"listener_acked,omitempty"`
	RouteSent     string            `json:"route_sent,omitempty"`
	RouteAcked    string            `json:"route_acked,omitempty"`
	EndpointSent  string            `json:"endpoint_sent,omitempty"`
	EndpointAcked string            `json:"endpoint_acked,omitempty"`
	Network       string            `json:"network,omitempty"`
	Nacked        map[string]string `json:"nacked,omitempty"`
}

// Syncz lists every connected proxy with what it was sent and
// acknowledged, in istiod's /debug/syncz form.
func (s *Server) Syncz() []SyncStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SyncStatus, 0, len(s.proxies))
	for _, st := range s.proxies {
		sy := st.sync
		sy.mu.Lock()
		ss := SyncStatus{ClusterID: st.proxy.ClusterID, ProxyID: istioID(st.proxy), ProxyType: st.proxy.Type, IstioVersion: st.proxy.IstioVersion,
			ClusterSent: sy.sent[resource.ClusterType], ClusterAcked: sy.acked[resource.ClusterType],
			ListenerSent: sy.sent[resource.ListenerType], ListenerAcked: sy.acked[resource.ListenerType],
			RouteSent: sy.sent[resource.RouteType], RouteAcked: sy.acked[resource.RouteType],
			EndpointSent: sy.sent[resource.EndpointType], EndpointAcked: sy.acked[resource.EndpointType],
			Network: st.proxy.Network}
		for k, v := range sy.nack {
			if ss.Nacked == nil {
				ss.Nacked = map[string]string{}
			}
			ss.Nacked[shortType(k)] = v
		}
		sy.mu.Unlock()
		out = append(out, ss)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ClusterID != out[j].ClusterID {
			return out[i].ClusterID < out[j].ClusterID
		}
		return out[i].ProxyID < out[j].ProxyID
	})
	return out
}
