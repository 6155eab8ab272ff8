package proxyview

import (
	"bytes"
	"testing"
	"time"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// The same configuration generates the same bytes: a JSON access log
// format is a map, and if its order changed with each generation, every
// listener would be a new version at every push.
func TestAccessLogGeneratesTheSameBytes(t *testing.T) {
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "tcp", Port: 7070, Protocol: "TCP", AppProtocol: "tcp"}}})
	reg.SetEndpoints("c1", h, []registry.Endpoint{{Address: "10.64.0.5", Ports: map[string]int32{"http": 8080, "tcp": 7070}, Cluster: "c1", Network: "n1", TLSMode: "istio", Ready: true}})
	g := &Generator{Registry: reg, AccessLog: &AccessLog{Path: "/dev/stdout", JSON: true}}
	p := &Proxy{ID: "sidecar~10.64.0.5~profile-1.test~test.svc.cluster.local", Type: Sidecar, IP: "10.64.0.5", Namespace: "test", ClusterID: "c1", Network: "n1"}
	bytesOf := func() [][]byte {
		gen := g.View(p)
		in, _ := g.Inbound(g.InboundIndex(reg.Services()).For("test", "10.64.0.5"), InboundPolicy{})
		var out [][]byte
		for _, r := range append(gen.Listeners, types.Resource(in)) {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	}
	first := bytesOf()
	for range 5 {
		again := bytesOf()
		if len(again) != len(first) {
			t.Fatalf("%d listeners, then %d", len(first), len(again))
		}
		for i := range first {
			if !bytes.Equal(first[i], again[i]) {
				t.Fatalf("listener %d changed between two generations of the same configuration", i)
			}
		}
	}
}

// meshConfig's opentelemetry default provider reaches every HTTP
// connection manager, as Istio renders it.
func TestTracingFromMeshConfig(t *testing.T) {
	var mc meshv1alpha1.MeshConfig
	if err := protojson.Unmarshal([]byte(`{"defaultConfig": {"tracing": {"sampling": 25}},
		"extensionProviders": [{"name": "z", "zipkin": {"service": "zipkin.istio-system.svc.cluster.local", "port": 9411}},
		  {"name": "otel", "opentelemetry": {"service": "observability/collector.observability.svc.cluster.local", "port": 4317, "grpc": {"timeout": "3s"}}}],
		"defaultProviders": {"tracing": ["otel"]}}`), &mc); err != nil {
		t.Fatal(err)
	}
	tr := TracingOf(&mc)
	if tr == nil || tr.Cluster != "outbound|4317||collector.observability.svc.cluster.local" || tr.Sampling != 25 || tr.Timeout != 3*time.Second {
		t.Fatalf("tracing %+v", tr)
	}
	mc.DefaultProviders.Tracing = []string{"z"}
	if tr := TracingOf(&mc); tr != nil {
		t.Errorf("a zipkin default provider gave %+v", tr)
	}
	reg := registry.New()
	h := "profile.test.svc.cluster.local"
	reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10",
		Ports: []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}}})
	mc.DefaultProviders.Tracing = []string{"otel"}
	g := &Generator{Registry: reg, Tracing: TracingOf(&mc)}
	p := &Proxy{ID: "sidecar~10.64.0.9~sleep-1.test~test.svc.cluster.local", Type: Sidecar, IP: "10.64.0.9", Namespace: "test", ClusterID: "c1", Network: "n1"}
	n := 0
	for _, r := range g.View(p).Listeners {
		for _, fc := range r.(*listener.Listener).GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var m hcm.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&m) != nil {
					continue
				}
				var oc tracev3.OpenTelemetryConfig
				if err := m.GetTracing().GetProvider().GetTypedConfig().UnmarshalTo(&oc); err != nil || oc.GetGrpcService().GetEnvoyGrpc().GetClusterName() != tr.Cluster ||
					m.GetTracing().GetRandomSampling().GetValue() != 25 {
					t.Errorf("listener %s: tracing %v", r.(*listener.Listener).Name, m.GetTracing())
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Error("no HTTP connection manager in the sidecar's listeners")
	}
}
