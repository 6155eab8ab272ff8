// Package tracing is the proxy's side of distributed tracing, as Envoy's
// OpenTelemetry tracer does it for Istio: a request's trace context comes
// from W3C traceparent or, failing that, B3 headers; the proxy makes one
// span per request (a server span on a sidecar's inbound side and at a
// gateway, a client span on a sidecar's outbound side), passes its own
// context upstream in both formats so apps propagating either keep the
// trace, and sends the sampled spans as OTLP.
//
// The app must copy the context from the request it got to the requests
// it makes, as with Istio; the proxies cannot link them otherwise.
package tracing

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

// Context is a span's place in a trace.
type Context struct {
	Trace   [16]byte
	Span    [8]byte
	Sampled bool
}

// Extract reads the incoming trace context: W3C traceparent (version 00,
// or a later one read as 00), else B3's x-b3-* headers or single b3
// header. A malformed or all-zero context is none.
func Extract(header func(string) (string, bool)) (Context, bool) {
	if v, ok := header("traceparent"); ok {
		if c, ok := parseTraceparent(v); ok {
			return c, true
		}
	}
	if v, ok := header("b3"); ok {
		if c, ok := parseB3Single(v); ok {
			return c, true
		}
	}
	t, ok1 := header("x-b3-traceid")
	s, ok2 := header("x-b3-spanid")
	if !ok1 || !ok2 {
		return Context{}, false
	}
	var c Context
	if !decodeID(c.Trace[:], padTrace(t)) || !decodeID(c.Span[:], s) {
		return Context{}, false
	}
	sampled, _ := header("x-b3-sampled")
	flags, _ := header("x-b3-flags")
	c.Sampled = sampled == "1" || sampled == "true" || flags == "1"
	return c, true
}

func parseTraceparent(v string) (Context, bool) {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" || parts[0] == "00" && len(parts) != 4 || len(parts[3]) != 2 {
		return Context{}, false
	}
	var c Context
	var flags [1]byte
	if !decodeID(c.Trace[:], parts[1]) || !decodeID(c.Span[:], parts[2]) || !decodeHex(flags[:], parts[3]) {
		return Context{}, false
	}
	c.Sampled = flags[0]&1 == 1
	return c, true
}

// parseB3Single reads "traceid-spanid[-sampled[-parent]]"; a lone "0"
// (do not sample) carries no context.
func parseB3Single(v string) (Context, bool) {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) < 2 {
		return Context{}, false
	}
	var c Context
	if !decodeID(c.Trace[:], padTrace(parts[0])) || !decodeID(c.Span[:], parts[1]) {
		return Context{}, false
	}
	c.Sampled = len(parts) > 2 && (parts[2] == "1" || parts[2] == "d")
	return c, true
}

// padTrace widens a 64-bit B3 trace id to 128 bits, as W3C needs.
func padTrace(id string) string {
	if len(id) == 16 {
		return "0000000000000000" + id
	}
	return id
}

// decodeID decodes a lowercase hex id of exactly len(dst) bytes, not all
// zero (an invalid id in both formats).
func decodeID(dst []byte, s string) bool {
	if !decodeHex(dst, s) {
		return false
	}
	for _, b := range dst {
		if b != 0 {
			return true
		}
	}
	return false
}

func decodeHex(dst []byte, s string) bool {
	if len(s) != 2*len(dst) || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.Decode(dst, []byte(s))
	return err == nil
}

// Kind is a span's side of a call.
type Kind int

const (
	Server Kind = iota // a sidecar's inbound side, a gateway
	Client             // a sidecar's outbound side
)

// Span is one request's span, from its start to its answer.
type Span struct {
	Context
	Parent [8]byte // zero for a trace's root
	Kind   Kind
	// Name is set by the caller, for a sampled span.
	Name  string
	Start time.Time
	// Attrs are attributes known at the start (header tags).
	Attrs []Attr
}

// Start begins a request's span: a child of the incoming context, keeping
// its sampling decision, else the root of a new trace sampled with the
// probability sampling (0..1).
func Start(header func(string) (string, bool), kind Kind, sampling float64, roll func() float64) *Span {
	s := &Span{Kind: kind, Start: time.Now()}
	if parent, ok := Extract(header); ok {
		s.Trace, s.Parent, s.Sampled = parent.Trace, parent.Span, parent.Sampled
	} else {
		_, _ = rand.Read(s.Trace[:])
		s.Sampled = sampling >= 1 || sampling > 0 && roll() < sampling
	}
	_, _ = rand.Read(s.Span[:])
	return s
}

// Headers are the context the request carries on: traceparent and B3's
// headers, naming this span as the parent (tracestate passes as it came).
// Remove are the headers that would contradict them.
func (s *Span) Headers() (set [][2]string, remove []string) {
	flags, sampled := "00", "0"
	if s.Sampled {
		flags, sampled = "01", "1"
	}
	trace, span := hex.EncodeToString(s.Trace[:]), hex.EncodeToString(s.Span[:])
	set = [][2]string{{"traceparent", "00-" + trace + "-" + span + "-" + flags},
		{"x-b3-traceid", trace}, {"x-b3-spanid", span}, {"x-b3-sampled", sampled}}
	if s.Parent != [8]byte{} {
		set = append(set, [2]string{"x-b3-parentspanid", hex.EncodeToString(s.Parent[:])})
	} else {
		remove = append(remove, "x-b3-parentspanid")
	}
	return set, append(remove, "b3", "x-b3-flags")
}

// Attr is one span attribute.
type Attr struct {
	Key   string
	Value any // string, int64 or bool
}

// Proto is the span as OTLP has it, ended at end with the answer's status.
func (s *Span) Proto(end time.Time, status int, attrs []Attr) *tracepb.Span {
	kind := tracepb.Span_SPAN_KIND_SERVER
	if s.Kind == Client {
		kind = tracepb.Span_SPAN_KIND_CLIENT
	}
	sp := &tracepb.Span{TraceId: s.Trace[:], SpanId: s.Span[:], Name: s.Name, Kind: kind,
		StartTimeUnixNano: uint64(s.Start.UnixNano()), EndTimeUnixNano: uint64(end.UnixNano()), Attributes: keyValues(attrs)}
	if s.Parent != [8]byte{} {
		sp.ParentSpanId = s.Parent[:]
	}
	// Envoy's: an error is a 5xx, or no answer at all.
	if status == 0 || status >= 500 {
		sp.Status = &tracepb.Status{Code: tracepb.Status_STATUS_CODE_ERROR}
	}
	return sp
}

func keyValues(attrs []Attr) []*commonpb.KeyValue {
	out := make([]*commonpb.KeyValue, 0, len(attrs))
	for _, a := range attrs {
		var v *commonpb.AnyValue
		switch x := a.Value.(type) {
		case string:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: x}}
		case int64:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: x}}
		case int:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: int64(x)}}
		case bool:
			v = &commonpb.AnyValue{Value: &commonpb.AnyValue_BoolValue{BoolValue: x}}
		default:
			continue
		}
		out = append(out, &commonpb.KeyValue{Key: a.Key, Value: v})
	}
	return out
}

// Batch is spans of one service as an OTLP export request: TracesData is
// the same message on the wire as the trace service's
// ExportTraceServiceRequest, so the collector's service types are not
// needed.
func Batch(service string, spans []*tracepb.Span) *tracepb.TracesData {
	return &tracepb.TracesData{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource:   &resourcepb.Resource{Attributes: keyValues([]Attr{{"service.name", service}})},
		ScopeSpans: []*tracepb.ScopeSpans{{Scope: &commonpb.InstrumentationScope{Name: "isthmus"}, Spans: spans}},
	}}}
}
