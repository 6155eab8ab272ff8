package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// Stats are the proxy's metrics: Istio's standard families plus a few of
// Envoy's counters that explain refused connections.
type Stats struct {
	Registry *prometheus.Registry
	istio    *telemetry.Metrics

	noChain      *prometheus.CounterVec
	upstreamFail *prometheus.CounterVec
	// upstreamOverflow counts what circuit breakers refused.
	upstreamOverflow *prometheus.CounterVec
	// audited counts requests and connections an AUDIT policy matched.
	audited prometheus.Counter
	// cxOverflow counts connections a listener's limit closed; rxReset
	// HTTP/2 streams clients reset, and prematureResets the connections
	// closed for resetting too many too early.
	cxOverflow      *prometheus.CounterVec
	rxReset         prometheus.Counter
	prematureResets prometheus.Counter
	// mirrors counts mirrored copies by cluster and result (sent,
	// failed, dropped).
	mirrors *prometheus.CounterVec
	// spans counts ended sampled spans by result (exported, failed,
	// dropped).
	spans *prometheus.CounterVec
}

func newStats() *Stats {
	reg := prometheus.NewRegistry()
	s := &Stats{
		Registry: reg,
		istio:    telemetry.New(reg),
		noChain: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_listener_no_filter_chain_match",
			Help: "Connections closed because no filter chain matched."}, []string{"listener"}),
		upstreamFail: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_cx_connect_fail",
			Help: "Upstream connections that could not be opened."}, []string{"cluster_name"}),
	}
	s.upstreamOverflow = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_rq_pending_overflow",
		Help: "Requests and connections refused by a cluster's circuit breakers."}, []string{"cluster_name"})
	s.audited = prometheus.NewCounter(prometheus.CounterOpts{Name: "envoy_http_rbac_logged_allowed",
		Help: "Requests and connections matched by an AUDIT AuthorizationPolicy (Envoy's RBAC LOG action)."})
	s.cxOverflow = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_listener_downstream_cx_overflow",
		Help: "Connections closed because the listener held its limit of connections."}, []string{"listener"})
	s.rxReset = prometheus.NewCounter(prometheus.CounterOpts{Name: "envoy_http_downstream_rq_rx_reset",
		Help: "HTTP/2 streams the client reset."})
	s.prematureResets = prometheus.NewCounter(prometheus.CounterOpts{Name: "envoy_http_downstream_rq_too_many_premature_resets",
		Help: "HTTP/2 connections closed because the client reset too many streams early (rapid reset)."})
	s.mirrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "isthmus_mirror_requests_total",
		Help: "Copies of requests for a route's mirrors: sent (answered), failed (no answer) or dropped (not sent: body over 64 KiB, an upgrade, or too many in flight)."}, []string{"cluster_name", "result"})
	s.spans = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "isthmus_spans_total",
		Help: "Sampled spans: exported to the tracing provider, failed (its collector did not take them) or dropped (the queue was full)."}, []string{"result"})
	reg.MustRegister(s.spans, s.mirrors, s.noChain, s.upstreamFail, s.upstreamOverflow, s.audited, s.cxOverflow, s.rxReset, s.prematureResets,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}
