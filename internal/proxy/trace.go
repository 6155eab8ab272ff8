package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
	"github.com/isthmus-mesh/isthmus/internal/proxy/tracing"
)

// Tracing (package tracing): the decision starts a request's span when
// its chain traces and carries the span's context upstream in its header
// operations; each engine ends the span where it counts the request; the
// sampled spans go to the collector's cluster in batches, as OTLP over
// gRPC through the proxy's own upstream path (its endpoints, mTLS when the
// collector is in the mesh). A full queue or a failed export drops spans
// and counts them (isthmus_spans_total): tracing never holds up requests.

const (
	spanQueue     = 4096
	spanBatch     = 512
	spanFlush     = time.Second
	exportTimeout = 5 * time.Second
)

// trace starts the span of a request on a chain that traces: its context
// goes upstream either way; the decision keeps it (Span) only when
// sampled, so requests that are not pay nothing more.
func (p *Proxy) trace(d *downstream, hm *config.HTTPManager, req *decision.Request, dec *decision.Decision) {
	t := hm.Tracing
	if t == nil {
		return
	}
	kind := tracing.Client
	if d.inbound() || d.listener.Bind && !d.listener.UseOriginalDst { // a sidecar's inbound side, a gateway
		kind = tracing.Server
	}
	s := tracing.Start(req.Header, kind, t.Sampling, rand.Float64)
	set, remove := s.Headers()
	dec.Set = append(dec.Set, set...)
	dec.Remove = append(dec.Remove, remove...)
	if !s.Sampled {
		// Its context goes on; nothing else of it is kept or ended.
		return
	}
	s.Name = operation(req.Host, dec)
	for _, h := range t.HeaderTags {
		if v, ok := req.Header(h[1]); ok {
			s.Attrs = append(s.Attrs, tracing.Attr{Key: h[0], Value: v})
		}
	}
	dec.Span, dec.Tracing = s, t
}

// operation names a span as Istio's route decorators do: the service's
// host and port, "/*" (from the outbound cluster), else the host asked for.
func operation(host string, dec *decision.Decision) string {
	if dec.Route != nil && dec.Route.Operation != "" {
		return dec.Route.Operation
	}
	if dir, rest, ok := strings.Cut(dec.Cluster, "|"); ok && dir == "outbound" {
		if parts := strings.SplitN(rest, "|", 3); len(parts) == 3 {
			return parts[2] + ":" + parts[0] + "/*"
		}
	}
	return host + "/*"
}

// endSpan ends a request's span with what its access log line says.
func (p *Proxy) endSpan(dec *decision.Decision, a *accessEntry) {
	s, t := dec.Span, dec.Tracing
	if s == nil {
		return
	}
	url := "http://" + a.host + a.uri
	if t.MaxPathTag > 0 && len(url) > t.MaxPathTag {
		url = url[:t.MaxPathTag]
	}
	attrs := append(s.Attrs,
		tracing.Attr{Key: "component", Value: "proxy"},
		tracing.Attr{Key: "http.method", Value: a.method},
		tracing.Attr{Key: "http.url", Value: url},
		tracing.Attr{Key: "http.protocol", Value: a.proto},
		tracing.Attr{Key: "http.status_code", Value: strconv.Itoa(a.code)},
		tracing.Attr{Key: "response_flags", Value: orDash(a.flags)},
		tracing.Attr{Key: "guid:x-request-id", Value: a.requestID},
		tracing.Attr{Key: "user_agent", Value: orDash(a.ua)},
		tracing.Attr{Key: "request_size", Value: strconv.FormatInt(max(a.in, 0), 10)},
		tracing.Attr{Key: "response_size", Value: strconv.FormatInt(a.out, 10)},
		tracing.Attr{Key: "upstream_cluster", Value: orDash(a.cluster)},
		tracing.Attr{Key: "upstream_cluster.name", Value: orDash(a.cluster)},
		tracing.Attr{Key: "peer.address", Value: a.d.conn.RemoteAddr().String()})
	if a.code == 0 || a.code >= 500 {
		attrs = append(attrs, tracing.Attr{Key: "error", Value: "true"})
	}
	for _, tag := range t.Tags {
		attrs = append(attrs, tracing.Attr{Key: tag[0], Value: tag[1]})
	}
	service := t.Service
	if self := p.opts.Self; service == "" && self != nil {
		// isthmus's control plane leaves the workload's own to it, with
		// the tags Istio's adds.
		service = self.CanonicalService + "." + self.Namespace
		attrs = append(attrs, tracing.Attr{Key: "istio.canonical_service", Value: self.CanonicalService},
			tracing.Attr{Key: "istio.canonical_revision", Value: self.CanonicalRevision},
			tracing.Attr{Key: "istio.namespace", Value: self.Namespace}, tracing.Attr{Key: "istio.cluster_id", Value: self.Cluster},
			tracing.Attr{Key: "node_id", Value: self.ID()})
	}
	sp := s.Proto(a.start.Add(a.dur), a.code, attrs)
	p.spans.add(p, t, service, sp)
}

// spanExporter queues ended spans and sends them in batches.
type spanExporter struct {
	once sync.Once
	q    chan queuedSpan
}

type queuedSpan struct {
	t       *config.Tracing
	service string
	span    *tracepb.Span
}

func (e *spanExporter) add(p *Proxy, t *config.Tracing, service string, sp *tracepb.Span) {
	e.once.Do(func() {
		e.q = make(chan queuedSpan, spanQueue)
		go e.run(p)
	})
	select {
	case e.q <- queuedSpan{t, service, sp}:
	default:
		p.stats.spans.WithLabelValues("dropped").Inc()
	}
}

// run sends what is queued every spanFlush, or as soon as spanBatch spans
// wait: one export per collector and service.
func (e *spanExporter) run(p *Proxy) {
	tick := time.NewTicker(spanFlush)
	defer tick.Stop()
	type key struct{ cluster, authority, service string }
	var batch []queuedSpan
	flush := func() {
		groups := map[key][]*tracepb.Span{}
		confs := map[key]*config.Tracing{}
		for _, q := range batch {
			k := key{q.t.Cluster, q.t.Authority, q.service}
			groups[k] = append(groups[k], q.span)
			confs[k] = q.t
		}
		batch = batch[:0]
		for k, spans := range groups {
			result := "exported"
			if err := p.exportSpans(confs[k], k.service, spans); err != nil {
				p.opts.Log.Debug("span export failed", "cluster", k.cluster, "spans", len(spans), "err", err)
				result = "failed"
			}
			p.stats.spans.WithLabelValues(result).Add(float64(len(spans)))
		}
	}
	for {
		select {
		case q := <-e.q:
			batch = append(batch, q)
			if len(batch) >= spanBatch {
				flush()
			}
		case <-tick.C:
			if len(batch) > 0 {
				flush()
			}
		}
	}
}

// exportSpans is one OTLP/gRPC Export call to the collector's cluster: a
// gRPC unary call is an HTTP/2 POST of one length-prefixed message, its
// outcome in the grpc-status trailer.
func (p *Proxy) exportSpans(t *config.Tracing, service string, spans []*tracepb.Span) error {
	msg, err := proto.Marshal(tracing.Batch(service, spans))
	if err != nil {
		return err
	}
	body := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(body[1:5], uint32(len(msg)))
	copy(body[5:], msg)
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = exportTimeout
	}
	rc := &route{rt: p.cur.Load(), r: &config.Route{Name: "tracing"}, cluster: t.Cluster, h2: true}
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), routeKey, rc), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+t.Authority+"/opentelemetry.proto.collector.trace.v1.TraceService/Export", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	resp, err := roundTripper{p}.RoundTrip(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	status := resp.Trailer.Get("Grpc-Status")
	if status == "" {
		status = resp.Header.Get("Grpc-Status") // a trailers-only answer
	}
	if resp.StatusCode != http.StatusOK || status != "0" {
		return fmt.Errorf("collector answered HTTP %d, grpc-status %q %s", resp.StatusCode, status, resp.Trailer.Get("Grpc-Message"))
	}
	return nil
}
