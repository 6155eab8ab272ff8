package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// serveConns accepts connections on a loopback port until the test ends,
// each handled by handle on its own goroutine (n counts them from 1) and
// closed after it.
func serveConns(t *testing.T, handle func(c net.Conn, n int)) (addr string, conns *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns = &atomic.Int32{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n := int(conns.Add(1))
			go func() {
				defer c.Close()
				handle(c, n)
			}()
		}
	}()
	return l.Addr().String(), conns
}

// rawUpstream answers each request on a connection with answer(n, i): n
// counts connections from 1, i requests on the connection from 1.
func rawUpstream(t *testing.T, answer func(conn, req int) string) (addr string, conns *atomic.Int32) {
	t.Helper()
	return serveConns(t, func(c net.Conn, n int) {
		br := bufio.NewReader(c)
		for i := 1; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			if _, err := io.WriteString(c, answer(n, i)); err != nil {
				return
			}
		}
	})
}

// An upstream that sends more than its response (a second, unasked-for
// response behind it) never gets its connection reused: the next request
// must not be answered by what it smuggled.
func TestUpstreamConnectionWithUnreadBytesIsNotReused(t *testing.T) {
	up, conns := rawUpstream(t, func(conn, _ int) string {
		if conn == 1 {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
	})
	// Every way a request reaches an HTTP/1.1 upstream: the loop,
	// net/http's handler, HTTP/2 clients; requests that may be sent twice
	// and those that may not.
	for _, e := range []engine{engines[0], engines[1], engines[3]} {
		for _, method := range []string{"GET", "POST"} {
			conns.Store(0)
			_, front := startHTTPProxy(t, up, nil)
			if code, body, _ := e.do(t, front, method, "/a"); code != 200 || body != "ok" {
				t.Fatalf("%s %s: first answer %d %q", e.name, method, code, body)
			}
			if code, body, _ := e.do(t, front, method, "/b"); code != 200 || body != "fine" {
				t.Errorf("%s %s: second answer %d %q, want 200 \"fine\" from a new connection", e.name, method, code, body)
			}
			if n := conns.Load(); n != 2 {
				t.Errorf("%s %s: %d upstream connections, want 2", e.name, method, n)
			}
		}
	}
}

// A chunked response that breaks its framing (no CRLF after a chunk's
// data) ends the client's connection and the upstream's: nothing after it
// is read as a response.
func TestMalformedChunkedResponseIsNotRelayedAsValid(t *testing.T) {
	up, conns := rawUpstream(t, func(conn, _ int) string {
		if conn == 1 {
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
	})
	_, front := startHTTPProxy(t, up, nil)
	c := dialRaw(t, front)
	if _, err := io.WriteString(c.c, "GET /a HTTP/1.1\r\nHost: profile\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err == nil {
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("a malformed chunked body was relayed as complete: %q", b)
		}
	}
	// The proxy closes the client's connection rather than going on as if
	// the response were whole.
	_ = c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(c.br); err != nil {
		t.Fatalf("the client's connection stayed open after a malformed response: %v", err)
	}
	if code, body, _ := engines[0].do(t, front, "GET", "/b"); code != 200 || body != "fine" || conns.Load() != 2 {
		t.Errorf("the next request: %d %q over %d upstream connections, want \"fine\" over a new one", code, body, conns.Load())
	}
}

// startLimited is a proxy with limits of its own on one listener "front"
// whose chain ends in filter (tcp_proxy or an HTTP connection manager) to
// the static cluster "up" at upstream (HTTP/2 when h2).
func startLimited(t *testing.T, limits Limits, upstream string, filter *listener.Filter, h2 bool) (*Proxy, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	front := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	up := staticCluster("up", upstream)
	if h2 {
		upstreamHTTP2(up)
	}
	st := xdsclient.State{
		resource.ClusterType: {"up": mustAny(t, up)},
		resource.ListenerType: {"front": mustAny(t, &listener.Listener{Name: "front", Address: socket(front),
			FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{filter}}}})},
	}
	p := New(Options{Log: slog.New(slog.DiscardHandler), Limits: limits})
	if _, err := p.Apply(st, resource.ListenerType); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Drain(context.Background()) })
	return p, front.String()
}

func tcpFilter(t *testing.T, idle *durationpb.Duration) *listener.Filter {
	return &listener.Filter{Name: "envoy.filters.network.tcp_proxy", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(t,
		&tcpv3.TcpProxy{StatPrefix: "up", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "up"}, IdleTimeout: idle})}}
}

func httpFilter(t *testing.T) *listener.Filter {
	m := &hcm.HttpConnectionManager{StatPrefix: "front",
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{Name: "front", VirtualHosts: []*routev3.VirtualHost{{
			Name: "up", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "up"}}}}}}}}},
		HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}}}
	return &listener.Filter{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(t, m)}}
}

// echoTCP echoes every connection.
func echoTCP(t *testing.T) string {
	t.Helper()
	addr, _ := serveConns(t, func(c net.Conn, _ int) { _, _ = io.Copy(c, c) })
	return addr
}

// closedWithin says whether the server closes c within d (reading, and
// discarding, what it sends meanwhile).
func closedWithin(c net.Conn, d time.Duration) bool {
	_ = c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	return err == nil // EOF: closed; a timeout is an error
}

// A listener holds at most its limit of connections: one more is closed
// at once, and counted; when one leaves, a new one is served again.
func TestListenerConnectionLimit(t *testing.T) {
	p, front := startLimited(t, Limits{ConnectionsPerListener: 2}, echoTCP(t), tcpFilter(t, nil), false)
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatalf("a connection within the limit: %v", err)
		}
		held = append(held, c)
	}
	extra, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedWithin(extra, 5*time.Second) {
		t.Fatal("a connection beyond the limit was kept open")
	}
	if got := testutil.ToFloat64(p.stats.cxOverflow.WithLabelValues("front")); got != 1 {
		t.Errorf("envoy_listener_downstream_cx_overflow: %v, want 1", got)
	}
	held[0].Close()
	eventuallyT(t, "a new connection served once one left", func() bool {
		c, err := net.Dial("tcp", front)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = c.Write([]byte("y"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 1)
		_, err = io.ReadFull(c, b)
		return err == nil
	})
}

// A client dribbling a request head is cut off at the header timeout, by
// the HTTP/1.1 loop and by net/http alike; one idle between requests is not.
func TestRequestHeadTimeout(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	_, front := startLimited(t, Limits{HeaderTimeout: 300 * time.Millisecond}, up.Listener.Addr().String(), httpFilter(t), false)
	for _, begun := range []string{"GET / HTTP/1.1\r\nHost: a\r\n", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"} {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, begun); err != nil {
			t.Fatal(err)
		}
		// Still dribbling, well within the idle timeout.
		time.Sleep(100 * time.Millisecond)
		_, _ = io.WriteString(c, "X-A: 1\r\n")
		if !closedWithin(c, 3*time.Second) {
			t.Errorf("a head begun with %q and never finished was not cut off", begun)
		}
	}
	// Idle between requests is the idle timeout's business, not the head's.
	c := dialRaw(t, front)
	if r := c.do("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET")[0]; r.StatusCode != 200 {
		t.Fatalf("first request: %d", r.StatusCode)
	}
	time.Sleep(600 * time.Millisecond)
	if r := c.do("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET")[0]; r.StatusCode != 200 {
		t.Fatalf("a request after an idle pause: %d", r.StatusCode)
	}
}

// A TCP relay that carries nothing either way for its idle timeout is
// closed; one that keeps talking is not. A route's idle_timeout wins.
func TestTCPRelayIdleTimeout(t *testing.T) {
	echo := echoTCP(t)
	_, front := startLimited(t, Limits{TCPIdleTimeout: 400 * time.Millisecond}, echo, tcpFilter(t, nil), false)
	talk := func(c net.Conn) error {
		if _, err := c.Write([]byte("z")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 1)
		_, err := io.ReadFull(c, b)
		return err
	}
	busy, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for range 6 { // 1.2 s, three idle timeouts, never quiet for one
		if err := talk(busy); err != nil {
			t.Fatalf("a relay in use was cut: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	quiet, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	if err := talk(quiet); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(quiet, 3*time.Second) {
		t.Error("a quiet relay outlived its idle timeout")
	}
	// The route says 0: no idle timeout.
	_, front2 := startLimited(t, Limits{TCPIdleTimeout: 300 * time.Millisecond}, echo, tcpFilter(t, durationpb.New(0)), false)
	kept, err := net.Dial("tcp", front2)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	if err := talk(kept); err != nil {
		t.Fatal(err)
	}
	if closedWithin(kept, time.Second) {
		t.Error("a relay whose route turns the idle timeout off was closed")
	}
}

// CVE-2023-44487: a client that opens streams and resets them at once
// loses its connection (GOAWAY ENHANCE_YOUR_CALM), counted; the work it
// started is bounded meanwhile, and other clients are served.
func TestH2RapidResetClosesTheConnection(t *testing.T) {
	var started atomic.Int32
	h2 := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	p, front := startLimited(t, Limits{PrematureResets: 50}, h2, httpFilter(t), true)
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	_ = fr.WriteSettings()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "a"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	goaway := make(chan http2.ErrCode, 1)
	go func() {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(goaway)
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goaway <- g.ErrCode
				return
			}
		}
	}()
	sent := 0
	for id := uint32(1); id < 2000; id += 2 {
		if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}) != nil ||
			fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
			break
		}
		sent++
	}
	select {
	case code, ok := <-goaway:
		if !ok || code != http2.ErrCodeEnhanceYourCalm {
			t.Fatalf("after %d opened-and-reset streams: GOAWAY %v (received: %v), want ENHANCE_YOUR_CALM", sent, code, ok)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%d streams opened and reset, and the connection is still open", sent)
	}
	if got := testutil.ToFloat64(p.stats.prematureResets); got != 1 {
		t.Errorf("envoy_http_downstream_rq_too_many_premature_resets: %v, want 1", got)
	}
	if n := started.Load(); n > 200 {
		t.Errorf("%d upstream requests started by a client that reset them all, want the work bounded", n)
	}
	if code, _, _ := h2Do(t, front, "GET", "/"); code != 200 {
		t.Errorf("another client after the attack: %d", code)
	}
}

// eventuallyT polls cond for up to 5 s.
func eventuallyT(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting: %s", what)
}

// An HTTP/2 client dribbling a frame is cut off at the header timeout; one
// idle between frames is not.
func TestH2FrameTimeout(t *testing.T) {
	h2 := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	_, front := startLimited(t, Limits{HeaderTimeout: 300 * time.Millisecond}, h2, httpFilter(t), true)
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	_ = fr.WriteSettings()
	time.Sleep(500 * time.Millisecond)  // idle between frames: fine
	_, _ = c.Write([]byte{0, 0, 40, 1}) // the first bytes of a HEADERS frame, then nothing
	if !closedWithin(c, 3*time.Second) {
		t.Fatal("a dribbled frame was not cut off")
	}
	if code, _, _ := h2Do(t, front, "GET", "/"); code != 200 {
		t.Errorf("a client sending whole frames: %d", code)
	}
}
