package proxy

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

func mustAny(tb testing.TB, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

func socket(ap netip.AddrPort) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address: ap.Addr().String(), PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}}
}

// startHTTPProxy runs a proxy with one plaintext HTTP listener whose only
// route goes to the cluster "up" at upstream; route adjusts the route's
// action (timeouts, retries). It returns the listener's address.
func startHTTPProxy(tb testing.TB, upstream string, route func(*routev3.RouteAction)) (*Proxy, string) {
	return startProxy(tb, upstream, nil, route)
}

// upstreamHTTP2 and upstreamAsDownstream set a cluster's upstream protocol
// as Istio does for http2/grpc ports and for sniffed ones.
func upstreamHTTP2(c *cluster.Cluster) {
	setProtocol(c, &httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}}}}})
}

func upstreamAsDownstream(c *cluster.Cluster) {
	setProtocol(c, &httpopts.HttpProtocolOptions{UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &httpopts.HttpProtocolOptions_UseDownstreamHttpConfig{}}})
}

func setProtocol(c *cluster.Cluster, o *httpopts.HttpProtocolOptions) {
	a, err := anypb.New(o)
	if err != nil {
		panic(err)
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": a}
}

// staticCluster is a cluster of one endpoint at addr, as a test's upstream.
func staticCluster(name, addr string) *cluster.Cluster {
	return &cluster.Cluster{Name: name, ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout: durationpb.New(time.Second), LoadAssignment: &endpoint.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: socket(netip.MustParseAddrPort(addr))}}}}}}}}
}

// startProxy is startHTTPProxy with the cluster adjusted too (and the
// connection manager, by the manager functions).
func startProxy(tb testing.TB, upstream string, adjust func(*cluster.Cluster), route func(*routev3.RouteAction), manager ...func(*hcm.HttpConnectionManager)) (*Proxy, string) {
	return startProxyWith(tb, upstream, adjust, route, proxySetup{}, manager...)
}

// proxySetup is what startProxyWith adds: resources (SDS secrets) to the
// state it applies, and the proxy's options.
type proxySetup struct {
	more xdsclient.State
	opts Options
	// applied, when set, receives the state applied, for a test to change.
	applied *xdsclient.State
}

// startProxyWith is startProxy with a setup.
func startProxyWith(tb testing.TB, upstream string, adjust func(*cluster.Cluster), route func(*routev3.RouteAction), setup proxySetup, manager ...func(*hcm.HttpConnectionManager)) (*Proxy, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	front := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	action := &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "up"}}
	if route != nil {
		route(action)
	}
	hcmConfig := &hcm.HttpConnectionManager{StatPrefix: "bench",
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "bench", VirtualHosts: []*routev3.VirtualHost{{
			Name: "up", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: action}}}}}}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(tb, &routerv3.Router{})}}}}
	up := staticCluster("up", upstream)
	if adjust != nil {
		adjust(up)
	}
	for _, m := range manager {
		m(hcmConfig)
	}
	st := xdsclient.State{
		resource.ClusterType: {"up": mustAny(tb, up)},
		resource.ListenerType: {"front": mustAny(tb, &listener.Listener{Name: "front", Address: socket(front), FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(tb, hcmConfig)}}}}}})},
	}
	for typ, rs := range setup.more {
		if st[typ] == nil {
			st[typ] = map[string]*anypb.Any{}
		}
		maps.Copy(st[typ], rs)
	}
	opts := setup.opts
	opts.Log = slog.New(slog.DiscardHandler)
	p := New(opts)
	if _, err := p.Apply(st, resource.ListenerType); err != nil {
		tb.Fatal(err)
	}
	if setup.applied != nil {
		*setup.applied = st
	}
	tb.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, bl := range p.bound {
			bl.ln.Close()
		}
	})
	return p, front.String()
}

// BenchmarkHTTPForward is the HTTP hot path on loopback: a keep-alive
// client, the proxy's listener, route lookup, upstream pool and an
// upstream answering "ok" (plaintext: the mTLS cost is the data-plane
// bench's). Compare with BenchmarkHTTPDirect for what the hop adds.
func BenchmarkHTTPForward(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	_, front := startHTTPProxy(b, up.Listener.Addr().String(), nil)
	get(b, "http://"+front+"/bench")
}

// BenchmarkHTTPDirect is the same client and upstream without the proxy.
func BenchmarkHTTPDirect(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	get(b, up.URL+"/bench")
}

func get(b *testing.B, url string) {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	defer c.CloseIdleConnections()
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil || resp.StatusCode != 200 {
			b.Fatalf("status %d, %v", resp.StatusCode, err)
		}
		resp.Body.Close()
	}
}

// BenchmarkGRPCForward is one unary gRPC call (health Check) through the
// proxy on loopback over one HTTP/2 connection, as a sidecar relays its
// app's calls; compare with BenchmarkGRPCDirect.
func BenchmarkGRPCForward(b *testing.B) {
	up := grpcHealthServer(b)
	_, front := startProxy(b, up, upstreamHTTP2, nil)
	grpcCheck(b, front)
}

// BenchmarkGRPCDirect is the same client and server without the proxy.
func BenchmarkGRPCDirect(b *testing.B) { grpcCheck(b, grpcHealthServer(b)) }

func grpcHealthServer(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(l) }()
	b.Cleanup(gs.Stop)
	return l.Addr().String()
}

func grpcCheck(b *testing.B, addr string) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
