package xds

import (
	"sort"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// What each proxy was sent and acknowledged: proxy-status's view.

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
