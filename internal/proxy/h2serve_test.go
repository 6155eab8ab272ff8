package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// h2cServer serves h on loopback with HTTP/2 prior knowledge only, as an
// app behind a sidecar does for gRPC; it returns the address.
func h2cServer(t testing.TB, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// h2cClient speaks HTTP/2 with prior knowledge, as a gRPC client does.
func h2cClient() *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{Protocols: &protos}}
}

// h2Streams counts the streams the relay has open on its downstream connections.
func h2Streams(p *Proxy) int {
	n := 0
	p.h2Conns.Range(func(k, _ any) bool {
		c := k.(*h2Conn)
		c.mu.Lock()
		n += len(c.streams)
		c.mu.Unlock()
		return true
	})
	return n
}

// The relay carries bodies far beyond every flow-control window both
// ways, trailers, many concurrent streams on one connection (more than an
// upstream's first stream limit), and the mesh's headers as the HTTP/1.1
// path sets them.
func TestH2RelaysStreams(t *testing.T) {
	var seen sync.Map
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, r.Header.Clone())
		switch r.URL.Path {
		case "/echo":
			w.Header().Set("Trailer", "X-Sum")
			h := sha256.New()
			n, _ := io.Copy(io.MultiWriter(w, h), r.Body)
			w.Header().Set("X-Sum", fmt.Sprintf("%d:%x", n, h.Sum(nil)))
		case "/big":
			w.Header().Set(telemetry.HeaderMetadata, "from-the-app")
			_, _ = w.Write(bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16))
		case "/slow":
			time.Sleep(100 * time.Millisecond)
			_, _ = io.WriteString(w, "slow")
		default:
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	p, front := startProxy(t, up, upstreamAsDownstream, nil)
	c := h2cClient()

	body := bytes.Repeat([]byte("x"), 3<<20+17)
	req, _ := http.NewRequest("POST", "http://"+front+"/echo", bytes.NewReader(body))
	req.Header.Set("X-Forwarded-Client-Cert", "forged")
	req.Header.Set(telemetry.HeaderMetadata, "forged")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	sum := sha256.Sum256(body)
	if err != nil || !bytes.Equal(got, body) || resp.Trailer.Get("X-Sum") != fmt.Sprintf("%d:%x", len(body), sum) || resp.ProtoMajor != 2 {
		t.Fatalf("echo of %d bytes: %d bytes back, trailer %q, %s, %v", len(body), len(got), resp.Trailer.Get("X-Sum"), resp.Proto, err)
	}
	v, _ := seen.Load("/echo")
	h := v.(http.Header)
	if h.Get("X-Request-Id") == "" || h.Get("X-Forwarded-Client-Cert") != "" || len(h.Values(telemetry.HeaderMetadataID)) == 0 || h.Get(telemetry.HeaderMetadata) == "forged" {
		t.Errorf("upstream saw headers %v", h)
	}

	resp, err = c.Get("http://" + front + "/big")
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != 4<<20 || resp.Header.Get(telemetry.HeaderMetadata) != "" {
		t.Fatalf("4 MiB download: %d bytes, %v, metadata header %q", n, err, resp.Header.Get(telemetry.HeaderMetadata))
	}

	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 250 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Get("http://" + front + "/slow")
			if err != nil {
				failed.Add(1)
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "slow" {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of 250 concurrent streams failed", n)
	}
	if resp, err := c.Get("http://" + front + "/other"); err != nil || resp.StatusCode != http.StatusTeapot {
		t.Errorf("status relayed: %v %v", resp, err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := h2Streams(p); n != 0 {
		t.Errorf("%d streams still open after every answer", n)
	}
	n = 0
	p.h2Conns.Range(func(any, any) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d HTTP/2 downstream connections in the relay, want the client's one", n)
	}
}

// gRPC unary and server-streaming calls through the relay, and the
// request counted with its gRPC status.
func TestH2GRPC(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go func() { _ = gs.Serve(l) }()
	defer gs.Stop()
	p, front := startProxy(t, l.Addr().String(), upstreamHTTP2, nil)
	conn, err := grpc.NewClient(front, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(conn)
	if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Check: %v %v", r, err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check of an unknown service: %v, want NotFound", err)
	}
	w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := w.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVICE_UNKNOWN {
		t.Fatalf("Watch: %v %v", r, err)
	}
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	if r, err := w.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch after a change: %v %v", r, err)
	}
	var b strings.Builder
	mfs, _ := p.stats.Registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "istio_requests_total" {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					fmt.Fprintf(&b, "%s=%q ", l.GetName(), l.GetValue())
				}
				b.WriteString("\n")
			}
		}
	}
	if !strings.Contains(b.String(), `grpc_response_status="5"`) || !strings.Contains(b.String(), `request_protocol="grpc"`) {
		t.Errorf("istio_requests_total series:\n%s", b.String())
	}
}

// Retries (a 503, then a gRPC UNAVAILABLE in a trailers-only answer),
// the route timeout and the per-try timeout.
func TestH2RetriesAndTimeouts(t *testing.T) {
	var calls atomic.Int32
	var attempt atomic.Value
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/flaky":
			if calls.Add(1)%2 == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			attempt.Store(r.Header.Get("X-Envoy-Attempt-Count"))
			_, _ = w.Write(b)
		case "/unavailable":
			if calls.Add(1)%2 == 1 {
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Grpc-Status", "14")
				w.WriteHeader(200)
				return
			}
			_, _ = w.Write(b)
		case "/slow-once":
			if calls.Add(1)%2 == 1 {
				time.Sleep(time.Second)
			}
			_, _ = io.WriteString(w, "fast")
		case "/slow":
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
			}
		}
	}))
	_, front := startProxy(t, up, upstreamHTTP2, func(a *routev3.RouteAction) {
		a.Timeout = durationpb.New(700 * time.Millisecond)
		a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,unavailable", NumRetries: wrapperspb.UInt32(2), PerTryTimeout: durationpb.New(300 * time.Millisecond)}
	})
	c := h2cClient()
	post := func(path, body string) (int, string) {
		t.Helper()
		resp, err := c.Post("http://"+front+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, got := post("/flaky", "again"); code != 200 || got != "again" || attempt.Load() != "2" {
		t.Errorf("after a 503: %d %q on attempt %v; want 200 and the body replayed on attempt 2", code, got, attempt.Load())
	}
	calls.Store(0)
	if code, got := post("/unavailable", "grpc"); code != 200 || got != "grpc" {
		t.Errorf("after UNAVAILABLE: %d %q", code, got)
	}
	calls.Store(0)
	start := time.Now()
	if code, got := post("/slow-once", ""); code != 200 || got != "fast" || time.Since(start) > 900*time.Millisecond {
		t.Errorf("per-try timeout then a fast attempt: %d %q after %s", code, got, time.Since(start))
	}
	start = time.Now()
	if code, got := post("/slow", ""); code != 504 || !strings.Contains(got, "upstream request timeout") || time.Since(start) > 2*time.Second {
		t.Errorf("slow upstream: %d %q after %s; want 504 at the 700 ms route timeout", code, got, time.Since(start))
	}
}

// A client that resets its stream resets the upstream's; an upstream
// that is not there is a 503 with Envoy's text.
func TestH2ResetsAndUpstreamFailures(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			cancelled <- struct{}{}
		case <-time.After(10 * time.Second):
		}
	}))
	p, front := startProxy(t, up, upstreamHTTP2, nil)
	c := h2cClient()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+front+"/slow", nil)
	go func() { time.Sleep(200 * time.Millisecond); cancel() }()
	if _, err := c.Do(req); err == nil {
		t.Fatal("a cancelled request answered")
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request outlived its client's stream")
	}
	time.Sleep(50 * time.Millisecond)
	if n := h2Streams(p); n != 0 {
		t.Errorf("%d streams open after the reset", n)
	}

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	gone := l.Addr().String()
	l.Close()
	_, front = startProxy(t, gone, upstreamHTTP2, nil)
	resp, err := c.Get("http://" + front + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(b), "upstream connect error") {
		t.Errorf("no upstream: %d %q", resp.StatusCode, b)
	}
}

// Drain says GOAWAY: the stream in flight finishes, then the connection closes.
func TestH2Drain(t *testing.T) {
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	}))
	p, front := startProxy(t, up, upstreamHTTP2, nil)
	c := h2cClient()
	got := make(chan string, 1)
	go func() {
		resp, err := c.Get("http://" + front + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := p.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if g := <-got; g != "done" {
		t.Errorf("the stream in flight during Drain: %q", g)
	}
}

// frontRoute is the one route of startHTTPProxy's listener, for tests that
// set what the route builder has no helper for (faults).
func frontRoute(t *testing.T, p *Proxy) *config.Route {
	t.Helper()
	for _, c := range p.cur.Load().snap.Listeners["front"].Chains {
		if c.HTTP != nil && c.HTTP.Inline != nil {
			return c.HTTP.Inline.VirtualHosts[0].Routes[0]
		}
	}
	t.Fatal("no inline route on the front listener")
	return nil
}

// Answers of the proxy's own: a fault's abort and delay, and 404 for a
// host no virtual host takes, each counted with its response flag.
func TestH2LocalAnswers(t *testing.T) {
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "up") }))
	p, front := startProxy(t, up, upstreamHTTP2, nil)
	r := frontRoute(t, p)
	c := h2cClient()
	get := func() (int, string, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := c.Get("http://" + front + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), time.Since(start)
	}
	r.Fault = &config.Fault{AbortStatus: http.StatusTeapot, AbortShare: 1}
	if code, body, _ := get(); code != http.StatusTeapot || body != "fault filter abort\n" {
		t.Errorf("abort: %d %q", code, body)
	}
	r.Fault = &config.Fault{Delay: 300 * time.Millisecond, DelayShare: 1}
	if code, body, took := get(); code != 200 || body != "up" || took < 300*time.Millisecond {
		t.Errorf("delay: %d %q after %s", code, body, took)
	}
	r.Fault = nil
	req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
	req.Host = "elsewhere"
	p.cur.Load().snap.Listeners["front"].Chains[0].HTTP.Inline.VirtualHosts[0].Routes[0] = &config.Route{Prefix: "/nothing-matches"}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("no route: %d", resp.StatusCode)
	}
	var flags []string
	mfs, _ := p.stats.Registry.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "istio_requests_total" {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "response_flags" {
						flags = append(flags, l.GetValue())
					}
				}
			}
		}
	}
	for _, want := range []string{"FI", "DI", "NR"} {
		if !slices.Contains(flags, want) {
			t.Errorf("response flags counted %v, want %s among them", flags, want)
		}
	}
}

// rawH2 is a hand-driven HTTP/2 client connection: the preface and
// SETTINGS sent, frames read with their header blocks decoded.
type rawH2 struct {
	*http2.Framer
	buf bytes.Buffer
	enc *hpack.Encoder
}

func dialRawH2(t *testing.T, addr string) *rawH2 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = io.WriteString(conn, http2.ClientPreface)
	c := &rawH2{Framer: http2.NewFramer(conn, conn)}
	c.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.enc = hpack.NewEncoder(&c.buf)
	_ = c.WriteSettings()
	return c
}

// headers sends one HEADERS frame of name, value pairs.
func (c *rawH2) headers(t *testing.T, id uint32, end bool, fields ...string) {
	t.Helper()
	c.buf.Reset()
	for i := 0; i < len(fields); i += 2 {
		_ = c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	if err := c.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.buf.Bytes(), EndStream: end, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

// Malformed input costs its stream, not the connection: a header block
// HTTP/2 forbids is reset, frames of unknown type and on closed streams
// are ignored, and the next stream on the same connection is answered.
func TestH2BadFramesCostOnlyTheirStream(t *testing.T) {
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "up") }))
	_, front := startProxy(t, up, upstreamHTTP2, nil)
	fr := dialRawH2(t, front)
	headers := func(id uint32, fields ...string) { fr.headers(t, id, true, fields...) }
	get := []string{":method", "GET", ":scheme", "http", ":authority", "h", ":path", "/"}
	headers(1, append(get, "Bad-Upper-Case", "x")...)
	_ = fr.WriteRawFrame(0x42, 0, 0, []byte("an extension frame"))
	_ = fr.WriteData(1, true, []byte("late"))
	headers(3, get...)
	reset, answered := false, false
	for !answered {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading (reset %v): %v", reset, err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			reset = reset || f.StreamID == 1 && f.ErrCode == http2.ErrCodeProtocol
		case *http2.MetaHeadersFrame:
			if f.StreamID == 3 && f.PseudoValue("status") == "200" {
				answered = true
			}
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
	if !reset {
		t.Error("the malformed stream was not reset")
	}
}

// A request body longer or shorter than its content-length is malformed
// (RFC 9113, 8.1.1): the stream is reset and no upstream takes its body,
// whether the relay or net/http's handler (an HTTP/1.1 upstream, which
// would read the body by the header) serves it. A body
// that matches is relayed on the same connection.
func TestH2BodyMustMatchContentLength(t *testing.T) {
	for _, h1 := range []bool{false, true} {
		t.Run(map[bool]string{false: "HTTP/2 upstream", true: "HTTP/1.1 upstream"}[h1], func(t *testing.T) {
			var seen atomic.Int32
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// An upstream may see the head of a request before its body
				// breaks the rule (it streams, as through Envoy); none may
				// take the body of one as whole.
				b, err := io.ReadAll(r.Body)
				if err == nil && len(b) > 0 && r.URL.Path != "/good" {
					seen.Add(1)
				}
				_, _ = w.Write(b)
			})
			var front string
			if h1 {
				up := httptest.NewServer(h)
				defer up.Close()
				_, front = startHTTPProxy(t, up.Listener.Addr().String(), nil)
			} else {
				_, front = startProxy(t, h2cServer(t, h), upstreamHTTP2, nil)
			}
			fr := dialRawH2(t, front)
			post := func(id uint32, path string, end bool, length ...string) {
				fields := []string{":method", "POST", ":scheme", "http", ":authority", "h", ":path", path}
				for _, l := range length {
					fields = append(fields, "content-length", l)
				}
				fr.headers(t, id, end, fields...)
			}
			data := func(id uint32, end bool, s string) {
				if err := fr.WriteData(id, end, []byte(s)); err != nil {
					t.Fatal(err)
				}
			}
			post(1, "/longer", false, "3")
			data(1, false, "abc")
			data(1, true, "smuggled")
			post(3, "/shorter", false, "10")
			data(3, true, "abc")
			post(5, "/zero", false, "0")
			data(5, true, "x")
			post(7, "/none", true, "5")
			post(9, "/twice", false, "3", "4")
			data(9, true, "abc")
			post(11, "/nonsense", false, "3x")
			data(11, true, "abc")
			post(13, "/by-trailers", false, "4")
			data(13, false, "abc")
			fr.headers(t, 13, true, "x-t", "1") // trailers
			post(15, "/good", false, "4")
			data(15, true, "good")
			want := map[uint32]bool{1: true, 3: true, 5: true, 7: true, 9: true, 11: true, 13: true}
			var body []byte
			for answered := false; !answered; {
				f, err := fr.ReadFrame()
				if err != nil {
					t.Fatalf("reading (resets still due on %v): %v", want, err)
				}
				switch f := f.(type) {
				case *http2.RSTStreamFrame:
					if f.ErrCode == http2.ErrCodeProtocol {
						delete(want, f.StreamID)
					}
				case *http2.MetaHeadersFrame:
					if f.StreamID != 15 {
						t.Errorf("stream %d answered %s; want it reset", f.StreamID, f.PseudoValue("status"))
					}
				case *http2.DataFrame:
					if f.StreamID == 15 {
						body = append(body, f.Data()...)
						answered = f.StreamEnded()
					}
				case *http2.GoAwayFrame:
					t.Fatalf("GOAWAY %v", f.ErrCode)
				}
			}
			if string(body) != "good" {
				t.Errorf("the matching request got %q", body)
			}
			if len(want) > 0 {
				t.Errorf("streams %v were not reset with PROTOCOL_ERROR", want)
			}
			if n := seen.Load(); n != 0 {
				t.Errorf("the upstream saw %d of the malformed requests", n)
			}
		})
	}
}

// A client that stops reading its socket while an answer streams to it
// costs its own connection, not the streams of others that share the
// upstream connection with it.
func TestH2StuckClientDoesNotStallOthers(t *testing.T) {
	defer h2WriteTimeout.Store(h2WriteTimeout.Swap(int64(500 * time.Millisecond)))
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/flood" {
			chunk := bytes.Repeat([]byte("f"), 64<<10)
			for range 1024 {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
			return
		}
		_, _ = io.WriteString(w, "pong")
	}))
	_, front := startProxy(t, up, upstreamHTTP2, nil)
	c := h2cClient()
	if resp, err := c.Get("http://" + front + "/ping"); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
	}

	// The stuck client grants every window there is, asks for the flood,
	// and never reads.
	stuck, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	_ = stuck.(*net.TCPConn).SetReadBuffer(4 << 10)
	_, _ = io.WriteString(stuck, http2.ClientPreface)
	fr := http2.NewFramer(stuck, stuck)
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	_ = fr.WriteWindowUpdate(0, 1<<31-1-65535)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "h"}, {":path", "/flood"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: buf.Bytes(), EndStream: true, EndHeaders: true})
	time.Sleep(300 * time.Millisecond) // the flood fills the socket buffers

	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+front+"/ping", nil)
		resp, err := c.Do(req)
		if err != nil {
			cancel()
			t.Fatalf("call %d beside the stuck client: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if string(b) != "pong" {
			t.Fatalf("call %d: %q", i, b)
		}
	}
}

// An HTTP/2 client of an HTTP/1.1 upstream (Istio's http port; a browser
// at the ingress gateway, an app behind it) is answered over HTTP/1.1
// upstream: bodies both ways beyond every window, the upstream's trailers,
// the mesh's headers; and an HTTP/1.1 client of an HTTP/2 upstream (an
// http2 or grpc port) reaches it over HTTP/2.
func TestH2AndHTTP1UpstreamsMeetTheirClients(t *testing.T) {
	var proto atomic.Value
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto + " " + r.Header.Get("X-Request-Id"))
		w.Header().Set("Trailer", "X-Sum")
		n, _ := io.Copy(w, r.Body)
		w.Header().Set("X-Sum", fmt.Sprint(n))
	})
	h1 := httptest.NewServer(h)
	defer h1.Close()
	_, front := startHTTPProxy(t, h1.Listener.Addr().String(), nil)
	body := bytes.Repeat([]byte("b"), 1<<20+3)
	resp, err := h2cClient().Post("http://"+front+"/echo", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.ProtoMajor != 2 || !bytes.Equal(got, body) || resp.Trailer.Get("X-Sum") != fmt.Sprint(len(body)) {
		t.Fatalf("HTTP/2 client, HTTP/1.1 upstream: %s, %d of %d bytes, trailer %q, %v", resp.Proto, len(got), len(body), resp.Trailer.Get("X-Sum"), err)
	}
	if p, _ := proto.Load().(string); !strings.HasPrefix(p, "HTTP/1.1 ") || len(p) < len("HTTP/1.1 ")+36 {
		t.Errorf("the upstream saw %q, want HTTP/1.1 with an x-request-id", p)
	}

	h2 := h2cServer(t, h)
	_, front = startProxy(t, h2, upstreamHTTP2, nil)
	resp, err = http.Post("http://"+front+"/echo", "text/plain", strings.NewReader("over http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	got, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != "over http/1.1" || resp.ProtoMajor != 1 {
		t.Fatalf("HTTP/1.1 client, HTTP/2 upstream: %s %d %q", resp.Proto, resp.StatusCode, got)
	}
	if p, _ := proto.Load().(string); !strings.HasPrefix(p, "HTTP/2.0 ") {
		t.Errorf("the upstream saw %q, want HTTP/2.0", p)
	}
}

// Many clients at once, each mixing uploads, downloads, answers retried
// after a 503, slow answers cut by the per-try timeout and streams the
// client cancels midway: every stream ends (none left open), and the
// relay keeps answering afterwards.
func TestH2MixedLoadLeavesNothingOpen(t *testing.T) {
	var n atomic.Int64
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/flaky":
			if n.Add(1)%3 == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
		case "/slow":
			select {
			case <-time.After(time.Duration(n.Add(1)%4) * 150 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		case "/big":
			_, _ = w.Write(bytes.Repeat([]byte("d"), 512<<10))
			return
		}
		_, _ = io.Copy(w, r.Body)
	}))
	p, front := startProxy(t, up, upstreamHTTP2, func(a *routev3.RouteAction) {
		a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,reset", NumRetries: wrapperspb.UInt32(2), PerTryTimeout: durationpb.New(250 * time.Millisecond)}
	})
	var wg sync.WaitGroup
	var unexpected atomic.Int32
	for g := range 8 {
		c := h2cClient() // a connection per client
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				ctx, cancel := context.WithCancel(context.Background())
				path := []string{"/echo", "/flaky", "/slow", "/big"}[(g+i)%4]
				body := bytes.Repeat([]byte("u"), (i%5)*40<<10)
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+front+path, bytes.NewReader(body))
				if i%7 == 3 {
					time.AfterFunc(time.Duration(i)*time.Millisecond, cancel)
				}
				resp, err := c.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 && resp.StatusCode != 504 && resp.StatusCode != 503 {
						if unexpected.Add(1) < 4 {
							t.Logf("%s: %d", path, resp.StatusCode)
						}
					}
				}
				if err != nil && ctx.Err() == nil {
					if unexpected.Add(1) < 4 {
						t.Logf("%s: %v", path, err)
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if u := unexpected.Load(); u > 0 {
		t.Errorf("%d calls failed without being cancelled", u)
	}
	streamsEnd(t, p)
	resp, err := h2cClient().Post("http://"+front+"/echo", "text/plain", strings.NewReader("after"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "after" {
		t.Errorf("after the load: %d %q", resp.StatusCode, b)
	}
}

// The same for streams served by the handler (HTTP/2 clients of an
// HTTP/1.1 upstream), cancelled ones included.
func TestH2ToHTTP1UnderLoadLeavesNothingOpen(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-r.Context().Done():
				return
			}
		}
		// Read all, then answer: net/http's HTTP/1.1 server discards the
		// rest of a body once an answer starts (io.Copy would stop at 512).
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(b)
	}))
	defer up.Close()
	p, front := startHTTPProxy(t, up.Listener.Addr().String(), nil)
	var wg sync.WaitGroup
	var unexpected atomic.Int32
	for g := range 4 {
		c := h2cClient()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				ctx, cancel := context.WithCancel(context.Background())
				path := []string{"/echo", "/slow"}[(g+i)%2]
				body := bytes.Repeat([]byte("u"), (i%4)*100<<10)
				req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+front+path, bytes.NewReader(body))
				if i%5 == 2 {
					time.AfterFunc(time.Duration(i)*3*time.Millisecond, cancel)
				}
				resp, err := c.Do(req)
				if err == nil {
					var got int64
					got, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != 200 || got != int64(len(body))) {
						if unexpected.Add(1) < 4 {
							t.Logf("%s with %d bytes: %d, %d bytes back", path, len(body), resp.StatusCode, got)
						}
					}
				}
				if err != nil && ctx.Err() == nil {
					if unexpected.Add(1) < 4 {
						t.Logf("%s with %d bytes: %v", path, len(body), err)
					}
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if u := unexpected.Load(); u > 0 {
		t.Errorf("%d calls failed without being cancelled", u)
	}
	streamsEnd(t, p)
}

// streamsEnd checks, once every call ended, that the relay let go of
// every stream, upstream slot and dial waiter.
func streamsEnd(t *testing.T, p *Proxy) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for h2Streams(p) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := h2Streams(p); n != 0 {
		t.Errorf("%d streams still open after every call ended", n)
	}
	// Every byte received is credited back (or due in the next update):
	// a connection that lost track would stall, or take its peer for a
	// flow-control violator.
	owed := func(c *h2Conn, side string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.owed != c.passed {
			t.Errorf("%s connection: %d bytes received and never credited back", side, c.owed-c.passed)
		}
	}
	p.h2Conns.Range(func(k, _ any) bool { owed(k.(*h2Conn), "a client"); return true })
	p.h2Pools.Range(func(_, v any) bool {
		pl := v.(*h2Pool)
		pl.mu.Lock()
		conns := slices.Clone(pl.conns)
		for _, c := range pl.conns {
			if c.active != 0 {
				t.Errorf("an upstream connection still counts %d streams", c.active)
			}
		}
		if len(pl.waiters) != 0 {
			t.Errorf("%d streams still wait for an upstream connection", len(pl.waiters))
		}
		pl.mu.Unlock()
		for _, c := range conns {
			owed(c, "an upstream")
		}
		return true
	})
}

// Uploads an upstream answers without reading are dropped by the relay
// and credited back once: the client's connection keeps its window and
// carries the next calls (counting them twice once took healthy clients
// for flow-control violators).
func TestH2DroppedUploadsKeepTheConnection(t *testing.T) {
	up := h2cServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "no thanks") }))
	p, front := startProxy(t, up, upstreamHTTP2, nil)
	c := h2cClient()
	for i := range 6 {
		resp, err := c.Post("http://"+front+"/", "application/octet-stream", bytes.NewReader(bytes.Repeat([]byte("x"), 768<<10)))
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "no thanks" {
			t.Fatalf("upload %d: %d %q", i, resp.StatusCode, b)
		}
	}
	streamsEnd(t, p)
}
