package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Stats are the proxy's counters, exported on the Prometheus port.
type Stats struct {
	Registry *prometheus.Registry

	noChain      *prometheus.CounterVec
	upstreamFail *prometheus.CounterVec
	tcpOpened    *prometheus.CounterVec
	tcpClosed    *prometheus.CounterVec
	tcpSent      *prometheus.CounterVec
	tcpReceived  *prometheus.CounterVec
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
}

func newStats() *Stats {
	s := &Stats{
		Registry: prometheus.NewRegistry(),
		noChain: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_listener_no_filter_chain_match",
			Help: "Connections closed because no filter chain matched."}, []string{"listener"}),
		upstreamFail: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "envoy_cluster_upstream_cx_connect_fail",
			Help: "Upstream connections that could not be opened."}, []string{"cluster_name"}),
		tcpOpened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total",
			Help: "TCP connections opened through the proxy."}, []string{"destination_cluster_name"}),
		tcpClosed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total",
			Help: "TCP connections closed."}, []string{"destination_cluster_name"}),
		tcpSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total",
			Help: "Bytes sent upstream over TCP."}, []string{"destination_cluster_name"}),
		tcpReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total",
			Help: "Bytes received from upstream over TCP."}, []string{"destination_cluster_name"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total",
			Help: "HTTP requests through the proxy."}, []string{"reporter", "destination_cluster_name", "response_code", "source_principal"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds",
			Help:    "HTTP request duration in milliseconds.",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000}},
			[]string{"reporter", "destination_cluster_name", "response_code"}),
	}
	s.Registry.MustRegister(s.noChain, s.upstreamFail, s.tcpOpened, s.tcpClosed, s.tcpSent, s.tcpReceived, s.requests, s.duration)
	return s
}
