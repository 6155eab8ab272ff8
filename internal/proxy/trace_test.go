package proxy

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tracingtype "github.com/envoyproxy/go-control-plane/envoy/type/tracing/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// startCollector runs the demo trace collector (OTLP over h2c).
func startCollector(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: demoapp.CollectorHandler(), Protocols: &protos}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func collected(t *testing.T, collector, trace string) []demoapp.Span {
	t.Helper()
	resp, err := http.Get("http://" + collector + "/spans?trace=" + trace)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var spans []demoapp.Span
	if err := json.NewDecoder(resp.Body).Decode(&spans); err != nil {
		t.Fatal(err)
	}
	return spans
}

// A proxy whose connection manager traces makes a span per request: a
// child of the W3C or B3 context it came with, else a new trace's root;
// it passes its own span on upstream in both formats and exports the
// sampled spans to the collector's cluster as OTLP over gRPC.
func TestTracing(t *testing.T) {
	headers := make(chan http.Header, 10)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		headers <- r.Header.Clone()
		_, _ = io.WriteString(w, "ok")
	}))
	defer up.Close()
	collector := startCollector(t)
	coll := staticCluster("collector", collector)
	otel := &tracev3.OpenTelemetryConfig{ServiceName: "sleep.test", GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
		EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "collector", Authority: "collector.test"}}}}
	trace := func(sampling float64) func(*hcm.HttpConnectionManager) {
		return func(h *hcm.HttpConnectionManager) {
			h.Tracing = &hcm.HttpConnectionManager_Tracing{RandomSampling: &typev3.Percent{Value: sampling},
				Provider:   &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(t, otel)}},
				CustomTags: []*tracingtype.CustomTag{{Tag: "istio.canonical_service", Type: &tracingtype.CustomTag_Literal_{Literal: &tracingtype.CustomTag_Literal{Value: "sleep"}}}}}
		}
	}
	_, front := startProxyWith(t, up.Listener.Addr().String(), nil, nil, proxySetup{more: xdsclient.State{resource.ClusterType: {"collector": mustAny(t, coll)}}}, trace(100))
	get := func(h map[string]string) http.Header {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+front+"/profile?id=1", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return <-headers
	}
	const trace1, parent1 = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	h := get(map[string]string{"traceparent": "00-" + trace1 + "-" + parent1 + "-01", "tracestate": "vendor=x"})
	tp := strings.Split(h.Get("Traceparent"), "-")
	if len(tp) != 4 || tp[1] != trace1 || tp[2] == parent1 || tp[3] != "01" || h.Get("Tracestate") != "vendor=x" ||
		h.Get("X-B3-Traceid") != trace1 || h.Get("X-B3-Spanid") != tp[2] || h.Get("X-B3-Parentspanid") != parent1 || h.Get("X-B3-Sampled") != "1" {
		t.Fatalf("upstream context: traceparent %q tracestate %q b3 %q %q %q %q", h.Get("Traceparent"), h.Get("Tracestate"),
			h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid"), h.Get("X-B3-Parentspanid"), h.Get("X-B3-Sampled"))
	}
	var spans []demoapp.Span
	deadline := time.Now().Add(5 * time.Second)
	for len(spans) == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		spans = collected(t, collector, trace1)
	}
	if len(spans) != 1 {
		t.Fatalf("spans of the trace: %+v", spans)
	}
	s := spans[0]
	if s.ID != tp[2] || s.Parent != parent1 || s.Service != "sleep.test" || s.Attributes["http.status_code"] != "200" ||
		s.Attributes["http.method"] != "GET" || s.Attributes["istio.canonical_service"] != "sleep" || s.Attributes["upstream_cluster"] != "up" {
		t.Errorf("span %+v", s)
	}

	// B3 alone, 64-bit trace id: the trace goes on, widened for W3C.
	h = get(map[string]string{"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": "00f067aa0ba902b7", "x-b3-sampled": "1"})
	if tp := strings.Split(h.Get("Traceparent"), "-"); len(tp) != 4 || tp[1] != "0000000000000000a3ce929d0e0e4736" {
		t.Errorf("B3 context not continued: traceparent %q", h.Get("Traceparent"))
	}
	// A caller's "do not sample" holds: passed on, not exported.
	const trace2 = "11111111111111111111111111111111"
	h = get(map[string]string{"traceparent": "00-" + trace2 + "-" + parent1 + "-00"})
	if !strings.HasSuffix(h.Get("Traceparent"), "-00") || h.Get("X-B3-Sampled") != "0" {
		t.Errorf("unsampled context: %q %q", h.Get("Traceparent"), h.Get("X-B3-Sampled"))
	}
	// No context: a new trace, sampled at 100%.
	h = get(nil)
	root := strings.Split(h.Get("Traceparent"), "-")
	if len(root) != 4 || root[3] != "01" || h.Get("X-B3-Parentspanid") != "" {
		t.Fatalf("new trace: %q", h.Get("Traceparent"))
	}
	deadline = time.Now().Add(5 * time.Second)
	for spans = nil; len(spans) == 0 && time.Now().Before(deadline); spans = collected(t, collector, root[1]) {
		time.Sleep(100 * time.Millisecond)
	}
	if len(spans) != 1 || spans[0].Parent != "" {
		t.Errorf("root span: %+v", spans)
	}
	if got := collected(t, collector, trace2); len(got) != 0 {
		t.Errorf("an unsampled request was exported: %+v", got)
	}

	// At 0%, a request without context is not sampled, and says so upstream.
	_, front0 := startProxyWith(t, up.Listener.Addr().String(), nil, nil, proxySetup{more: xdsclient.State{resource.ClusterType: {"collector": mustAny(t, coll)}}}, trace(0))
	resp, err := http.Get("http://" + front0 + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if h := <-headers; !strings.HasSuffix(h.Get("Traceparent"), "-00") {
		t.Errorf("at 0%% sampling: %q", h.Get("Traceparent"))
	}
}
