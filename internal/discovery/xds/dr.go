package xds

import (
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Labels failoverPriority compares between a proxy and an endpoint.
const (
	labelNetwork = "topology.istio.io/network"
	labelCluster = "topology.istio.io/cluster"
)

// destinationRules indexes DestinationRules by the service host they name
// (short hosts resolve in the rule's namespace); the oldest wins a host.
func destinationRules(cfg Config, domain string) map[string]*networkingv1.DestinationRule {
	if cfg == nil {
		return map[string]*networkingv1.DestinationRule{}
	}
	return indexByHost(cfg.DestinationRules(), func(dr *networkingv1.DestinationRule) []string { return []string{dr.Spec.GetHost()} }, domain)
}

// trafficPolicy is a DestinationRule's policy for one port: the top-level
// one with the port's portLevelSettings over it.
type trafficPolicy struct {
	lb       *apinetworking.LoadBalancerSettings
	outlier  *apinetworking.OutlierDetection
	pool     *apinetworking.ConnectionPoolSettings
	failover []string // failoverPriority labels; nil: no locality failover
}

func policyFor(dr *networkingv1.DestinationRule, port int32, warn func(string)) trafficPolicy {
	var tp trafficPolicy
	if dr == nil {
		return tp
	}
	where := fmt.Sprintf("DestinationRule %s/%s", dr.Namespace, dr.Name)
	top := dr.Spec.GetTrafficPolicy()
	if top.GetTls() != nil && top.GetTls().GetMode() != apinetworking.ClientTLSSettings_ISTIO_MUTUAL {
		warn(where + ": tls modes other than ISTIO_MUTUAL are not supported; ignored")
	}
	if cp := top.GetConnectionPool(); cp.GetHttp().GetMaxRequestsPerConnection() > 0 || cp.GetHttp().GetIdleTimeout() != nil || cp.GetTcp().GetTcpKeepalive() != nil || cp.GetHttp().GetH2UpgradePolicy() != 0 {
		warn(where + ": connectionPool maxRequestsPerConnection, idleTimeout, tcpKeepalive and h2UpgradePolicy are not supported; ignored")
	}
	tp.lb, tp.outlier, tp.pool = top.GetLoadBalancer(), top.GetOutlierDetection(), top.GetConnectionPool()
	for _, pl := range top.GetPortLevelSettings() {
		if int32(pl.GetPort().GetNumber()) != port {
			continue
		}
		if pl.GetLoadBalancer() != nil {
			tp.lb = pl.GetLoadBalancer()
		}
		if pl.GetOutlierDetection() != nil {
			tp.outlier = pl.GetOutlierDetection()
		}
		if pl.GetConnectionPool() != nil {
			tp.pool = pl.GetConnectionPool()
		}
	}
	if tp.lb.GetConsistentHash() != nil {
		warn(where + ": consistentHash load balancing is not supported; round robin is used")
	}
	if ls := tp.lb.GetLocalityLbSetting(); ls != nil && (ls.GetEnabled() == nil || ls.GetEnabled().GetValue()) {
		if len(ls.GetFailover()) > 0 || len(ls.GetDistribute()) > 0 {
			warn(where + ": localityLbSetting failover and distribute are not supported (failoverPriority is); ignored")
		}
		// As in Istio, locality failover needs outlier detection to tell
		// a failing locality.
		if tp.outlier != nil {
			tp.failover = []string{}
			for _, l := range ls.GetFailoverPriority() {
				if l != labelNetwork && l != labelCluster {
					warn(where + ": failoverPriority label " + l + " is not supported (" + labelNetwork + " and " + labelCluster + " are); ignored")
					continue
				}
				tp.failover = append(tp.failover, l)
			}
		}
	}
	return tp
}

// subset is one DestinationRule subset: the endpoints whose labels match,
// with its own traffic policy over the rule's.
type subset struct {
	name   string
	labels map[string]string
	tp     trafficPolicy
}

// subsetsOf lists a rule's subsets for a port.
func subsetsOf(dr *networkingv1.DestinationRule, port int32, base trafficPolicy, warn func(string)) []subset {
	if dr == nil {
		return nil
	}
	var out []subset
	for _, ss := range dr.Spec.GetSubsets() {
		if ss.GetName() == "" {
			continue
		}
		tp := base
		if stp := ss.GetTrafficPolicy(); stp != nil {
			if stp.GetLoadBalancer() != nil {
				tp.lb = stp.GetLoadBalancer()
			}
			if stp.GetOutlierDetection() != nil {
				tp.outlier = stp.GetOutlierDetection()
			}
			if stp.GetConnectionPool() != nil {
				tp.pool = stp.GetConnectionPool()
			}
			for _, pl := range stp.GetPortLevelSettings() {
				if int32(pl.GetPort().GetNumber()) == port {
					if pl.GetLoadBalancer() != nil {
						tp.lb = pl.GetLoadBalancer()
					}
					if pl.GetOutlierDetection() != nil {
						tp.outlier = pl.GetOutlierDetection()
					}
				}
			}
		}
		out = append(out, subset{name: ss.GetName(), labels: ss.GetLabels(), tp: tp})
	}
	return out
}

// matches says whether an endpoint's workload carries the subset's labels.
func (s subset) matches(e registry.Endpoint) bool {
	for k, v := range s.labels {
		if e.Labels[k] != v {
			return false
		}
	}
	return true
}

// apply sets the cluster's load balancing and outlier detection.
func (tp trafficPolicy) apply(c *cluster.Cluster) {
	switch tp.lb.GetSimple() {
	case apinetworking.LoadBalancerSettings_LEAST_REQUEST:
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	case apinetworking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = cluster.Cluster_RANDOM
	}
	if p := tp.pool; p != nil {
		if d := p.GetTcp().GetConnectTimeout(); d != nil {
			c.ConnectTimeout = durationpb.New(d.AsDuration())
		}
		th := &cluster.CircuitBreakers_Thresholds{}
		if v := p.GetTcp().GetMaxConnections(); v > 0 {
			th.MaxConnections = wrapperspb.UInt32(uint32(v))
		}
		if v := p.GetHttp().GetHttp1MaxPendingRequests(); v > 0 {
			th.MaxPendingRequests = wrapperspb.UInt32(uint32(v))
		}
		if v := p.GetHttp().GetHttp2MaxRequests(); v > 0 {
			th.MaxRequests = wrapperspb.UInt32(uint32(v))
		}
		if v := p.GetHttp().GetMaxRetries(); v > 0 {
			th.MaxRetries = wrapperspb.UInt32(uint32(v))
		}
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{th}}
	}
	if o := tp.outlier; o != nil {
		od := &cluster.OutlierDetection{
			Interval:         durationpb.New(10 * 1e9),
			BaseEjectionTime: durationpb.New(30 * 1e9),
			// Istio's default caps ejection at 10% (Envoy still ejects one).
			MaxEjectionPercent:                 wrapperspb.UInt32(10),
			EnforcingConsecutive_5Xx:           wrapperspb.UInt32(0),
			EnforcingConsecutiveGatewayFailure: wrapperspb.UInt32(0),
		}
		if v := o.GetConsecutive_5XxErrors(); v != nil && v.GetValue() > 0 {
			od.Consecutive_5Xx, od.EnforcingConsecutive_5Xx = wrapperspb.UInt32(v.GetValue()), wrapperspb.UInt32(100)
		}
		if v := o.GetConsecutiveGatewayErrors(); v != nil && v.GetValue() > 0 {
			od.ConsecutiveGatewayFailure, od.EnforcingConsecutiveGatewayFailure = wrapperspb.UInt32(v.GetValue()), wrapperspb.UInt32(100)
		}
		if d := o.GetInterval(); d != nil {
			od.Interval = durationpb.New(d.AsDuration())
		}
		if d := o.GetBaseEjectionTime(); d != nil {
			od.BaseEjectionTime = durationpb.New(d.AsDuration())
		}
		if m := o.GetMaxEjectionPercent(); m > 0 {
			od.MaxEjectionPercent = wrapperspb.UInt32(uint32(m))
		}
		c.OutlierDetection = od
	}
}

// priority is an endpoint's failover rank for a proxy, as Istio's
// failoverPriority: 0 when it matches the proxy on every label, one more
// for each label (from the last) it does not match.
func (tp trafficPolicy) priority(p *Proxy, e network.LbEndpoint) uint32 {
	if tp.failover == nil {
		return 0
	}
	matched := 0
	for _, l := range tp.failover {
		ok := e.Network == p.Network
		if l == labelCluster {
			ok = e.Cluster == p.ClusterID
		}
		if !ok {
			break
		}
		matched++
	}
	return uint32(len(tp.failover) - matched)
}
