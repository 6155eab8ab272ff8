package proxyview

import (
	"fmt"
	"sort"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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

// destinationRules indexes the DestinationRules that apply to services,
// for a proxy of namespace client ("" when its namespace has no rule for
// another namespace's host: see ForeignRules), by the host they name
// (short hosts resolve in the rule's namespace), in Istio's order: a rule
// of the proxy's namespace, else of the service's namespace, else of the
// root namespace; the oldest of each wins. A rule of a third namespace
// applies to its own namespace's proxies alone, so no namespace sets
// another's TLS or load balancing.
func destinationRules(cfg Config, domain, root, client string, services []*registry.Service) map[string]*networkingv1.DestinationRule {
	out := map[string]*networkingv1.DestinationRule{}
	if cfg == nil {
		return out
	}
	owner := make(map[string]string, len(services))
	for _, svc := range services {
		owner[svc.Hostname] = svc.Namespace
	}
	rules := oldestFirst(cfg.DestinationRules())
	for pass := range 3 {
		for _, dr := range rules {
			host := Qualify(dr.Spec.GetHost(), dr.Namespace, domain)
			ns, known := owner[host]
			if _, taken := out[host]; taken || !known {
				continue
			}
			if pass == 0 && client != "" && dr.Namespace == client || pass == 1 && dr.Namespace == ns || pass == 2 && dr.Namespace == root {
				out[host] = dr
			}
		}
	}
	return out
}

// ForeignRules says whether a namespace has DestinationRules for hosts of
// other namespaces (Istio's egress tasks put one for the egress gateway
// in the client's namespace): its proxies then see rules others do not,
// and get views of their own.
func ForeignRules(cfg Config, ns, domain string) bool {
	if cfg == nil {
		return false
	}
	for _, dr := range cfg.DestinationRules() {
		if dr.Namespace != ns {
			continue
		}
		host := Qualify(dr.Spec.GetHost(), dr.Namespace, domain)
		if !strings.HasSuffix(host, "."+ns+".svc."+domain) {
			return true
		}
	}
	return false
}

// trafficPolicy is a DestinationRule's policy for one port: the top-level
// one with the port's portLevelSettings over it.
type trafficPolicy struct {
	lb      *apinetworking.LoadBalancerSettings
	outlier *apinetworking.OutlierDetection
	pool    *apinetworking.ConnectionPoolSettings
	// locality is the locality load-balancing setting in force: Istio's
	// is on mesh-wide unless a rule turns it off, and orders endpoints by
	// proximity only with outlier detection (to tell a failing locality).
	locality *apinetworking.LocalityLoadBalancerSetting
	// failover are its failoverPriority labels isthmus compares.
	failover []string
	// tls is the rule's client TLS (nil: Istio's auto mTLS).
	tls *apinetworking.ClientTLSSettings
	// rule names the DestinationRule in the cluster's metadata (nil: none).
	rule *core.Metadata
}

func policyFor(dr *networkingv1.DestinationRule, port int32, warn func(string)) trafficPolicy {
	var tp trafficPolicy
	if dr == nil {
		return tp
	}
	where := fmt.Sprintf("DestinationRule %s/%s", dr.Namespace, dr.Name)
	tp.rule = configMetadata("destination-rule", dr.Namespace, dr.Name)
	top := dr.Spec.GetTrafficPolicy()
	tp.tls = top.GetTls()
	if cp := top.GetConnectionPool(); cp.GetHttp().GetMaxRequestsPerConnection() > 0 || cp.GetTcp().GetTcpKeepalive() != nil {
		warn(where + ": connectionPool maxRequestsPerConnection and tcpKeepalive are not supported; ignored")
	}
	tp.lb, tp.outlier, tp.pool = top.GetLoadBalancer(), top.GetOutlierDetection(), top.GetConnectionPool()
	for _, pl := range top.GetPortLevelSettings() {
		if int32(pl.GetPort().GetNumber()) == port {
			tp.portLevel(pl)
		}
	}
	tp.resolve(where, warn)
	return tp
}

// portLevel applies a port's settings as Istio's MergeTrafficPolicy: they
// replace the rule's wholesale, so a field the port omits is the default
// (auto mTLS, round robin), not the rule's.
func (tp *trafficPolicy) portLevel(pl *apinetworking.TrafficPolicy_PortTrafficPolicy) {
	tp.lb, tp.outlier, tp.pool, tp.tls = pl.GetLoadBalancer(), pl.GetOutlierDetection(), pl.GetConnectionPool(), pl.GetTls()
}

// resolve decides what depends on the merged load-balancer settings (after
// port and subset settings): the locality setting in force, and warnings
// for what isthmus does not do.
func (tp *trafficPolicy) resolve(where string, warn func(string)) {
	tp.locality, tp.failover = nil, nil
	if ch := tp.lb.GetConsistentHash(); ch != nil {
		if ch.GetHttpCookie().GetTtl() != nil {
			warn(where + ": consistentHash.httpCookie.ttl (generating the cookie) is not supported; requests without the cookie are balanced as usual")
		}
		if ch.GetMinimumRingSize() > 0 || ch.GetRingHash().GetMinimumRingSize() > 0 || ch.GetMaglev().GetTableSize() > 0 {
			warn(where + ": consistentHash ringHash.minimumRingSize and maglev.tableSize are not supported; the ring has 160 points per unit of endpoint weight")
		}
	}
	ls := tp.lb.GetLocalityLbSetting()
	if ls != nil && ls.GetEnabled() != nil && !ls.GetEnabled().GetValue() {
		return
	}
	if ls == nil {
		ls = &apinetworking.LocalityLoadBalancerSetting{}
	}
	if len(ls.GetDistribute()) == 0 && tp.outlier == nil {
		return // failover needs outlier detection, as in Istio
	}
	for _, l := range ls.GetFailoverPriority() {
		if l != labelNetwork && l != labelCluster {
			warn(where + ": failoverPriority label " + l + " is not supported (" + labelNetwork + " and " + labelCluster + " are); ignored")
			continue
		}
		tp.failover = append(tp.failover, l)
	}
	tp.locality = ls
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
			if stp.GetTls() != nil {
				tp.tls = stp.GetTls()
			}
			for _, pl := range stp.GetPortLevelSettings() {
				if int32(pl.GetPort().GetNumber()) == port {
					tp.portLevel(pl)
				}
			}
		}
		if ss.GetTrafficPolicy() != nil {
			tp.resolve(fmt.Sprintf("DestinationRule %s/%s subset %s", dr.Namespace, dr.Name, ss.GetName()), warn)
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

// upgradeH2 is Istio's h2UpgradePolicy UPGRADE: an http port's requests
// go to the service's sidecars over HTTP/2 (its sidecar hands them to the
// app as HTTP/1.1). The mesh-wide default is DO_NOT_UPGRADE.
func (tp trafficPolicy) upgradeH2(appProtocol string) bool {
	return appProtocol == "http" && tp.pool.GetHttp().GetH2UpgradePolicy() == apinetworking.ConnectionPoolSettings_HTTPSettings_UPGRADE
}

// apply sets the cluster's load balancing and outlier detection.
func (tp trafficPolicy) apply(c *cluster.Cluster) {
	switch tp.lb.GetSimple() {
	case apinetworking.LoadBalancerSettings_LEAST_REQUEST:
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	case apinetworking.LoadBalancerSettings_RANDOM:
		c.LbPolicy = cluster.Cluster_RANDOM
	}
	if ch := tp.lb.GetConsistentHash(); ch != nil {
		c.LbPolicy = cluster.Cluster_RING_HASH
		if ch.GetMaglev() != nil {
			c.LbPolicy = cluster.Cluster_MAGLEV
		}
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

// priority is an endpoint's failover rank for a proxy, as Istio ranks
// them: first by failoverPriority labels (0 when the endpoint matches the
// proxy on every label, one more for each label, from the last, it does
// not), then by locality: same subzone, zone, region, a region the
// rule's failover names for the proxy's region, anywhere else. Ranks are
// made contiguous by the caller (Envoy's priorities do not skip).
func (tp trafficPolicy) priority(p *Proxy, e network.LbEndpoint) uint32 {
	ls := tp.locality
	if ls == nil || len(ls.GetDistribute()) > 0 {
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
	rank := uint32(len(tp.failover)-matched) * 5
	pl, el := p.Locality, e.Locality
	switch {
	case pl.Region == "":
		// A proxy of unknown locality ranks by labels alone.
	case el.Region == pl.Region && el.Zone == pl.Zone && el.Subzone == pl.Subzone:
	case el.Region == pl.Region && el.Zone == pl.Zone:
		rank++
	case el.Region == pl.Region:
		rank += 2
	case failoverTo(ls, pl.Region, el.Region):
		rank += 3
	default:
		rank += 4
	}
	return rank
}

// failoverTo reports whether the rule sends the traffic of region from to
// region to when from has no healthy endpoint.
func failoverTo(ls *apinetworking.LocalityLoadBalancerSetting, from, to string) bool {
	for _, f := range ls.GetFailover() {
		if f.GetFrom() == from && f.GetTo() == to {
			return true
		}
	}
	return false
}

// distribute applies the first `distribute` rule whose `from` matches the
// proxy's locality: each endpoint's weight becomes its share of the
// weight of the first `to` locality pattern it matches, divided among the
// localities that pattern matches (Envoy's locality-weighted balancing,
// folded into endpoint weights); endpoints no pattern matches get no
// traffic.
func (tp trafficPolicy) distribute(p *Proxy, eps []network.LbEndpoint) []network.LbEndpoint {
	if tp.locality == nil || len(tp.locality.GetDistribute()) == 0 || p.Locality.Region == "" {
		return eps
	}
	var rule *apinetworking.LocalityLoadBalancerSetting_Distribute
	for _, d := range tp.locality.GetDistribute() {
		if localityMatches(d.GetFrom(), p.Locality) {
			rule = d
			break
		}
	}
	if rule == nil {
		return eps
	}
	patterns := make([]string, 0, len(rule.GetTo()))
	for pat := range rule.GetTo() {
		patterns = append(patterns, pat)
	}
	// Most specific first, so "us-east/zone1/*" wins over "us-east/*".
	sort.Slice(patterns, func(i, j int) bool {
		if len(patterns[i]) != len(patterns[j]) {
			return len(patterns[i]) > len(patterns[j])
		}
		return patterns[i] < patterns[j]
	})
	patternOf := func(l registry.Locality) string {
		for _, pat := range patterns {
			if localityMatches(pat, l) {
				return pat
			}
		}
		return ""
	}
	// Endpoint weight totals per locality, and localities per pattern.
	total := map[registry.Locality]uint32{}
	localities := map[string]map[registry.Locality]bool{}
	for _, e := range eps {
		pat := patternOf(e.Locality)
		if pat == "" {
			continue
		}
		total[e.Locality] += e.Weight
		if localities[pat] == nil {
			localities[pat] = map[registry.Locality]bool{}
		}
		localities[pat][e.Locality] = true
	}
	var out []network.LbEndpoint
	for _, e := range eps {
		pat := patternOf(e.Locality)
		if pat == "" || rule.GetTo()[pat] == 0 {
			continue
		}
		// The locality's share in thousandths (weights are percentages),
		// split by endpoint weight.
		share := float64(rule.GetTo()[pat]) * 10 / float64(len(localities[pat]))
		e.Weight = max(uint32(share*float64(e.Weight)/float64(total[e.Locality])+0.5), 1)
		out = append(out, e)
	}
	return out
}

// localityMatches applies Istio's locality pattern region/zone/subzone,
// where "*" matches anything and missing parts match everything.
func localityMatches(pattern string, l registry.Locality) bool {
	parts := strings.SplitN(pattern, "/", 3)
	have := []string{l.Region, l.Zone, l.Subzone}
	for i, part := range parts {
		if part != "*" && part != have[i] {
			return false
		}
	}
	return true
}

// hashPolicy is a route's hash policy toward a consistent-hash destination
// (Envoy's, as Istio sets it from consistentHash); nil for other policies.
func hashPolicy(lb *apinetworking.LoadBalancerSettings) []*route.RouteAction_HashPolicy {
	ch := lb.GetConsistentHash()
	if ch == nil {
		return nil
	}
	var hp *route.RouteAction_HashPolicy
	switch {
	case ch.GetHttpHeaderName() != "":
		hp = &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{Header: &route.RouteAction_HashPolicy_Header{HeaderName: ch.GetHttpHeaderName()}}}
	case ch.GetHttpCookie() != nil:
		hp = &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_Cookie_{Cookie: &route.RouteAction_HashPolicy_Cookie{
			Name: ch.GetHttpCookie().GetName(), Path: ch.GetHttpCookie().GetPath()}}}
	case ch.GetHttpQueryParameterName() != "":
		hp = &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &route.RouteAction_HashPolicy_QueryParameter{Name: ch.GetHttpQueryParameterName()}}}
	case ch.GetUseSourceIp():
		hp = &route.RouteAction_HashPolicy{PolicySpecifier: &route.RouteAction_HashPolicy_ConnectionProperties_{ConnectionProperties: &route.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	default:
		return nil
	}
	return []*route.RouteAction_HashPolicy{hp}
}

// hashPolicies resolves a destination (host, port) to its hash policy.
func hashPolicies(drs map[string]*networkingv1.DestinationRule) func(host string, port int32) []*route.RouteAction_HashPolicy {
	return func(host string, port int32) []*route.RouteAction_HashPolicy {
		dr := drs[host]
		if dr == nil {
			return nil
		}
		return hashPolicy(policyFor(dr, port, func(string) {}).lb)
	}
}
