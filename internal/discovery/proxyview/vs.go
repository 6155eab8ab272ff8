package proxyview

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/httpfield"
)

// corsFilterName is Envoy's CORS filter, first in outbound HTTP managers
// as in Istio's; routes carry their corsPolicy as its per-route config.
const corsFilterName = "envoy.filters.http.cors"

func corsFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: corsFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&corsv3.Cors{})}}
}

// corsPolicy is Istio's CorsPolicy as Envoy's per-route one, as Istio
// translates it (allowOrigins, else the deprecated allowOrigin as exact
// origins; lists joined by commas; maxAge in seconds; unmatchedPreflights
// FORWARD, the default, forwards preflights of other origins).
func corsPolicy(in *apinetworking.CorsPolicy, warn func(string)) *corsv3.CorsPolicy {
	if in == nil {
		return nil
	}
	tokens := func(what string, l []string) string {
		var ok []string
		for _, t := range l {
			if httpfield.IsToken(t) || t == "*" {
				ok = append(ok, t)
			} else {
				warn(fmt.Sprintf("corsPolicy.%s: %q is not an HTTP token; left out", what, t))
			}
		}
		return strings.Join(ok, ",")
	}
	out := &corsv3.CorsPolicy{AllowMethods: tokens("allowMethods", in.GetAllowMethods()), AllowHeaders: tokens("allowHeaders", in.GetAllowHeaders()),
		ExposeHeaders: tokens("exposeHeaders", in.GetExposeHeaders()), AllowCredentials: in.GetAllowCredentials(),
		ForwardNotMatchingPreflights: wrapperspb.Bool(in.GetUnmatchedPreflights() != apinetworking.CorsPolicy_IGNORE)}
	for _, o := range in.GetAllowOrigins() {
		if sm := stringMatch(o); sm != nil {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, sm)
		}
	}
	if len(in.GetAllowOrigins()) == 0 {
		for _, o := range in.GetAllowOrigin() {
			out.AllowOriginStringMatch = append(out.AllowOriginStringMatch, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o}})
		}
	}
	if in.GetMaxAge() != nil {
		out.MaxAge = strconv.FormatInt(in.GetMaxAge().GetSeconds(), 10)
	}
	return out
}

// faultFilter sits before the router in outbound HTTP managers so that
// routes can carry a fault (Envoy applies per-route fault config only
// where the filter is present, as Istio configures it).
func faultFilter() *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: "envoy.filters.http.fault", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})}}
}

// Qualify resolves a host written in an Istio object of namespace ns, as
// Istio does: name -> name.ns.svc.domain, name.other -> name.other.svc.domain.
func Qualify(host, ns, domain string) string {
	switch strings.Count(host, ".") {
	case 0:
		return host + "." + ns + ".svc." + domain
	case 1:
		return host + ".svc." + domain
	}
	if strings.HasSuffix(host, ".svc") {
		return host + "." + domain
	}
	return host
}

// meshVirtualServices indexes the VirtualServices that apply to sidecars
// (no gateways, or "mesh" among them) and have the routes that matter
// (has) by the service host they name; the oldest wins a host, as in Istio.
func meshVirtualServices(vss []*networkingv1.VirtualService, domain string, has func(*networkingv1.VirtualService) bool) map[string]*networkingv1.VirtualService {
	var mesh []*networkingv1.VirtualService
	for _, vs := range vss {
		if gws := vs.Spec.GetGateways(); (len(gws) == 0 || slices.Contains(gws, "mesh")) && has(vs) {
			mesh = append(mesh, vs)
		}
	}
	return indexByHost(mesh, func(vs *networkingv1.VirtualService) []string { return vs.Spec.GetHosts() }, domain)
}

// oldestFirst orders Istio objects as Istio resolves conflicts between
// them: oldest first, then by namespace and name.
func oldestFirst[T metav1.Object](objs []T) []T {
	sorted := slices.Clone(objs)
	sort.SliceStable(sorted, func(i, j int) bool {
		a, b := sorted[i], sorted[j]
		ta, tb := a.GetCreationTimestamp(), b.GetCreationTimestamp()
		if !ta.Equal(&tb) {
			return ta.Before(&tb)
		}
		return a.GetNamespace()+"/"+a.GetName() < b.GetNamespace()+"/"+b.GetName()
	})
	return sorted
}

// indexByHost maps every service host the objects name (short hosts
// resolved in each object's namespace) to the oldest object naming it.
func indexByHost[T metav1.Object](objs []T, hosts func(T) []string, domain string) map[string]T {
	out := map[string]T{}
	for _, o := range oldestFirst(objs) {
		for _, h := range hosts(o) {
			q := Qualify(h, o.GetNamespace(), domain)
			if _, taken := out[q]; !taken {
				out[q] = o
			}
		}
	}
	return out
}

// routeScope is where a VirtualService's http routes are applied: the
// gateway ("mesh" for sidecars, else namespace/name), the port a match's
// port field compares with, and the port of a destination that names none.
type routeScope struct {
	gateway string
	// namespace is the proxies' the routes are for (a match's
	// sourceNamespace).
	namespace string
	port      int32
	// destPort resolves a destination without port; 0 means unresolved.
	destPort func(host string) int32
	// hash gives a destination's hash policy (consistentHash); may be nil.
	hash func(host string, port int32) []*route.RouteAction_HashPolicy
}

// resolve is a destination's qualified host and its port: its own, else
// the service's (0: unresolved).
func (s routeScope) resolve(dst *apinetworking.Destination, ns, domain string) (string, int32) {
	host := Qualify(dst.GetHost(), ns, domain)
	if p := int32(dst.GetPort().GetNumber()); p != 0 {
		return host, p
	}
	return host, s.destPort(host)
}

// meshScope is a sidecar's view of one service port.
func meshScope(namespace string, port int32, hash func(string, int32) []*route.RouteAction_HashPolicy) routeScope {
	return routeScope{gateway: "mesh", namespace: namespace, port: port, destPort: func(string) int32 { return port }, hash: hash}
}

// vsRoutes turns a VirtualService's http routes into the routes of one
// virtual host, in order; requests no route matches get 404, as with
// Istio. What isthmus does not do is reported through warn.
func vsRoutes(vs *networkingv1.VirtualService, scope routeScope, domain string, warn func(string)) []*route.Route {
	var out []*route.Route
	where := fmt.Sprintf("VirtualService %s/%s", vs.Namespace, vs.Name)
	md := configMetadata("virtual-service", vs.Namespace, vs.Name)
	for i, hr := range vs.Spec.GetHttp() {
		name := hr.GetName()
		if name == "" {
			name = strconv.Itoa(i)
		}
		if hr.GetDelegate() != nil {
			warn(where + " http[" + name + "]: delegate is not supported; route skipped")
			continue
		}
		rwarn := func(m string) { warn(where + " http[" + name + "]: " + m) }
		hwarn := func(m string) { rwarn("headers: " + m) }
		// The route's header operations, the same for each of its matches.
		req, resp := hr.GetHeaders().GetRequest(), hr.GetHeaders().GetResponse()
		reqAdd, reqRemove := headersToAdd(req, hwarn), headersToRemove(req, hwarn)
		respAdd, respRemove := headersToAdd(resp, hwarn), headersToRemove(resp, hwarn)
		// What the route does: a redirect or a direct answer (Istio ignores
		// the destinations then), else forward.
		var act func() *route.Route
		switch {
		case hr.GetRedirect() != nil:
			rd := redirectAction(hr.GetRedirect(), scope.port)
			if rd == nil {
				rwarn("redirectCode " + strconv.Itoa(int(hr.GetRedirect().GetRedirectCode())) + " is not one of 301, 302, 303, 307, 308; route skipped")
				continue
			}
			act = func() *route.Route { return &route.Route{Action: &route.Route_Redirect{Redirect: rd}} }
		case hr.GetDirectResponse() != nil:
			dr := directResponse(hr.GetDirectResponse())
			act = func() *route.Route { return &route.Route{Action: &route.Route_DirectResponse{DirectResponse: dr}} }
		default:
			action, one := routeAction(hr, scope, vs.Namespace, domain, rwarn)
			if action == nil {
				continue
			}
			if one != nil {
				// As Istio: one destination's headers follow the route's own.
				reqAdd, reqRemove = append(reqAdd, one.RequestHeadersToAdd...), append(reqRemove, one.RequestHeadersToRemove...)
				respAdd, respRemove = append(respAdd, one.ResponseHeadersToAdd...), append(respRemove, one.ResponseHeadersToRemove...)
			}
			act = func() *route.Route { return &route.Route{Action: &route.Route_Route{Route: action}} }
		}
		var perFilter map[string]*anypb.Any
		if f := fault(hr.GetFault()); f != nil {
			perFilter = map[string]*anypb.Any{"envoy.filters.http.fault": mustAny(f)}
		}
		if c := corsPolicy(hr.GetCorsPolicy(), rwarn); c != nil {
			if perFilter == nil {
				perFilter = map[string]*anypb.Any{}
			}
			perFilter[corsFilterName] = mustAny(c)
		}
		matches := hr.GetMatch()
		if len(matches) == 0 {
			matches = []*apinetworking.HTTPMatchRequest{nil}
		}
		for j, m := range matches {
			if m != nil && m.GetPort() != 0 && int32(m.GetPort()) != scope.port {
				continue
			}
			if m != nil && len(m.GetGateways()) > 0 && !slices.ContainsFunc(m.GetGateways(), func(g string) bool { return sameGateway(g, vs.Namespace, scope.gateway) }) {
				continue
			}
			// As Istio: a match for another source namespace is no route of
			// these proxies.
			if m != nil && m.GetSourceNamespace() != "" && m.GetSourceNamespace() != scope.namespace {
				continue
			}
			rm, ok := routeMatch(m, func(msg string) { warn(where + " http[" + name + "] match " + strconv.Itoa(j) + ": " + msg) })
			if !ok {
				continue
			}
			r := act()
			r.Name, r.Match, r.TypedPerFilterConfig, r.Metadata = name, rm, perFilter, md
			r.RequestHeadersToAdd, r.RequestHeadersToRemove = reqAdd, reqRemove
			r.ResponseHeadersToAdd, r.ResponseHeadersToRemove = respAdd, respRemove
			out = append(out, r)
		}
	}
	return out
}

func stringMatch(s *apinetworking.StringMatch) *matcherv3.StringMatcher {
	switch x := s.GetMatchType().(type) {
	case *apinetworking.StringMatch_Exact:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: x.Exact}}
	case *apinetworking.StringMatch_Prefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: x.Prefix}}
	case *apinetworking.StringMatch_Regex:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: x.Regex}}}
	}
	return nil
}

func routeMatch(m *apinetworking.HTTPMatchRequest, warn func(string)) (*route.RouteMatch, bool) {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return rm, true
	}
	if len(m.GetSourceLabels()) > 0 {
		warn("sourceLabels is not supported; this match never applies")
		return nil, false
	}
	switch x := m.GetUri().GetMatchType().(type) {
	case *apinetworking.StringMatch_Exact:
		rm.PathSpecifier = &route.RouteMatch_Path{Path: x.Exact}
	case *apinetworking.StringMatch_Prefix:
		rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: x.Prefix}
	case *apinetworking.StringMatch_Regex:
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: x.Regex}}
	}
	// Istio's: method, authority and scheme are pseudo-header matches.
	for _, h := range []struct {
		name string
		m    *apinetworking.StringMatch
	}{{":method", m.GetMethod()}, {":authority", m.GetAuthority()}, {":scheme", m.GetScheme()}} {
		if sm := stringMatch(h.m); sm != nil {
			rm.Headers = append(rm.Headers, &route.HeaderMatcher{Name: h.name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm}})
		}
	}
	params := make([]string, 0, len(m.GetQueryParams()))
	for n := range m.GetQueryParams() {
		params = append(params, n)
	}
	sort.Strings(params)
	for _, n := range params {
		q := &route.QueryParameterMatcher{Name: n}
		// As Istio: no match type, or the regex "*", means present.
		if v := m.GetQueryParams()[n]; v.GetMatchType() == nil || v.GetRegex() == "*" {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else {
			q.QueryParameterMatchSpecifier = &route.QueryParameterMatcher_StringMatch{StringMatch: stringMatch(v)}
		}
		rm.QueryParameters = append(rm.QueryParameters, q)
	}
	names := make([]string, 0, len(m.GetHeaders()))
	for n := range m.GetHeaders() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		hm := &route.HeaderMatcher{Name: strings.ToLower(n)}
		if sm := stringMatch(m.GetHeaders()[n]); sm != nil {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
		} else {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	names = names[:0]
	for n := range m.GetWithoutHeaders() {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		hm := &route.HeaderMatcher{Name: strings.ToLower(n), InvertMatch: true}
		if sm := stringMatch(m.GetWithoutHeaders()[n]); sm != nil {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
		} else {
			hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	return rm, true
}

// routeAction: destinations (weighted), timeout, retries and rewrites; one,
// when the route has a single destination, carries that destination's
// header operations for the route to append to its own.
func routeAction(hr *apinetworking.HTTPRoute, scope routeScope, ns, domain string, warn func(string)) (a *route.RouteAction, one *route.WeightedCluster_ClusterWeight) {
	a = &route.RouteAction{Timeout: durationpb.New(0)}
	var weighted []*route.WeightedCluster_ClusterWeight
	var firstHost string // the destination of weighted[0], for its hash policy
	var firstPort int32
	for _, d := range hr.GetRoute() {
		dst := d.GetDestination()
		if dst == nil {
			continue
		}
		host, p := scope.resolve(dst, ns, domain)
		if p == 0 {
			warn("destination " + host + " has no port and the service has none or several; destination skipped")
			continue
		}
		w := uint32(d.GetWeight())
		if len(hr.GetRoute()) == 1 {
			w = 100
		}
		if len(weighted) == 0 {
			firstHost, firstPort = host, p
		}
		hwarn := func(m string) { warn("destination " + host + " headers: " + m) }
		weighted = append(weighted, &route.WeightedCluster_ClusterWeight{Name: OutboundCluster(p, dst.GetSubset(), host), Weight: wrapperspb.UInt32(w),
			RequestHeadersToAdd: headersToAdd(d.GetHeaders().GetRequest(), hwarn), RequestHeadersToRemove: headersToRemove(d.GetHeaders().GetRequest(), hwarn),
			ResponseHeadersToAdd: headersToAdd(d.GetHeaders().GetResponse(), hwarn), ResponseHeadersToRemove: headersToRemove(d.GetHeaders().GetResponse(), hwarn)})
	}
	switch len(weighted) {
	case 0:
		warn("no destination; route skipped")
		return nil, nil
	case 1:
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: weighted[0].Name}
		one = weighted[0]
		if scope.hash != nil {
			a.HashPolicy = scope.hash(firstHost, firstPort)
		}
	default:
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: weighted}}
	}
	if t := hr.GetTimeout(); t != nil {
		a.Timeout = durationpb.New(t.AsDuration())
	}
	if r := hr.GetRetries(); r == nil {
		a.RetryPolicy = istioRetry
	} else if r.GetAttempts() > 0 {
		rp := defaultRetry()
		rp.NumRetries = wrapperspb.UInt32(uint32(r.GetAttempts()))
		if r.GetPerTryTimeout() != nil {
			rp.PerTryTimeout = durationpb.New(r.GetPerTryTimeout().AsDuration())
		}
		if on := r.GetRetryOn(); on != "" {
			var kinds []string
			rp.RetriableStatusCodes = nil
			for _, k := range strings.Split(on, ",") {
				k = strings.TrimSpace(k)
				if code, err := strconv.Atoi(k); err == nil {
					rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(code))
					continue
				}
				kinds = append(kinds, k)
			}
			if len(rp.RetriableStatusCodes) > 0 {
				kinds = append(kinds, "retriable-status-codes")
			}
			rp.RetryOn = strings.Join(kinds, ",")
		}
		a.RetryPolicy = rp
	}
	a.RequestMirrorPolicies = mirrorPolicies(hr, scope, ns, domain, warn)
	if rw := hr.GetRewrite(); rw != nil {
		a.PrefixRewrite = rw.GetUri()
		if rw.GetAuthority() != "" {
			a.HostRewriteSpecifier = &route.RouteAction_HostRewriteLiteral{HostRewriteLiteral: rw.GetAuthority()}
		}
		if rr := rw.GetUriRegexRewrite(); rr != nil {
			a.RegexRewrite = &matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: rr.GetMatch()}, Substitution: rr.GetRewrite()}
		}
	}
	return a, one
}

// mirrorPolicies are a route's mirror (mirrorPercentage, or the older
// mirrorPercent) and mirrors as Istio renders them: a share of 0 is no
// mirror, none given is 100%.
func mirrorPolicies(hr *apinetworking.HTTPRoute, scope routeScope, ns, domain string, warn func(string)) []*route.RouteAction_RequestMirrorPolicy {
	var out []*route.RouteAction_RequestMirrorPolicy
	add := func(dst *apinetworking.Destination, percent *typev3.FractionalPercent) {
		if dst == nil || percent == nil {
			return
		}
		host, p := scope.resolve(dst, ns, domain)
		if p == 0 {
			warn("mirror " + host + " has no port and the service has none or several; not mirrored")
			return
		}
		out = append(out, &route.RouteAction_RequestMirrorPolicy{Cluster: OutboundCluster(p, dst.GetSubset(), host),
			RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: percent}, TraceSampled: wrapperspb.Bool(false)})
	}
	if m := hr.GetMirror(); m != nil {
		switch {
		case hr.GetMirrorPercentage() != nil:
			add(m, millionths(hr.GetMirrorPercentage().GetValue()))
		case hr.GetMirrorPercent() != nil: //nolint:staticcheck // Istio still reads the deprecated field
			if v := hr.GetMirrorPercent().GetValue(); v > 0 { //nolint:staticcheck
				add(m, &typev3.FractionalPercent{Numerator: v, Denominator: typev3.FractionalPercent_HUNDRED})
			}
		default:
			add(m, millionths(100))
		}
	}
	for _, m := range hr.GetMirrors() {
		if m.GetPercentage() != nil {
			add(m.GetDestination(), millionths(m.GetPercentage().GetValue()))
		} else {
			add(m.GetDestination(), millionths(100))
		}
	}
	return out
}

// millionths is a percentage as Envoy's FractionalPercent; nil for none.
func millionths(percent float64) *typev3.FractionalPercent {
	if percent <= 0 {
		return nil
	}
	return &typev3.FractionalPercent{Numerator: uint32(min(percent, 100) * 10000), Denominator: typev3.FractionalPercent_MILLION}
}

// headersToAdd is Istio's set and add as Envoy's headers to add (set
// overwrites, add appends), in name order. A value with an Envoy
// %VARIABLE% is left out with a warning: isthmus's proxy does not
// evaluate them, and would refuse the whole route table.
func headersToAdd(ops *apinetworking.Headers_HeaderOperations, warn func(string)) []*core.HeaderValueOption {
	var out []*core.HeaderValueOption
	for _, kv := range []struct {
		m      map[string]string
		action core.HeaderValueOption_HeaderAppendAction
	}{{ops.GetSet(), core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}, {ops.GetAdd(), core.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD}} {
		names := make([]string, 0, len(kv.m))
		for n := range kv.m {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if err := httpfield.Settable(n); err != nil {
				warn(err.Error() + "; header left out")
				continue
			}
			if err := httpfield.ValidValue(kv.m[n]); err != nil {
				warn(n + ": " + err.Error() + "; header left out")
				continue
			}
			if strings.Contains(strings.ReplaceAll(kv.m[n], "%%", ""), "%") {
				warn(n + ": the value has an Envoy %VARIABLE%, which isthmus does not evaluate; header left out")
				continue
			}
			out = append(out, &core.HeaderValueOption{Header: &core.HeaderValue{Key: n, Value: kv.m[n]}, AppendAction: kv.action})
		}
	}
	return out
}

// headersToRemove is Istio's remove, without pseudo-headers and Host.
func headersToRemove(ops *apinetworking.Headers_HeaderOperations, warn func(string)) []string {
	var out []string
	for _, n := range ops.GetRemove() {
		if err := httpfield.Settable(n); err != nil {
			warn(err.Error() + "; left alone")
			continue
		}
		out = append(out, n)
	}
	return out
}

// redirectAction is Istio's HTTPRedirect as Envoy's RedirectAction (nil for a
// code Envoy has no name for); port is the one the route serves.
func redirectAction(r *apinetworking.HTTPRedirect, port int32) *route.RedirectAction {
	a := &route.RedirectAction{HostRedirect: r.GetAuthority()}
	if r.GetUri() != "" {
		a.PathRewriteSpecifier = &route.RedirectAction_PathRedirect{PathRedirect: r.GetUri()}
	}
	if r.GetScheme() != "" {
		a.SchemeRewriteSpecifier = &route.RedirectAction_SchemeRedirect{SchemeRedirect: r.GetScheme()}
	}
	switch p := r.GetRedirectPort().(type) {
	case *apinetworking.HTTPRedirect_Port:
		a.PortRedirect = p.Port
	case *apinetworking.HTTPRedirect_DerivePort:
		// As Istio: the scheme's default port is Envoy's own (none in the
		// Location); the request's port is the listener's.
		if p.DerivePort == apinetworking.HTTPRedirect_FROM_REQUEST_PORT {
			a.PortRedirect = uint32(port)
		}
	}
	switch r.GetRedirectCode() {
	case 0, 301:
		a.ResponseCode = route.RedirectAction_MOVED_PERMANENTLY
	case 302:
		a.ResponseCode = route.RedirectAction_FOUND
	case 303:
		a.ResponseCode = route.RedirectAction_SEE_OTHER
	case 307:
		a.ResponseCode = route.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		a.ResponseCode = route.RedirectAction_PERMANENT_REDIRECT
	default:
		return nil
	}
	return a
}

// directResponse is Istio's HTTPDirectResponse as Envoy's.
func directResponse(d *apinetworking.HTTPDirectResponse) *route.DirectResponseAction {
	a := &route.DirectResponseAction{Status: d.GetStatus()}
	switch {
	case d.GetBody().GetString_() != "":
		a.Body = &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: d.GetBody().GetString_()}}
	case len(d.GetBody().GetBytes()) > 0:
		a.Body = &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: d.GetBody().GetBytes()}}
	}
	return a
}

// sameGateway reports whether a gateway reference written in namespace ns
// ("mesh", "name" or "namespace/name") names gateway ("mesh" or "namespace/name").
func sameGateway(ref, ns, gateway string) bool {
	if ref == "mesh" || gateway == "mesh" {
		return ref == gateway
	}
	if !strings.Contains(ref, "/") {
		ref = ns + "/" + ref
	}
	return ref == gateway
}

// fault is Istio's HTTPFaultInjection as Envoy's HTTPFault.
func fault(f *apinetworking.HTTPFaultInjection) *faultv3.HTTPFault {
	if f == nil {
		return nil
	}
	pct := func(p *apinetworking.Percent, legacy int32) *typev3.FractionalPercent {
		v := 100.0
		switch {
		case p != nil:
			v = p.GetValue()
		case legacy > 0:
			v = float64(legacy)
		}
		return &typev3.FractionalPercent{Numerator: uint32(v * 10000), Denominator: typev3.FractionalPercent_MILLION}
	}
	out := &faultv3.HTTPFault{}
	if d := f.GetDelay(); d != nil && d.GetFixedDelay() != nil {
		out.Delay = &faultcommon.FaultDelay{FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.GetFixedDelay().AsDuration())},
			Percentage: pct(d.GetPercentage(), d.GetPercent())}
	}
	if a := f.GetAbort(); a != nil && a.GetHttpStatus() != 0 {
		out.Abort = &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.GetHttpStatus())}, Percentage: pct(a.GetPercentage(), 0)}
	}
	if out.Delay == nil && out.Abort == nil {
		return nil
	}
	return out
}

// tcpRouteFilter is the tcp_proxy of a TCP service port: the first tcp
// route of the VirtualService that matches the port (weighted
// destinations), else the service's own cluster; hashSourceIP adds the
// source-IP hash policy of a consistentHash destination rule.
func tcpRouteFilter(vs *networkingv1.VirtualService, port int32, own, domain string, hashSourceIP bool) *listener.Filter {
	t := tcpProxyConfig(own, own)
	var routes []*apinetworking.TCPRoute
	if vs != nil {
		routes = vs.Spec.GetTcp()
	}
	for _, tr := range routes {
		matched := len(tr.GetMatch()) == 0
		for _, m := range tr.GetMatch() {
			if m.GetPort() == 0 || int32(m.GetPort()) == port {
				matched = true
			}
		}
		if matched && len(tr.GetRoute()) > 0 {
			t = tcpDestinations(tr.GetRoute(), port, vs.Namespace, domain, own)
			break
		}
	}
	if hashSourceIP {
		t.HashPolicy = []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}
	}
	return tcpFilter(t)
}

// tlsRouteChains are the filter chains of a VirtualService's tls routes
// for a TCP port: connections whose SNI one of a match's sniHosts names go
// to the route's destinations; the rest take the port's other chains.
func tlsRouteChains(vs *networkingv1.VirtualService, port int32, own, domain string) []*listener.FilterChain {
	if vs == nil {
		return nil
	}
	var out []*listener.FilterChain
	for i, tr := range vs.Spec.GetTls() {
		if len(tr.GetRoute()) == 0 {
			continue
		}
		for j, m := range tr.GetMatch() {
			if (m.GetPort() != 0 && int32(m.GetPort()) != port) || len(m.GetSniHosts()) == 0 {
				continue
			}
			out = append(out, &listener.FilterChain{
				Name:             fmt.Sprintf("%s/%s/tls[%d]/match[%d]", vs.Namespace, vs.Name, i, j),
				FilterChainMatch: &listener.FilterChainMatch{ServerNames: m.GetSniHosts(), TransportProtocol: "tls"},
				Filters:          []*listener.Filter{tcpFilter(tcpDestinations(tr.GetRoute(), port, vs.Namespace, domain, own))},
			})
		}
	}
	return out
}

// tcpDestinations is a tcp_proxy to one destination, or to weighted ones
// chosen per connection.
func tcpDestinations(route []*apinetworking.RouteDestination, port int32, ns, domain, statPrefix string) *tcpproxy.TcpProxy {
	var ws []*tcpproxy.TcpProxy_WeightedCluster_ClusterWeight
	for _, d := range route {
		p := int32(d.GetDestination().GetPort().GetNumber())
		if p == 0 {
			p = port
		}
		w := uint32(d.GetWeight())
		if len(route) == 1 {
			w = 100
		}
		ws = append(ws, &tcpproxy.TcpProxy_WeightedCluster_ClusterWeight{
			Name: OutboundCluster(p, d.GetDestination().GetSubset(), Qualify(d.GetDestination().GetHost(), ns, domain)), Weight: w})
	}
	if len(ws) == 1 {
		return tcpProxyConfig(ws[0].Name, ws[0].Name)
	}
	return &tcpproxy.TcpProxy{StatPrefix: statPrefix, ClusterSpecifier: &tcpproxy.TcpProxy_WeightedClusters{WeightedClusters: &tcpproxy.TcpProxy_WeightedCluster{Clusters: ws}}}
}
