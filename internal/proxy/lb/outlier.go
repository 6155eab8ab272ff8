package lb

import (
	"net/netip"
	"sync"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// Result is what one request or connection to an endpoint came to, for
// outlier detection.
type Result int

// Results.
const (
	Success Result = iota
	// Failure5xx is a 500..599 answer other than a gateway error.
	Failure5xx
	// GatewayFailure is 502, 503, 504 or a failed connect.
	GatewayFailure
)

// Outliers is a proxy's passive health checking (Envoy's outlier
// detection). State is kept by cluster name and endpoint address, so it
// survives configuration updates that rebuild the endpoints.
type Outliers struct {
	mu sync.Mutex
	m  map[outlierKey]*outlierState
	// now is the clock; tests replace it.
	now func() time.Time
}

type outlierKey struct {
	cluster string
	addr    netip.AddrPort
}

type outlierState struct {
	consecutive5xx, consecutiveGateway uint32
	ejections                          uint32
	until                              time.Time
}

// NewOutliers starts with every endpoint in.
func NewOutliers() *Outliers {
	return &Outliers{m: map[outlierKey]*outlierState{}, now: time.Now}
}

// Ejected says whether an endpoint of a cluster is out right now.
func (o *Outliers) Ejected(c *config.Cluster, addr netip.AddrPort) bool {
	if c.Outlier == nil {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.m[outlierKey{c.Name, addr}]
	return s != nil && o.now().Before(s.until)
}

// Report records a result and ejects the endpoint when it crosses a
// threshold, unless the cluster already has its share of endpoints out.
func (o *Outliers) Report(c *config.Cluster, addr netip.AddrPort, r Result) {
	od := c.Outlier
	if od == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	k := outlierKey{c.Name, addr}
	s := o.m[k]
	if s == nil {
		if r == Success {
			return
		}
		s = &outlierState{}
		o.m[k] = s
	}
	now := o.now()
	switch r {
	case Success:
		s.consecutive5xx, s.consecutiveGateway = 0, 0
		return
	case GatewayFailure:
		s.consecutiveGateway++
		s.consecutive5xx++
	case Failure5xx:
		s.consecutive5xx++
		s.consecutiveGateway = 0
	}
	trip := (od.Consecutive5xx > 0 && s.consecutive5xx >= od.Consecutive5xx) ||
		(od.ConsecutiveGateway > 0 && s.consecutiveGateway >= od.ConsecutiveGateway)
	if !trip || now.Before(s.until) {
		return
	}
	ejected := 0
	for key, st := range o.m {
		if key.cluster == c.Name && now.Before(st.until) {
			ejected++
		}
	}
	total := len(c.Endpoints)
	if ejected > 0 && total > 0 && uint32(ejected+1)*100 > od.MaxEjectionPercent*uint32(total) {
		return // Envoy always allows one ejection, then keeps to the percent
	}
	s.ejections++
	s.until = now.Add(od.BaseEjection * time.Duration(s.ejections))
	s.consecutive5xx, s.consecutiveGateway = 0, 0
}

// ResultOf classifies an HTTP status.
func ResultOf(status int) Result {
	switch {
	case status == 502 || status == 503 || status == 504:
		return GatewayFailure
	case status >= 500:
		return Failure5xx
	}
	return Success
}
