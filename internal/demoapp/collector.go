package demoapp

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is a span as the demo collector shows it.
type Span struct {
	Trace      string            `json:"traceId"`
	ID         string            `json:"spanId"`
	Parent     string            `json:"parentSpanId,omitempty"`
	Name       string            `json:"name"`
	Kind       string            `json:"kind"`
	Service    string            `json:"service"`
	Start      time.Time         `json:"start"`
	Duration   string            `json:"duration"`
	Attributes map[string]string `json:"attributes"`
}

// keptSpans is how many spans the collector keeps, newest last.
const keptSpans = 5000

// CollectorHandler is the demo's trace collector, to see a mesh's traces
// without installing one: it takes OTLP over gRPC (TraceService/Export,
// HTTP/2 without TLS on the demo app's port, as meshConfig's
// extensionProviders opentelemetry names it) and shows the spans it kept
// on GET /spans (?trace=ID for one trace) as JSON. It keeps the last
// 5000 spans in memory: a demo, not a tracing backend.
func CollectorHandler() http.Handler {
	var mu sync.Mutex
	var spans []Span
	mux := baseMux()
	mux.HandleFunc("POST /opentelemetry.proto.collector.trace.v1.TraceService/Export", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		msg, err := grpcMessage(r.Body)
		var data tracepb.TracesData // the same message as ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(msg, &data)
		}
		if err != nil {
			w.Header().Set("Grpc-Status", "3") // INVALID_ARGUMENT
			w.Header().Set("Grpc-Message", err.Error())
			return
		}
		got := flatten(&data)
		mu.Lock()
		spans = append(spans, got...)
		if n := len(spans) - keptSpans; n > 0 {
			spans = append(spans[:0:0], spans[n:]...)
		}
		mu.Unlock()
		_, _ = w.Write([]byte{0, 0, 0, 0, 0}) // an empty ExportTraceServiceResponse
		w.Header().Set("Grpc-Status", "0")
	})
	mux.HandleFunc("GET /spans", func(w http.ResponseWriter, r *http.Request) {
		trace := r.URL.Query().Get("trace")
		out := []Span{}
		mu.Lock()
		for _, s := range spans {
			if trace == "" || s.Trace == trace {
				out = append(out, s)
			}
		}
		mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	return mux
}

// grpcMessage reads one length-prefixed, uncompressed gRPC message.
func grpcMessage(body io.Reader) ([]byte, error) {
	var head [5]byte
	if _, err := io.ReadFull(body, head[:]); err != nil {
		return nil, fmt.Errorf("gRPC message head: %w", err)
	}
	if head[0] != 0 {
		return nil, fmt.Errorf("compressed gRPC messages are not supported")
	}
	n := binary.BigEndian.Uint32(head[1:])
	if n > 16<<20 {
		return nil, fmt.Errorf("gRPC message of %d bytes is over 16 MiB", n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(body, msg); err != nil {
		return nil, fmt.Errorf("gRPC message: %w", err)
	}
	return msg, nil
}

func flatten(data *tracepb.TracesData) []Span {
	var out []Span
	for _, rs := range data.GetResourceSpans() {
		service := attributes(rs.GetResource().GetAttributes())["service.name"]
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				start := time.Unix(0, int64(s.GetStartTimeUnixNano()))
				out = append(out, Span{Trace: hex.EncodeToString(s.GetTraceId()), ID: hex.EncodeToString(s.GetSpanId()),
					Parent: hex.EncodeToString(s.GetParentSpanId()), Name: s.GetName(), Kind: s.GetKind().String(), Service: service,
					Start: start, Duration: time.Unix(0, int64(s.GetEndTimeUnixNano())).Sub(start).String(), Attributes: attributes(s.GetAttributes())})
			}
		}
	}
	return out
}

func attributes(kvs []*commonpb.KeyValue) map[string]string {
	out := map[string]string{}
	for _, kv := range kvs {
		switch v := kv.GetValue().GetValue().(type) {
		case *commonpb.AnyValue_StringValue:
			out[kv.GetKey()] = v.StringValue
		case *commonpb.AnyValue_IntValue:
			out[kv.GetKey()] = fmt.Sprint(v.IntValue)
		case *commonpb.AnyValue_BoolValue:
			out[kv.GetKey()] = fmt.Sprint(v.BoolValue)
		case *commonpb.AnyValue_DoubleValue:
			out[kv.GetKey()] = fmt.Sprint(v.DoubleValue)
		}
	}
	return out
}

// traceHeaders are the headers that carry a request's trace context,
// which an app must copy to the requests it makes for the mesh to link
// them (Istio's advice).
var traceHeaders = []string{"X-Request-Id", "Traceparent", "Tracestate", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags", "B3"}
