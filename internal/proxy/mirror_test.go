package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/http2"

	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// mirrored is what the mirror's upstream received.
type mirrored struct{ host, method, target, body, test string }

// startMirror runs the mirror's upstream: it reports each request, then
// answers after wait.
func startMirror(t *testing.T, wait time.Duration) (string, chan mirrored) {
	got := make(chan mirrored, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- mirrored{r.Host, r.Method, r.URL.RequestURI(), string(b), r.Header.Get("X-Test")}
		time.Sleep(wait)
		_, _ = io.WriteString(w, "from the mirror")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String(), got
}

// withMirror is a route mirroring to the cluster "shadow" (at addr) at
// numerator/100 percent, and the state that defines "shadow".
func withMirror(t *testing.T, addr string, percent uint32) (func(*routev3.RouteAction), proxySetup) {
	shadow := staticCluster("shadow", addr)
	route := func(a *routev3.RouteAction) {
		a.RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow",
			RuntimeFraction: &core.RuntimeFractionalPercent{DefaultValue: &typev3.FractionalPercent{Numerator: percent * 10000, Denominator: typev3.FractionalPercent_MILLION}}}}
	}
	return route, proxySetup{more: xdsclient.State{resource.ClusterType: {"shadow": mustAny(t, shadow)}}}
}

func next(t *testing.T, got chan mirrored) mirrored {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("the mirror got no copy")
		return mirrored{}
	}
}

func none(t *testing.T, got chan mirrored) {
	t.Helper()
	select {
	case m := <-got:
		t.Fatalf("the mirror got a copy: %+v", m)
	case <-time.After(300 * time.Millisecond):
	}
}

// A mirrored route answers from its destination, at the destination's
// pace, while its mirror gets a copy of each request (headers, body,
// "-shadow" host) from the HTTP/1.1 loop, net/http's handler and the
// HTTP/2 relay alike; a body too large to keep is not mirrored and is
// counted.
func TestMirrorGetsACopy(t *testing.T) {
	main := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "from main")
	}))
	defer main.Close()
	addr, got := startMirror(t, 2*time.Second)
	route, setup := withMirror(t, addr, 100)
	p, front := startProxyWith(t, main.Listener.Addr().String(), nil, route, setup)

	// GET on a keep-alive HTTP/1.1 connection: the loop hands it over.
	c := dialRaw(t, front)
	start := time.Now()
	if b := body(c.do("GET /profile?id=4 HTTP/1.1\r\nHost: profile:8080\r\nX-Test: one\r\n\r\n", "GET")[0]); b != "from main" {
		t.Fatalf("answer %q", b)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the answer waited for the mirror: %s", d)
	}
	if m := next(t, got); m != (mirrored{"profile-shadow:8080", "GET", "/profile?id=4", "", "one"}) {
		t.Errorf("mirror got %+v", m)
	}

	// A POST's body goes to both.
	resp, err := http.Post("http://"+front+"/accounts", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if b := body(resp); b != "from main" {
		t.Errorf("answer %q", b)
	}
	resp.Body.Close()
	if m := next(t, got); m.method != "POST" || m.body != "hello" || !strings.Contains(m.host, "-shadow:") {
		t.Errorf("mirror got %+v", m)
	}

	// HTTP/2 with prior knowledge, through the relay.
	h2c := &http.Client{Transport: &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}}}
	req, _ := http.NewRequest("PUT", "http://"+front+"/h2", strings.NewReader("over h2"))
	req.Header.Set("X-Test", "h2")
	resp, err = h2c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if b := body(resp); b != "from main" || resp.ProtoMajor != 2 {
		t.Errorf("answer %q over HTTP/%d", b, resp.ProtoMajor)
	}
	resp.Body.Close()
	if m := next(t, got); m.method != "PUT" || m.body != "over h2" || m.test != "h2" {
		t.Errorf("mirror got %+v", m)
	}

	// Over 64 KiB: answered, not mirrored, counted.
	resp, err = http.Post("http://"+front+"/big", "text/plain", bytes.NewReader(make([]byte, maxRetryBody+1)))
	if err != nil {
		t.Fatal(err)
	}
	if b := body(resp); b != "from main" {
		t.Errorf("answer %q", b)
	}
	resp.Body.Close()
	none(t, got)
	if n := testutil.ToFloat64(p.stats.mirrors.WithLabelValues("shadow", "dropped")); n != 1 {
		t.Errorf("%v copies counted as dropped, want 1", n)
	}
	// The mirror answers after 2 s: the copies are counted as it does.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(p.stats.mirrors.WithLabelValues("shadow", "sent")) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%v copies counted as sent, want 3", testutil.ToFloat64(p.stats.mirrors.WithLabelValues("shadow", "sent")))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mirrorPercentage mirrors about that share of requests.
func TestMirrorShare(t *testing.T) {
	main := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "from main") }))
	defer main.Close()
	addr, got := startMirror(t, 0)
	route, setup := withMirror(t, addr, 25)
	_, front := startProxyWith(t, main.Listener.Addr().String(), nil, route, setup)
	for range 400 {
		resp, err := http.Get("http://" + front + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(got); n < 60 || n > 140 {
		t.Errorf("%d of 400 requests mirrored at 25%%", n)
	}
}

// Envoy's shadow host: the suffix goes on the name, before a port.
func TestShadowHost(t *testing.T) {
	for in, want := range map[string]string{"profile": "profile-shadow", "profile:8080": "profile-shadow:8080", "[::1]:80": "[::1]-shadow:80", "[::1]": "[::1]-shadow"} {
		if got := shadowHost(in); got != want {
			t.Errorf("shadowHost(%q) = %q, want %q", in, got, want)
		}
	}
}
