package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// rawClient speaks HTTP/1.1 on one connection, as a sidecar's app does.
type rawClient struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

// do writes raw request bytes and reads one response per method given.
func (rc *rawClient) do(raw string, methods ...string) []*http.Response {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, raw); err != nil {
		rc.t.Fatal(err)
	}
	var out []*http.Response
	for _, m := range methods {
		resp, err := http.ReadResponse(rc.br, &http.Request{Method: m})
		if err != nil {
			rc.t.Fatalf("reading the answer to %q: %v", raw, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			rc.t.Fatalf("reading the body of the answer to %q: %v", raw, err)
		}
		resp.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, resp)
	}
	return out
}

func body(r *http.Response) string { b, _ := io.ReadAll(r.Body); return string(b) }

// inLoop counts the downstream connections the HTTP/1.1 loop serves (not
// handed over to net/http).
func inLoop(p *Proxy) int {
	n := 0
	p.h1Conns.Range(func(any, any) bool { n++; return true })
	return n
}

// One keep-alive connection carries requests of every framing: bodies in
// and out, HEAD, 204, chunked and large responses; the mesh's headers are
// added upstream and the exchange headers never reach the app.
func TestH1LoopServesAKeepAliveConnection(t *testing.T) {
	var seen atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Clone())
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Header().Set(telemetry.HeaderMetadata, "c2VjcmV0")
			fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RequestURI(), b)
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/chunked":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/large":
			_, _ = io.WriteString(w, strings.Repeat("x", 1<<20))
		}
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	c := dialRaw(t, front)

	r := c.do("POST /echo?q=1 HTTP/1.1\r\nHost: profile\r\nContent-Length: 5\r\nX-Forwarded-Client-Cert: forged\r\n\r\nhello", "POST")[0]
	if got := body(r); r.StatusCode != 200 || got != "POST /echo?q=1 hello" {
		t.Fatalf("POST: %d %q", r.StatusCode, got)
	}
	if r.Header.Get(telemetry.HeaderMetadata) != "" {
		t.Errorf("the upstream's exchange header reached the client")
	}
	h := seen.Load().(http.Header)
	if _, id := h[telemetry.HeaderMetadataID]; h.Get("X-Request-Id") == "" || !id || h.Get(telemetry.HeaderMetadata) == "" || h.Get("X-Forwarded-Client-Cert") != "" {
		t.Errorf("upstream saw headers %v: want X-Request-Id and the exchange headers added, the client's XFCC removed", h)
	}
	rs := c.do("HEAD /echo HTTP/1.1\r\nHost: profile\r\n\r\nGET /empty HTTP/1.1\r\nHost: profile\r\n\r\nGET /chunked HTTP/1.1\r\nHost: profile\r\n\r\nGET /large HTTP/1.1\r\nHost: profile\r\n\r\n",
		"HEAD", "GET", "GET", "GET") // pipelined
	if rs[0].StatusCode != 200 || body(rs[0]) != "" {
		t.Errorf("HEAD: %d", rs[0].StatusCode)
	}
	if rs[1].StatusCode != 204 {
		t.Errorf("204: %d", rs[1].StatusCode)
	}
	if got := body(rs[2]); got != "part0;part1;part2;" || len(rs[2].TransferEncoding) == 0 {
		t.Errorf("chunked: %q, transfer encoding %v", got, rs[2].TransferEncoding)
	}
	if got := body(rs[3]); len(got) != 1<<20 {
		t.Errorf("large: %d bytes", len(got))
	}
	if n := inLoop(p); n != 1 {
		t.Errorf("%d connections in the loop, want 1: every request above is one it serves", n)
	}
	if r := c.do("GET /empty HTTP/1.1\r\nHost: profile\r\nConnection: close\r\n\r\n", "GET")[0]; !r.Close {
		t.Errorf("the answer to Connection: close does not say it closes")
	}
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: %v, want EOF", err)
	}
}

// A request the loop does not take (here a chunked upload) is served by
// net/http on the same connection, and so is every request after it.
func TestH1LoopHandsOverToNetHTTP(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", r.URL.Path, len(b))
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	c := dialRaw(t, front)
	rs := c.do("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"+
		"GET /c HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "POST", "GET")
	for i, want := range []string{"/a 0", "/b 3", "/c 0"} {
		if got := body(rs[i]); rs[i].StatusCode != 200 || got != want {
			t.Errorf("request %d: %d %q, want %q", i, rs[i].StatusCode, got, want)
		}
	}
	if n := inLoop(p); n != 0 {
		t.Errorf("%d connections still in the loop after the handover", n)
	}
}

// Retries (another attempt after a 503, numbered in X-Envoy-Attempt-Count)
// and the route timeout (504 when the upstream is slower).
func TestH1LoopRetriesAndTimeouts(t *testing.T) {
	var calls atomic.Int32
	var attempt atomic.Value
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flaky":
			if calls.Add(1)%2 == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			attempt.Store(r.Header.Get("X-Envoy-Attempt-Count"))
			_, _ = io.WriteString(w, "ok")
		case "/slow":
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		}
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), func(a *routev3.RouteAction) {
		a.Timeout = durationpb.New(300 * time.Millisecond)
		a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(2)}
	})
	c := dialRaw(t, front)
	r := c.do("POST /flaky HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", "POST")[0]
	if r.StatusCode != 200 || attempt.Load() != "2" {
		t.Errorf("after a 503: %d, attempt %v; want 200 on attempt 2", r.StatusCode, attempt.Load())
	}
	start := time.Now()
	r = c.do("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n", "GET")[0]
	if got := body(r); r.StatusCode != 504 || !strings.Contains(got, "upstream request timeout") || time.Since(start) > 3*time.Second {
		t.Errorf("slow upstream: %d %q after %s; want 504 after the 300 ms timeout (per attempt, 3 attempts at most)", r.StatusCode, got, time.Since(start))
	}
	r = c.do("GET /flaky HTTP/1.1\r\nHost: h\r\n\r\n", "GET")[0]
	if r.StatusCode != 200 {
		t.Errorf("the connection after a timeout: %d", r.StatusCode)
	}
	if n := inLoop(p); n != 1 {
		t.Errorf("%d connections in the loop, want 1", n)
	}
}

// An upstream that closes every connection after one answer without
// saying so: a POST (never sent twice) finds out before writing, a GET by
// the failure, and both are answered.
func TestH1LoopSurvivesStaleUpstreamConnections(t *testing.T) {
	addr, conns := closingUpstream(t)
	p, front := startHTTPProxy(t, addr, nil)
	c := dialRaw(t, front)
	for i, req := range []string{"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx", "GET / HTTP/1.1\r\nHost: h\r\n\r\n"} {
		method, _, _ := strings.Cut(req, " ")
		if r := c.do(req, method)[0]; r.StatusCode != 200 || body(r) != "ok" {
			t.Fatalf("request %d: %d", i, r.StatusCode)
		}
		time.Sleep(50 * time.Millisecond) // the upstream closes meanwhile
	}
	if n := conns.Load(); n < 3 {
		t.Errorf("%d upstream connections for 3 requests to an upstream that closes each", n)
	}
	if n := inLoop(p); n != 1 {
		t.Errorf("%d connections in the loop, want 1", n)
	}
}

// Drain closes idle keep-alive connections at once.
func TestH1LoopDrainClosesIdleConnections(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	c := dialRaw(t, front)
	if r := c.do("GET / HTTP/1.1\r\nHost: h\r\n\r\n", "GET")[0]; r.StatusCode != 200 {
		t.Fatal(r.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Errorf("the idle connection after Drain: %v, want EOF", err)
	}
}

// A client that leaves while the upstream thinks resets the upstream
// request (Envoy's behaviour), instead of holding it until it answers.
func TestH1LoopResetsTheUpstreamOfAClientGone(t *testing.T) {
	cancelled := make(chan time.Duration, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		select {
		case <-r.Context().Done():
			cancelled <- time.Since(start)
		case <-time.After(10 * time.Second):
		}
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	c := dialRaw(t, front)
	if _, err := io.WriteString(c.c, "GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := inLoop(p); n != 1 {
		t.Fatalf("%d connections in the loop, want 1", n)
	}
	c.c.Close()
	select {
	case d := <-cancelled:
		if d > 5*time.Second {
			t.Errorf("upstream request reset after %s", d)
		}
	case <-time.After(6 * time.Second):
		t.Fatal("the upstream request outlived its client")
	}
}

// A slow answer on a connection whose client stays is answered as usual,
// and the connection serves the next request (the watcher gave its reader back).
func TestH1LoopSlowAnswerKeepsTheConnection(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(watchDelay + 300*time.Millisecond)
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	defer up.Close()
	_, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	c := dialRaw(t, front)
	rs := c.do("GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n", "GET", "GET")
	if body(rs[0]) != "/slow" || body(rs[1]) != "/next" {
		t.Errorf("answers: %d %d", rs[0].StatusCode, rs[1].StatusCode)
	}
}

// A route's prefix and host rewrites reach the upstream; the query stays.
func TestH1LoopRewrites(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Host+" "+r.URL.RequestURI())
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), func(a *routev3.RouteAction) {
		a.PrefixRewrite = "/v2/"
		a.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "profile-v2"}
	})
	c := dialRaw(t, front)
	if got := body(c.do("GET /profile?id=4 HTTP/1.1\r\nHost: profile\r\n\r\n", "GET")[0]); got != "profile-v2 /v2/profile?id=4" {
		t.Errorf("upstream saw %q, want \"profile-v2 /v2/profile?id=4\"", got)
	}
	if n := inLoop(p); n != 1 {
		t.Errorf("%d connections in the loop, want 1", n)
	}
}
