package contract

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
)

// generated is what isthmus's control plane sends a sidecar of a small
// mesh: the contract this package must accept.
func generated(t testing.TB) config.Resources {
	return generatedPorts(t, []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "tcp", Port: 7070, Protocol: "TCP", AppProtocol: "tcp"}})
}

// generatedPorts is generated with the service's ports (each port's
// target port is its own number).
func generatedPorts(t testing.TB, ports []registry.Port) config.Resources {
	t.Helper()
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10", Ports: ports})
	targets := map[string]int32{}
	for _, p := range ports {
		targets[p.Name] = p.Port
	}
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: targets, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.5~profile-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1"})})
	if err != nil {
		t.Fatal(err)
	}
	g := proxyview.Generate(p, reg, nil, "cluster.local", func(string) {}, nil)
	in, inClusters := proxyview.Inbound(proxyview.NewInboundIndex(reg, reg.Services()).For("test", "10.64.0.5"), proxyview.InboundPolicy{})
	rs := config.Resources{}
	add := func(typ string, items []types.Resource) {
		if rs[typ] == nil {
			rs[typ] = map[string]*anypb.Any{}
		}
		for _, it := range items {
			a, err := anypb.New(it)
			if err != nil {
				t.Fatal(err)
			}
			rs[typ][cacheName(it)] = a
		}
	}
	add(resource.ClusterType, append(g.Clusters, inClusters...))
	add(resource.EndpointType, g.Endpoints)
	add(resource.ListenerType, append(g.Listeners, in))
	add(resource.RouteType, proxyview.SidecarRoutes("test", "", reg.Services(), nil, "istio-system", "cluster.local", nil))
	return rs
}

func cacheName(r types.Resource) string {
	if n, ok := r.(interface{ GetName() string }); ok && n.GetName() != "" {
		return n.GetName()
	}
	return r.(interface{ GetClusterName() string }).GetClusterName()
}

func TestBuildsWhatTheControlPlaneSends(t *testing.T) {
	snap, want, err := config.Build(generated(t))
	if err != nil {
		t.Fatal(err)
	}
	out := snap.Clusters["outbound|8080||profile.test.svc.cluster.local"]
	if out == nil || out.Type != config.EDS || len(out.Endpoints) != 1 {
		t.Fatalf("outbound cluster %+v", out)
	}
	if tls := out.TransportFor(out.Endpoints[0]); tls == nil || tls.SNI != "outbound_.8080_._.profile.test.svc.cluster.local" {
		t.Fatalf("tlsMode=istio endpoint transport %+v", tls)
	}
	if len(want[resource.EndpointType]) != 2 || len(want[resource.RouteType]) != 1 || want[resource.RouteType][0] != "8080" {
		t.Fatalf("subscriptions %v", want)
	}
	vo := snap.Listeners["virtualOutbound"]
	if vo == nil || !vo.UseOriginalDst || !vo.Bind || vo.Default == nil || vo.Default.TCP.Cluster != "PassthroughCluster" {
		t.Fatalf("virtualOutbound %+v", vo)
	}
	if l := snap.Listeners["0.0.0.0_8080"]; l == nil || l.Bind || l.Chains[0].HTTP.RouteName != "8080" {
		t.Fatalf("HTTP listener %+v", l)
	}
	vi := snap.Listeners["virtualInbound"]
	mtls := vi.Match(config.Connection{DestPort: 8080, Transport: "tls"})
	plain := vi.Match(config.Connection{DestPort: 8080, Transport: "raw_buffer"})
	other := vi.Match(config.Connection{DestPort: 9999, Transport: "raw_buffer"})
	if mtls == nil || mtls.TLS == nil || !mtls.HTTP.ForwardClientCert || plain == nil || plain.TLS != nil || other != vi.Default {
		t.Fatalf("inbound chains: mtls %+v plain %+v other %+v", mtls, plain, other)
	}
	// Istio's connection managers let WebSocket through, and nothing else.
	for side, hm := range map[string]*config.HTTPManager{"outbound": snap.Listeners["0.0.0.0_8080"].Chains[0].HTTP, "inbound": mtls.HTTP} {
		if !hm.UpgradeAllowed(nil, "WebSocket") || hm.UpgradeAllowed(nil, "h2c") {
			t.Errorf("%s upgrades %v: want websocket only", side, hm.Upgrades)
		}
	}
	rt := snap.Routes["8080"]
	for host, wantVH := range map[string]string{
		"profile.test.svc.cluster.local": "profile.test.svc.cluster.local:8080", "profile:8080": "profile.test.svc.cluster.local:8080",
		"10.96.0.10:8080": "profile.test.svc.cluster.local:8080", "example.com": "allow_any",
	} {
		if vh := rt.Match(host); vh == nil || vh.Name != wantVH {
			t.Errorf("Host %s -> %v, want %s", host, vh, wantVH)
		}
	}
	if r := rt.Match("profile").Match("/x", func(string) (string, bool) { return "", false }); r == nil || r.Clusters[0].Name != "outbound|8080||profile.test.svc.cluster.local" || r.Retry.NumRetries != 2 || r.Timeout != 0 {
		t.Errorf("route %+v", r)
	}
}

// Each of these is NACKed with a message naming the resource.
func TestRejectsWhatItCannotServe(t *testing.T) {
	for name, mutate := range map[string]func(config.Resources){
		"listener without an address": func(rs config.Resources) {
			rs[resource.ListenerType]["virtualOutbound"] = mustAny(&listener.Listener{Name: "virtualOutbound"})
		},
		"unknown network filter": func(rs config.Resources) {
			rs[resource.ListenerType]["x"] = mustAny(&listener.Listener{Name: "x", Address: addr("0.0.0.0", 1),
				FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{Name: "envoy.filters.network.redis_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(&structpb.Struct{})}}}}}})
		},
		"a resource of another type": func(rs config.Resources) {
			rs[resource.ClusterType]["bogus"] = mustAny(&listener.Listener{Name: "bogus"})
		},
		"garbage bytes": func(rs config.Resources) {
			rs[resource.RouteType]["8080"] = &anypb.Any{TypeUrl: resource.RouteType, Value: []byte{0xff, 0xff, 0xff}}
		},
		// A route must not reframe what it forwards, nor split an answer.
		"a route setting Content-Length": func(rs config.Resources) {
			rs[resource.RouteType]["bad"] = mustAny(&routev3.RouteConfiguration{Name: "bad", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"},
				Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}},
					RequestHeadersToAdd: []*core.HeaderValueOption{{Header: &core.HeaderValue{Key: "content-length", Value: "0"}, AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}}}}}})
		},
		"a CORS policy with a CR/LF": func(rs config.Resources) {
			rs[resource.RouteType]["bad"] = mustAny(&routev3.RouteConfiguration{Name: "bad", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"},
				Routes: []*routev3.Route{{Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "c"}}},
					TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.cors": mustAny(&corsv3.CorsPolicy{AllowMethods: "GET\r\nSet-Cookie: s=1"})}}}}}})
		},
	} {
		rs := generated(t)
		mutate(rs)
		if _, _, err := config.Build(rs); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.Contains(err.Error(), "\"") {
			t.Errorf("%s: error %q does not name the resource", name, err)
		}
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func addr(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{Address: ip, PortSpecifier: &core.SocketAddress_PortValue{PortValue: port}}}}
}

// FuzzBuild feeds arbitrary bytes as each resource type: errors are fine,
// panics are not (a malformed resource must never take the proxy down).
func FuzzBuild(f *testing.F) {
	for _, m := range generated(f) {
		for _, a := range m {
			f.Add(a.TypeUrl, a.Value)
		}
	}
	f.Fuzz(func(t *testing.T, typ string, value []byte) {
		for _, known := range []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType} {
			if typ == known {
				_, _, _ = config.Build(config.Resources{typ: {"fuzz": &anypb.Any{TypeUrl: typ, Value: value}}})
			}
		}
		_, _, _ = config.Build(config.Resources{resource.ListenerType: {"fuzz": &anypb.Any{TypeUrl: resource.ListenerType, Value: value}}})
	})
}

// A VirtualService as the control plane translates it and the proxy
// compiles it: matches, weights, timeout, retries, fault, rewrite.
func TestVirtualServiceRoutes(t *testing.T) {
	reg := registry.New()
	for i, name := range []string{"profile", "profile-v2"} {
		h := name + ".test.svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: name, Hostname: h, ClusterIP: fmt.Sprintf("10.96.0.%d", 10+i),
			Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	}
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "profile"}}
	j, _ := yaml.YAMLToJSON([]byte(`
hosts: [profile]
http:
- name: canary
  match: [{headers: {x-canary: {exact: "yes"}}, uri: {prefix: /profile}}]
  route: [{destination: {host: profile-v2}}]
  rewrite: {uri: /v2/profile, authority: profile-v2}
- name: slow
  match: [{uri: {regex: "/slow/[0-9]+"}, method: {exact: GET}}]
  fault: {delay: {fixedDelay: 2s, percentage: {value: 50}}, abort: {httpStatus: 503, percentage: {value: 10}}}
  timeout: 500ms
  route: [{destination: {host: profile}}]
- route: [{destination: {host: profile}, weight: 80}, {destination: {host: profile-v2}, weight: 20}]
  retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,503"}
`))
	if err := vs.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	var warnings []string
	rs := proxyview.SidecarRoutes("test", "", reg.Services(), vsConfig{[]*networkingv1.VirtualService{vs}}, "istio-system", "cluster.local", func(w string) { warnings = append(warnings, w) })
	rc := rs[0].(*routev3.RouteConfiguration)
	snap, _, err := config.Build(config.Resources{resource.RouteType: {rc.Name: mustAny(rc)}})
	if err != nil {
		t.Fatal(err)
	}
	rt := snap.Routes[rc.Name]
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	vh := rt.Match("profile.test.svc.cluster.local")
	headers := func(h map[string]string) func(string) (string, bool) {
		return func(n string) (string, bool) { v, ok := h[n]; return v, ok }
	}
	canary := vh.Match("/profile", headers(map[string]string{"x-canary": "yes", ":method": "GET"}))
	if canary == nil || canary.Name != "canary" || canary.Clusters[0].Name != "outbound|8080||profile-v2.test.svc.cluster.local" ||
		canary.PrefixRewrite != "/v2/profile" || canary.HostRewrite != "profile-v2" {
		t.Errorf("canary route %+v", canary)
	}
	slow := vh.Match("/slow/42", headers(map[string]string{":method": "GET"}))
	if slow == nil || slow.Name != "slow" || slow.Timeout != 500*time.Millisecond || slow.Fault == nil ||
		slow.Fault.Delay != 2*time.Second || slow.Fault.DelayShare != 0.5 || slow.Fault.AbortStatus != 503 || slow.Fault.AbortShare != 0.1 {
		t.Errorf("slow route %+v fault %+v", slow, slow.Fault)
	}
	if r := vh.Match("/slow/42", headers(map[string]string{":method": "POST"})); r == nil || r.Name == "slow" {
		t.Errorf("a POST must not match the GET route: %+v", r)
	}
	def := vh.Match("/other", headers(nil))
	if def == nil || len(def.Clusters) != 2 || def.Clusters[0].Weight != 80 || def.Retry.NumRetries != 3 || def.Retry.PerTryTimeout != time.Second ||
		!def.Retry.On["5xx"] || !def.Retry.StatusCodes[503] || def.Timeout != 0 {
		t.Errorf("default route %+v retry %+v", def, def.Retry)
	}
}

// A route that redirects, answers directly or rewrites the path by regex,
// from the VirtualService to what the proxy decides for a request.
func TestVirtualServiceAnswers(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "profile"}}
	j, _ := yaml.YAMLToJSON([]byte(`
hosts: [profile]
http:
- name: moved
  match: [{uri: {prefix: /old}}]
  redirect: {uri: /new, authority: profile.example.com, redirectCode: 308}
- name: tls
  match: [{uri: {prefix: /secure}}]
  redirect: {scheme: https, port: 443}
- name: gone
  match: [{uri: {exact: /gone}}]
  directResponse: {status: 410, body: {string: "no longer here"}}
- name: versioned
  match: [{uri: {prefix: /v1/}}]
  rewrite: {uriRegexRewrite: {match: "^/v1/([^/]+)/(.*)$", rewrite: "/\\2/\\1"}}
  route: [{destination: {host: profile}}]
- name: cors
  match: [{uri: {prefix: /c}}]
  corsPolicy: {allowOrigins: [{exact: "https://app.example"}, {regex: "https://.*[.]shop[.]example"}], allowMethods: [GET, POST], maxAge: 1h, allowCredentials: true}
  route: [{destination: {host: profile}}]
- name: headers
  match: [{uri: {prefix: /h}}]
  headers:
    request: {set: {x-route: r, x-both: route}, add: {x-trace: t1}, remove: [X-Internal]}
    response: {set: {cache-control: no-store}, remove: [server]}
  route: [{destination: {host: profile}, headers: {request: {set: {x-both: destination, x-dest: d}}, response: {add: {x-served-by: profile}}}}]
- name: mirrored
  match: [{uri: {prefix: /m}}]
  route: [{destination: {host: profile}}]
  mirror: {host: profile, subset: v2}
  mirrorPercentage: {value: 12.5}
- name: mirrors
  match: [{uri: {prefix: /two}}]
  route: [{destination: {host: profile}}]
  mirrors: [{destination: {host: profile, port: {number: 9090}}}, {destination: {host: profile}, percentage: {value: 0}}]
`))
	if err := vs.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	rt := routeTable(t, reg, vs)
	decide := func(target string) decision.Decision {
		return decision.Decide(&config.HTTPManager{}, rt, &decision.Request{Method: "GET", Target: target, Host: "profile:8080",
			Header: func(n string) (string, bool) {
				switch n {
				case ":path":
					return target, true
				case ":method":
					return "GET", true
				}
				return "", false
			}})
	}
	if c := rt.Match("profile:8080").Match("/c", func(string) (string, bool) { return "", false }).CORS; c == nil ||
		len(c.Origins) != 2 || !c.Origins[1]("https://eu.shop.example") || c.Origins[1]("https://evil.example") || c.AllowMethods != "GET,POST" ||
		c.MaxAge != "3600" || !c.AllowCredentials || !c.ForwardUnmatched {
		t.Errorf("cors policy %+v", c)
	}
	// mirror at 12.5%, mirrors at their default of 100% (a share of 0
	// is none), as Istio renders them.
	if got := fmt.Sprintf("%+v", decide("/m").Route.Mirrors); got != "[{Cluster:outbound|8080|v2|"+h+" Share:0.125 KeepHost:false}]" {
		t.Errorf("mirror: %s", got)
	}
	if got := fmt.Sprintf("%+v", decide("/two").Route.Mirrors); got != "[{Cluster:outbound|9090||"+h+" Share:1 KeepHost:false}]" {
		t.Errorf("mirrors: %s", got)
	}
	hd := decide("/h")
	if got := fmt.Sprintf("set %v add %v remove %v response %+v", hd.Set, hd.Add, hd.Remove, hd.Response); got !=
		"set [[x-route r] [x-both destination] [x-dest d]] add [[x-trace t1]] remove [x-internal] response {Set:[[cache-control no-store]] Add:[[x-served-by profile]] Remove:[server]}" {
		t.Errorf("header operations: %s", got)
	}
	for _, c := range []struct {
		target, status, location, body, upstream string
	}{
		{target: "/old/page?x=1", status: "308", location: "http://profile.example.com/new?x=1"},
		{target: "/secure/a", status: "301", location: "https://profile/secure/a"},
		{target: "/gone", status: "410", body: "no longer here"},
		{target: "/v1/alice/photos?size=2", status: "0", upstream: "/photos/alice?size=2"},
	} {
		d := decide(c.target)
		got := fmt.Sprintf("%d %s %s", d.Status, d.Location, d.Body)
		want := c.status + " " + c.location + " " + c.body
		if c.upstream != "" {
			got, want = fmt.Sprintf("%d %s %s", d.Status, d.Cluster, d.Target), "0 outbound|8080||"+h+" "+c.upstream
		}
		if got != want {
			t.Errorf("GET %s: %q, want %q", c.target, got, want)
		}
	}
}

// drConfig serves one DestinationRule to the generator.
type drConfig struct{ dr *networkingv1.DestinationRule }

func (drConfig) Gateways() []*networkingv1.Gateway               { return nil }
func (drConfig) VirtualServices() []*networkingv1.VirtualService { return nil }
func (c drConfig) DestinationRules() []*networkingv1.DestinationRule {
	return []*networkingv1.DestinationRule{c.dr}
}
func (drConfig) PeerAuthentications() []*securityv1.PeerAuthentication {
	return nil
}
func (drConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return nil }

// A DestinationRule's load balancer, outlier detection and failover
// priority by network reach the proxy's cluster and endpoints.
func TestDestinationRule(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: map[string]int32{"http": 8080}, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	reg.SetService("c2", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.97.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	reg.SetEndpoints("c2", h, []registry.Endpoint{{Address: "10.65.0.5", Ports: map[string]int32{"http": 8080}, Cluster: "c2", Network: "n2", TLSMode: "istio", Ready: true}})
	reg.SetGateways("c2", []registry.Gateway{{Network: "n2", Address: "198.18.2.10", Port: 15443}})
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "profile"}}
	j, _ := yaml.YAMLToJSON([]byte(`
host: profile
trafficPolicy:
  loadBalancer:
    simple: LEAST_REQUEST
    localityLbSetting: {enabled: true, failoverPriority: [topology.istio.io/network]}
  outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 15s, maxEjectionPercent: 100}
  connectionPool: {tcp: {maxConnections: 1, connectTimeout: 2s}, http: {http1MaxPendingRequests: 1, h2UpgradePolicy: UPGRADE, idleTimeout: 30s}}
`))
	if err := dr.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.9~sleep-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1", "CLUSTER_ID": "c1"})})
	if err != nil {
		t.Fatal(err)
	}
	var warnings []string
	g := proxyview.Generate(p, reg, drConfig{dr}, "cluster.local", func(string) {}, func(w string) { warnings = append(warnings, w) })
	rs := config.Resources{}
	for typ, items := range map[string][]types.Resource{resource.ClusterType: g.Clusters, resource.EndpointType: g.Endpoints} {
		rs[typ] = map[string]*anypb.Any{}
		for _, it := range items {
			a, _ := anypb.New(it)
			rs[typ][cacheName(it)] = a
		}
	}
	snap, _, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	c := snap.Clusters["outbound|8080||"+h]
	if c == nil || c.LB != config.LeastRequest || c.Outlier == nil || c.Outlier.Consecutive5xx != 2 || c.Outlier.BaseEjection != 15*time.Second || c.Outlier.MaxEjectionPercent != 100 {
		t.Fatalf("cluster %+v outlier %+v", c, c.Outlier)
	}
	if c.MaxConnections != 1 || c.MaxRequests != 2 || c.ConnectTimeout != 2*time.Second {
		t.Errorf("circuit breakers: %d connections, %d requests (want 1 and 1+1 pending), connect timeout %s", c.MaxConnections, c.MaxRequests, c.ConnectTimeout)
	}
	if c.Protocol != config.UpstreamHTTP2 {
		t.Errorf("h2UpgradePolicy UPGRADE: upstream protocol %d, want HTTP/2", c.Protocol)
	}
	if c.IdleTimeout != 30*time.Second {
		t.Errorf("http idleTimeout 30s: the cluster's idle timeout is %s", c.IdleTimeout)
	}
	for _, w := range warnings {
		if strings.Contains(w, "h2UpgradePolicy") {
			t.Errorf("warning: %s", w)
		}
	}
	prio := map[string]uint32{}
	for _, e := range c.Endpoints {
		prio[e.Addr.String()] = e.Priority
	}
	if prio["10.64.0.5:8080"] != 0 || prio["198.18.2.10:15443"] != 1 {
		t.Errorf("priorities %v: the local network first, the other network's gateway next", prio)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings %v", warnings)
	}
}

// vsConfig serves VirtualServices to the generator.
type vsConfig struct {
	vss []*networkingv1.VirtualService
}

func (vsConfig) Gateways() []*networkingv1.Gateway                 { return nil }
func (c vsConfig) VirtualServices() []*networkingv1.VirtualService { return c.vss }
func (vsConfig) DestinationRules() []*networkingv1.DestinationRule {
	return nil
}
func (vsConfig) PeerAuthentications() []*securityv1.PeerAuthentication    { return nil }
func (vsConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return nil }

// A VirtualService's tcp route splits a TCP port's connections by weight.
func TestTCPRoutes(t *testing.T) {
	reg := registry.New()
	for i, name := range []string{"db", "db-next"} {
		h := name + ".test.svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: name, Hostname: h, ClusterIP: fmt.Sprintf("10.96.1.%d", i+1),
			Ports: []registry.Port{{Name: "tcp-db", Port: 5432, Protocol: "TCP", AppProtocol: "tcp"}}})
	}
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "db"}}
	j, _ := yaml.YAMLToJSON([]byte(`
hosts: [db]
tcp:
- match: [{port: 5432}]
  route: [{destination: {host: db}, weight: 90}, {destination: {host: db-next}, weight: 10}]
`))
	if err := vs.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.9~app-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1"})})
	if err != nil {
		t.Fatal(err)
	}
	g := proxyview.Generate(p, reg, vsConfig{[]*networkingv1.VirtualService{vs}}, "cluster.local", func(string) {}, nil)
	seen := 0
	for _, r := range g.Listeners {
		l := r.(*listener.Listener)
		if l.Name != "10.96.1.1_5432" && l.Name != "10.96.1.2_5432" {
			continue
		}
		seen++
		built, err := listenerOf(l)
		if err != nil {
			t.Fatal(err)
		}
		tcp := built.Chains[0].TCP
		if l.Name == "10.96.1.1_5432" {
			if len(tcp.Weighted) != 2 || tcp.Weighted[0].Name != "outbound|5432||db.test.svc.cluster.local" || tcp.Weighted[0].Weight != 90 || tcp.Weighted[1].Weight != 10 {
				t.Errorf("db's tcp route: %+v", tcp)
			}
		} else if tcp.Cluster != "outbound|5432||db-next.test.svc.cluster.local" || len(tcp.Weighted) != 0 {
			t.Errorf("db-next keeps its own cluster: %+v", tcp)
		}
	}
	if seen != 2 {
		t.Errorf("%d of the two TCP listeners generated", seen)
	}
}

// A VirtualService's tls routes on a sidecar: a TLS port's connections go
// by their SNI, the others keep the service's own cluster.
func TestTLSRoutes(t *testing.T) {
	reg := registry.New()
	for i, name := range []string{"web", "web-v2"} {
		h := name + ".test.svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: name, Hostname: h, ClusterIP: fmt.Sprintf("10.96.2.%d", i+1),
			Ports: []registry.Port{{Name: "https", Port: 443, Protocol: "TCP", AppProtocol: "https"}}})
	}
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "web"}}
	j, _ := yaml.YAMLToJSON([]byte(`
hosts: [web]
tls:
- match: [{port: 443, sniHosts: [v2.example.com]}]
  route: [{destination: {host: web-v2}}]
`))
	if err := vs.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.9~app-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1"})})
	if err != nil {
		t.Fatal(err)
	}
	g := proxyview.Generate(p, reg, vsConfig{[]*networkingv1.VirtualService{vs}}, "cluster.local", func(string) {}, nil)
	for _, r := range g.Listeners {
		l := r.(*listener.Listener)
		if l.Name != "10.96.2.1_443" {
			continue
		}
		built, err := listenerOf(l)
		if err != nil {
			t.Fatal(err)
		}
		if !built.InspectTLS {
			t.Fatal("no TLS inspection on a port with tls routes")
		}
		for sni, want := range map[string]string{"v2.example.com": "outbound|443||web-v2.test.svc.cluster.local", "other.example.com": "outbound|443||web.test.svc.cluster.local"} {
			c := built.Match(config.Connection{DestPort: 443, Transport: "tls", SNI: sni})
			if c == nil || c.TCP == nil || c.TCP.Cluster != want {
				t.Errorf("SNI %s: chain %+v, want %s", sni, c, want)
			}
		}
		return
	}
	t.Fatal("no listener 10.96.2.1_443")
}

// consistentHash: the cluster balances on a ring and the service's routes
// hash requests by the header.
func TestConsistentHash(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "profile"}}
	j, _ := yaml.YAMLToJSON([]byte("host: profile\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n"))
	if err := dr.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.9~app-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1"})})
	if err != nil {
		t.Fatal(err)
	}
	g := proxyview.Generate(p, reg, drConfig{dr}, "cluster.local", func(string) {}, func(w string) { t.Errorf("warning: %s", w) })
	rs := config.Resources{resource.ClusterType: {}, resource.RouteType: {}}
	for _, c := range g.Clusters {
		a, _ := anypb.New(c)
		rs[resource.ClusterType][cacheName(c)] = a
	}
	for _, r := range proxyview.SidecarRoutes("test", "", reg.Services(), drConfig{dr}, "istio-system", "cluster.local", nil) {
		a, _ := anypb.New(r)
		rs[resource.RouteType][cacheName(r)] = a
	}
	snap, _, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	if c := snap.Clusters["outbound|8080||"+h]; c == nil || c.LB != config.RingHash {
		t.Fatalf("cluster: %+v", c)
	}
	vh := snap.Routes["8080"].Match("profile:8080")
	if vh == nil || len(vh.Routes) != 1 || len(vh.Routes[0].Hash) != 1 || vh.Routes[0].Hash[0].Header != "x-user" {
		t.Fatalf("route hash policy: %+v", vh)
	}
}

// Each cluster's upstreams speak what Istio says they do: HTTP/1.1 for an
// http port (whatever the client spoke), HTTP/2 for grpc and http2 ports,
// the client's own for a sniffed port and the passthrough clusters; on the
// inbound side the same for the app's ports.
func TestUpstreamProtocolFollowsThePort(t *testing.T) {
	snap, _, err := config.Build(generatedPorts(t, []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"},
		{Name: "grpc", Port: 9090, Protocol: "TCP", AppProtocol: "grpc"}, {Name: "h2", Port: 9091, Protocol: "TCP", AppProtocol: "http2"},
		{Name: "web", Port: 8081, Protocol: "TCP"}}))
	if err != nil {
		t.Fatal(err)
	}
	h := "profile.test.svc.cluster.local"
	for name, want := range map[string]config.UpstreamProtocol{
		"outbound|8080||" + h: config.UpstreamHTTP1, "outbound|9090||" + h: config.UpstreamHTTP2, "outbound|9091||" + h: config.UpstreamHTTP2, "outbound|8081||" + h: config.UpstreamAsDownstream,
		"inbound|8080||": config.UpstreamHTTP1, "inbound|9090||": config.UpstreamHTTP2, "inbound|9091||": config.UpstreamHTTP2, "inbound|8081||": config.UpstreamAsDownstream,
		"PassthroughCluster": config.UpstreamAsDownstream, "InboundPassthroughCluster": config.UpstreamAsDownstream,
	} {
		c := snap.Clusters[name]
		if c == nil {
			t.Errorf("no cluster %s", name)
			continue
		}
		if c.Protocol != want {
			t.Errorf("%s: upstream protocol %d, want %d", name, c.Protocol, want)
		}
	}
}

// listenerOf builds one listener as the proxy builds what it receives.
func listenerOf(l *listener.Listener) (*config.Listener, error) {
	snap, _, err := config.Build(config.Resources{resource.ListenerType: {l.Name: mustAny(l)}})
	if err != nil {
		return nil, err
	}
	return snap.Listeners[l.Name], nil
}

func (drConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (drConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }

func (vsConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (vsConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }

// Matches on query parameters, authority and scheme, from the
// VirtualService to the route the proxy picks (Istio's translation:
// pseudo-header matches, and query_parameters on the raw values).
func TestVirtualServiceQueryAuthoritySchemeMatches(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	vs := &networkingv1.VirtualService{ObjectMeta: metav1.ObjectMeta{Namespace: "test", Name: "profile"}}
	j, _ := yaml.YAMLToJSON([]byte(`
hosts: [profile]
http:
- name: beta
  match: [{queryParams: {beta: {exact: "1"}, user: {regex: "*"}}}]
  route: [{destination: {host: profile}}]
- name: prefixed
  match: [{queryParams: {id: {prefix: "a-"}}}]
  route: [{destination: {host: profile}}]
- name: by-authority
  match: [{authority: {prefix: "profile.test"}}]
  route: [{destination: {host: profile}}]
- name: tls-only
  match: [{scheme: {exact: https}}]
  route: [{destination: {host: profile}}]
- name: default
  route: [{destination: {host: profile}}]
`))
	if err := vs.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	vh := routeTable(t, reg, vs).Match(h)
	for _, tc := range []struct {
		path, authority, scheme, want string
	}{
		{"/p?beta=1&user=ann", "profile", "http", "beta"},
		{"/p?user=&beta=1", "profile", "http", "beta"}, // present, even empty
		{"/p?beta=1", "profile", "http", "default"},    // user missing
		{"/p?beta=10&user=x", "profile", "http", "default"},
		{"/p?id=a-7", "profile", "http", "prefixed"},
		{"/p?id=b-7", "profile", "http", "default"},
		{"/p", "profile.test:8080", "http", "by-authority"},
		{"/p", "profile", "https", "tls-only"},
		{"/p", "profile", "http", "default"},
	} {
		hdr := map[string]string{":path": tc.path, ":authority": tc.authority, ":scheme": tc.scheme, ":method": "GET"}
		path, _, _ := strings.Cut(tc.path, "?")
		r := vh.Match(path, func(n string) (string, bool) { v, ok := hdr[n]; return v, ok })
		if r == nil || r.Name != tc.want {
			t.Errorf("%s (authority %s, %s): route %v, want %s", tc.path, tc.authority, tc.scheme, r, tc.want)
		}
	}
}

// The proxy takes what a ServiceEntry and a headless service become: a
// TLS port routed by SNI (0.0.0.0_443), an original-destination cluster
// with Istio mTLS, per-pod listeners.
func TestBuildsServiceEntriesAndHeadless(t *testing.T) {
	reg := registry.New()
	se, db := "api.example.com", "db.test.svc.cluster.local"
	reg.ReplaceCluster("ServiceEntry", registry.Shard{
		Services: map[string]*registry.Service{se: {Namespace: "test", Name: se, Hostname: se, ClusterIP: "240.240.0.7", FromServiceEntry: true, MeshExternal: true,
			Ports: []registry.Port{{Name: "tls", Port: 443, Protocol: "TCP", AppProtocol: "tls"}}}},
		Endpoints: map[string][]registry.Endpoint{se: {{Address: "198.51.100.7", Ports: map[string]int32{"tls": 443}, Ready: true}}},
	})
	reg.SetService("c1", db, &registry.Service{Namespace: "test", Name: "db", Hostname: db, Headless: true, Ports: []registry.Port{{Name: "tcp", Port: 5432, Protocol: "TCP", AppProtocol: "tcp"}}})
	reg.SetEndpoints("c1", db, []registry.Endpoint{{Address: "10.64.0.9", Ports: map[string]int32{"tcp": 5432}, Cluster: "c1", Network: "n1", TLSMode: "istio", ServiceAccount: "db", Namespace: "test", Ready: true}})
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.5~sleep-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1", "CLUSTER_ID": "c1"})})
	if err != nil {
		t.Fatal(err)
	}
	p.TrustDomains = []string{"cluster.local"}
	g := proxyview.Generate(p, reg, nil, "cluster.local", func(string) {}, nil)
	rs := config.Resources{resource.ClusterType: {}, resource.EndpointType: {}, resource.ListenerType: {}}
	for typ, items := range map[string][]types.Resource{resource.ClusterType: g.Clusters, resource.EndpointType: g.Endpoints, resource.ListenerType: g.Listeners} {
		for _, it := range items {
			rs[typ][cacheName(it)] = mustAny(it)
		}
	}
	snap, _, err := config.Build(rs)
	if err != nil {
		t.Fatal(err)
	}
	if l := snap.Listeners["0.0.0.0_443"]; l == nil || !l.InspectTLS || l.Match(config.Connection{DestPort: 443, Transport: "tls", SNI: se}).TCP.Cluster != "outbound|443||"+se {
		t.Errorf("SNI listener %+v", l)
	}
	if l := snap.Listeners["0.0.0.0_443"]; l.Match(config.Connection{DestPort: 443, Transport: "tls", SNI: "other.example"}).TCP.Cluster != "PassthroughCluster" {
		t.Error("another name on 443 is not passed through")
	}
	c := snap.Clusters["outbound|5432||"+db]
	if c == nil || c.Type != config.OriginalDst || c.TLS == nil || c.TransportFor(nil) == nil || c.TLS.SANs[0] != "spiffe://cluster.local/ns/test/sa/db" {
		t.Errorf("headless cluster %+v", c)
	}
	if snap.Listeners["10.64.0.9_5432"] == nil {
		t.Error("no per-pod listener")
	}
}

// routeTable is what the proxy makes of the sidecar route table (of the
// services' first port) a VirtualService gives in cluster c1; it fails
// the test on a warning.
func routeTable(t *testing.T, reg *registry.Registry, vs *networkingv1.VirtualService) *config.RouteTable {
	t.Helper()
	var warnings []string
	rs := proxyview.SidecarRoutes("test", "c1", reg.Services(), vsConfig{[]*networkingv1.VirtualService{vs}}, "istio-system", "cluster.local", func(w string) { warnings = append(warnings, w) })
	rc := rs[0].(*routev3.RouteConfiguration)
	snap, _, err := config.Build(config.Resources{resource.RouteType: {rc.Name: mustAny(rc)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Errorf("warnings: %v", warnings)
	}
	return snap.Routes[rc.Name]
}

// meshConfig's access log reaches every chain the control plane sends,
// HTTP and TCP, outbound and inbound, as the file and format the proxy
// writes; without one, chains name none (the proxy's own flag decides).
func TestAccessLogOnEveryChain(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	ports := []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "tcp", Port: 7070, Protocol: "TCP", AppProtocol: "tcp"}}
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10", Ports: ports})
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: map[string]int32{"http": 8080, "tcp": 7070}, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	p, err := proxyview.ParseNode(&core.Node{Id: "sidecar~10.64.0.5~profile-1.test~test.svc.cluster.local", Metadata: proxyview.NodeMetadata(map[string]string{"NETWORK": "n1"})})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []*config.AccessLog{nil, {Path: "/dev/stdout", JSON: true}, {Path: "/var/log/mesh.log"}} {
		g := &proxyview.Generator{Registry: reg}
		if want != nil {
			g.AccessLog = &proxyview.AccessLog{Path: want.Path, JSON: want.JSON}
		}
		gen := g.View(p)
		in, _ := g.Inbound(g.InboundIndex(reg.Services()).For("test", "10.64.0.5"), proxyview.InboundPolicy{})
		rs := config.Resources{resource.ListenerType: {}}
		for _, l := range append(gen.Listeners, in) {
			rs[resource.ListenerType][cacheName(l)] = mustAny(l.(proto.Message))
		}
		snap, _, err := config.Build(rs)
		if err != nil {
			t.Fatal(err)
		}
		chains := 0
		for name, l := range snap.Listeners {
			for _, c := range append(slices.Clone(l.Chains), l.Default) {
				if c == nil {
					continue
				}
				var got *config.AccessLog
				switch {
				case c.HTTP != nil:
					got = c.HTTP.AccessLog
				case c.TCP != nil:
					got = c.TCP.AccessLog
				default:
					continue
				}
				chains++
				if (got == nil) != (want == nil) || (got != nil && *got != *want) {
					t.Errorf("access log %+v: listener %s chain has %+v", want, name, got)
				}
			}
		}
		if chains < 4 {
			t.Errorf("only %d chains checked", chains)
		}
	}
}
