package proxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// countedServer serves h on loopback (HTTP/2 with prior knowledge when h2)
// and counts its open connections.
func countedServer(t *testing.T, h2 bool, h http.Handler) (string, *atomic.Int32) {
	addr, open, _ := countedServerTotal(t, h2, h)
	return addr, open
}

// countedServerTotal is countedServer, also counting every connection it accepted.
func countedServerTotal(t *testing.T, h2 bool, h http.Handler) (string, *atomic.Int32, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open, total := &atomic.Int32{}, &atomic.Int32{}
	var protos http.Protocols
	protos.SetHTTP1(!h2)
	protos.SetUnencryptedHTTP2(h2)
	srv := &http.Server{Handler: h, Protocols: &protos, ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
			total.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String(), open, total
}

// An endpoint that leaves its cluster loses its pooled connections: the
// request under way on one finishes, then the connection closes, and
// the idle ones close at once. Before, every endpoint that ever left (a
// pod replaced by a rolling update) kept its pool and its connections for
// the life of the proxy.
func TestPoolOfARemovedEndpointCloses(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			entered, release := make(chan struct{}, 1), make(chan struct{})
			a, aOpen := countedServer(t, e.h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					entered <- struct{}{}
					<-release
				}
				_, _ = io.WriteString(w, "a")
			}))
			b, _ := countedServer(t, e.h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "b") }))
			adjust := func(*cluster.Cluster) {}
			if e.h2 {
				adjust = upstreamHTTP2
			}
			var st xdsclient.State
			p, front := startProxyWith(t, a, adjust, nil, proxySetup{applied: &st})
			if code, body, _ := e.do(t, front, "GET", "/"); code != 200 || body != "a" {
				t.Fatalf("before: %d %q", code, body)
			}
			type answer struct {
				code int
				body string
			}
			slow := make(chan answer, 1)
			go func() {
				code, body, _ := e.do(t, front, "GET", "/slow")
				slow <- answer{code, body}
			}()
			select {
			case <-entered:
			case <-time.After(10 * time.Second):
				t.Fatal("the slow request did not reach the upstream")
			}

			moved := staticCluster("up", b)
			adjust(moved)
			next := xdsclient.State{}
			for typ, rs := range st {
				next[typ] = map[string]*anypb.Any{}
				for name, r := range rs {
					next[typ][name] = r
				}
			}
			next[resource.ClusterType]["up"] = mustAny(t, moved)
			if _, err := p.Apply(next, resource.ClusterType); err != nil {
				t.Fatal(err)
			}
			if code, body, _ := e.do(t, front, "GET", "/"); code != 200 || body != "b" {
				t.Errorf("after the endpoint moved: %d %q, want 200 \"b\"", code, body)
			}
			close(release)
			select {
			case got := <-slow:
				if got.code != 200 || got.body != "a" {
					t.Errorf("the request under way when its endpoint left: %d %q, want it to finish: 200 \"a\"", got.code, got.body)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the request under way did not finish")
			}
			deadline := time.Now().Add(3 * retireEvery)
			for aOpen.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := aOpen.Load(); n > 0 {
				t.Errorf("%d connections to the endpoint that left are still open", n)
			}
		})
	}
}

// withIdleTimeout sets a cluster's idle_timeout in its HttpProtocolOptions,
// beside the protocol already set there.
func withIdleTimeout(d time.Duration) func(*cluster.Cluster) {
	return func(c *cluster.Cluster) {
		var o httpopts.HttpProtocolOptions
		if a := c.TypedExtensionProtocolOptions["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]; a != nil {
			if err := a.UnmarshalTo(&o); err != nil {
				panic(err)
			}
		}
		if o.UpstreamProtocolOptions == nil { // HTTP/1.1, said as Istio says it
			o.UpstreamProtocolOptions = &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{HttpProtocolOptions: &core.Http1ProtocolOptions{}}}}
		}
		o.CommonHttpProtocolOptions = &core.HttpProtocolOptions{IdleTimeout: durationpb.New(d)}
		setProtocol(c, &o)
	}
}

// A pooled connection that carried no request for its cluster's
// idle_timeout closes (Envoy's rule; an hour when the cluster says
// nothing), and so does the pool of an address no longer called: a
// passthrough cluster's pools, one per address a client ever called,
// stayed before for the life of the proxy.
func TestIdleUpstreamConnectionsClose(t *testing.T) {
	for _, e := range engines {
		t.Run(e.name, func(t *testing.T) {
			t.Parallel()
			up, open := countedServer(t, e.h2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
			adjust := withIdleTimeout(300 * time.Millisecond)
			if e.h2 {
				adjust = func(c *cluster.Cluster) { upstreamHTTP2(c); withIdleTimeout(300 * time.Millisecond)(c) }
			}
			p, front := startProxy(t, up, adjust, nil)
			if got := p.Snapshot().Clusters["up"].IdleTimeout; got != 300*time.Millisecond {
				t.Fatalf("the cluster's idle timeout is %s, want 300ms", got)
			}
			if code, body, _ := e.do(t, front, "GET", "/"); code != 200 || body != "ok" {
				t.Fatalf("%d %q", code, body)
			}
			deadline := time.Now().Add(3 * sweepEvery)
			for open.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := open.Load(); n > 0 {
				t.Errorf("%d upstream connections still open %s after their last request", n, 3*sweepEvery)
			}
			if p.anyPools() {
				eventuallyT(t, "the unused pool to go", func() bool { return !p.anyPools() })
			}
			// Used again, the pool is made again.
			if code, body, _ := e.do(t, front, "GET", "/"); code != 200 || body != "ok" {
				t.Fatalf("after the pool went: %d %q", code, body)
			}
		})
	}
}

// A cluster that says nothing keeps Envoy's hour; a negative timeout is refused.
func TestClusterIdleTimeout(t *testing.T) {
	p, _ := startProxy(t, "127.0.0.1:9", nil, nil)
	if got := p.Snapshot().Clusters["up"].IdleTimeout; got != time.Hour {
		t.Errorf("default idle timeout %s, want 1h", got)
	}
	c := staticCluster("up", "127.0.0.1:9")
	withIdleTimeout(-time.Second)(c)
	var st xdsclient.State
	startProxyWith(t, "127.0.0.1:9", nil, nil, proxySetup{applied: &st})
	st[resource.ClusterType]["up"] = mustAny(t, c)
	if _, err := New(Options{Log: slog.New(slog.DiscardHandler)}).Apply(st, resource.ClusterType); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("a negative idle timeout: %v, want it refused", err)
	}
}

// A client connection that outlives its pool (unused for the idle timeout,
// so gone) does not keep the gone pool: its next requests share one new
// upstream connection, not one each.
func TestClientOutlivesItsPool(t *testing.T) {
	up, open, total := countedServerTotal(t, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	p, front := startProxy(t, up, withIdleTimeout(300*time.Millisecond), nil)
	c := dialRaw(t, front)
	get := func() {
		t.Helper()
		for _, resp := range c.do("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "GET") {
			if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || string(b) != "ok" {
				t.Fatalf("%d %q", resp.StatusCode, b)
			}
		}
	}
	get()
	eventuallyT(t, "the idle upstream connection to close and its pool to go", func() bool { return open.Load() == 0 && !p.anyPools() })
	_ = c.c.SetDeadline(time.Now().Add(10 * time.Second))
	for range 3 {
		get()
	}
	if n := total.Load(); n != 2 {
		t.Errorf("%d upstream connections in all, want 2: the first, and one for the three requests after its pool went", n)
	}
}
