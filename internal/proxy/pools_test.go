package proxy

import (
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// countedServer serves h on loopback (HTTP/2 with prior knowledge when h2)
// and counts its open connections.
func countedServer(t *testing.T, h2 bool, h http.Handler) (string, *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	open := &atomic.Int32{}
	var protos http.Protocols
	protos.SetHTTP1(!h2)
	protos.SetUnencryptedHTTP2(h2)
	srv := &http.Server{Handler: h, Protocols: &protos, ConnState: func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			open.Add(1)
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
	}}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String(), open
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
