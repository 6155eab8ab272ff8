package proxyview

import (
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
)

// Tracing is the tracing provider meshConfig names: the first of
// defaultProviders.tracing that is an extensionProviders opentelemetry
// collector (exported to over gRPC), with defaultConfig.tracing.sampling.
// Every HTTP connection manager carries it as Envoy's OpenTelemetry
// tracer, as Istio's do. The span's service name is left to each proxy
// (its canonical service and namespace): listeners are shared by the
// proxies of a view.
type Tracing struct {
	// Cluster is the collector's outbound cluster, Authority its host.
	Cluster, Authority string
	Timeout            time.Duration
	// Sampling is the percentage of new traces sampled (Istio's default 1).
	Sampling     float64
	MaxTagLength uint32
}

// TracingOf reads meshConfig's tracing provider; nil when none is named
// (enableTracing alone is Istio's legacy bootstrap tracer, which isthmus's
// proxies do not have).
func TracingOf(mc *meshv1alpha1.MeshConfig) *Tracing {
	for _, name := range mc.GetDefaultProviders().GetTracing() {
		for _, p := range mc.GetExtensionProviders() {
			o := p.GetOpentelemetry()
			if p.GetName() != name || o == nil || o.GetHttp() != nil {
				continue
			}
			// Istio's "namespace/host" form names the host after the slash.
			host := o.GetService()
			if _, h, ok := strings.Cut(host, "/"); ok {
				host = h
			}
			t := &Tracing{Cluster: OutboundCluster(int32(o.GetPort()), "", host), Authority: host,
				Sampling: 1, MaxTagLength: o.GetMaxTagLength()}
			if o.GetGrpc().GetTimeout() != nil {
				t.Timeout = o.GetGrpc().GetTimeout().AsDuration()
			}
			if s := mc.GetDefaultConfig().GetTracing().GetSampling(); s > 0 && s <= 100 {
				t.Sampling = s
			}
			return t
		}
	}
	return nil
}

// envoy is the connection managers' tracing.
func (t *Tracing) envoy() *hcm.HttpConnectionManager_Tracing {
	oc := &tracev3.OpenTelemetryConfig{GrpcService: &core.GrpcService{
		TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: t.Cluster, Authority: t.Authority}}}}
	if t.Timeout > 0 {
		oc.GrpcService.Timeout = durationpb.New(t.Timeout)
	}
	h := &hcm.HttpConnectionManager_Tracing{
		ClientSampling: &typev3.Percent{Value: 100}, RandomSampling: &typev3.Percent{Value: t.Sampling}, OverallSampling: &typev3.Percent{Value: 100},
		Provider: &tracev3.Tracing_Http{Name: "envoy.tracers.opentelemetry", ConfigType: &tracev3.Tracing_Http_TypedConfig{TypedConfig: mustAny(oc)}}}
	if t.MaxTagLength > 0 {
		h.MaxPathTagLength = wrapperspb.UInt32(t.MaxTagLength)
	}
	return h
}
