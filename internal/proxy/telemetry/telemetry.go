// Package telemetry is the proxy's side of Istio's standard metrics: the
// istio_requests_total / istio_request_duration_milliseconds /
// istio_tcp_* families with their source and destination labels, and the
// HTTP metadata exchange (headers x-envoy-peer-metadata and
// x-envoy-peer-metadata-id, a base64 protobuf Struct as Istio's proxies
// send) through which each side learns the other's workload.
package telemetry

import (
	"encoding/base64"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/utils/lru"
)

// Headers of Istio's HTTP metadata exchange.
const (
	HeaderMetadata   = "X-Envoy-Peer-Metadata"
	HeaderMetadataID = "X-Envoy-Peer-Metadata-Id"
)

// Peer is one side of a request.
type Peer struct {
	Workload, Namespace, App, Version, Cluster, Principal string
	// CanonicalService and CanonicalRevision are what Kiali and Istio's
	// dashboards group workloads by: the pod's service.istio.io/canonical-*
	// labels (which the injector sets), else its app name and version,
	// else the workload and "latest".
	CanonicalService, CanonicalRevision string
}

var unknownPeer = Peer{"unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown"}

// peerOf reads a workload's labels as Istio's proxies do: app and version
// from app.kubernetes.io/name|version, else app and version.
func peerOf(workload, namespace, cluster, principal string, labels map[string]string) Peer {
	app := first(labels, "app.kubernetes.io/name", "app")
	version := first(labels, "app.kubernetes.io/version", "version")
	canonical := first(labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	if canonical == "" {
		canonical = workload
	}
	revision := first(labels, "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	if revision == "" {
		revision = "latest"
	}
	return Peer{Workload: orUnknown(workload), Namespace: orUnknown(namespace), App: orUnknown(app), Version: orUnknown(version),
		Cluster: orUnknown(cluster), Principal: orUnknown(principal), CanonicalService: orUnknown(canonical), CanonicalRevision: revision}
}

// Self is the proxy's own workload and its exchange headers.
type Self struct {
	Peer
	id, header string
}

// NewSelf describes the local workload from node metadata (Istio's keys:
// WORKLOAD_NAME, NAMESPACE, CLUSTER_ID, and the pod labels).
func NewSelf(nodeID, workload, namespace, cluster, principal string, labels map[string]string) *Self {
	s := &Self{Peer: peerOf(workload, namespace, cluster, principal, labels), id: nodeID}
	lv := map[string]any{}
	for k, v := range labels {
		lv[k] = v
	}
	md, _ := structpb.NewStruct(map[string]any{"WORKLOAD_NAME": workload, "NAMESPACE": namespace, "CLUSTER_ID": cluster, "LABELS": lv})
	b, _ := proto.Marshal(md)
	s.header = base64.StdEncoding.EncodeToString(b)
	return s
}

// ID is the proxy's node ID.
func (s *Self) ID() string { return s.id }

// Headers are the exchange headers to send.
func (s *Self) Headers() (id, metadata string) { return s.id, s.header }

func first(m map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := m[k]; v != "" {
			return v
		}
	}
	return ""
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// peers caches decoded exchange headers: a mesh has few distinct peers,
// and a caller sending a new header each time only churns a bounded cache.
var peers = lru.New(1024) // header value -> Peer

// Decode reads a peer's x-envoy-peer-metadata; unknown fields stay "unknown".
func Decode(header string) Peer {
	if header == "" {
		return unknownPeer
	}
	if p, ok := peers.Get(header); ok {
		return p.(Peer)
	}
	p := unknownPeer
	if b, err := base64.StdEncoding.DecodeString(header); err == nil {
		var md structpb.Struct
		if proto.Unmarshal(b, &md) == nil {
			f := md.GetFields()
			labels := map[string]string{}
			for k, v := range f["LABELS"].GetStructValue().GetFields() {
				labels[k] = v.GetStringValue()
			}
			p = peerOf(f["WORKLOAD_NAME"].GetStringValue(), f["NAMESPACE"].GetStringValue(), f["CLUSTER_ID"].GetStringValue(), "", labels)
		}
	}
	peers.Add(header, p)
	return p
}

// Service is the destination service of a request, from its cluster name
// (outbound|PORT|SUBSET|HOST) or Host header.
type Service struct{ Host, Name, Namespace string }

// ServiceOf parses a hostname name.namespace.svc.domain.
func ServiceOf(host string) Service {
	if host == "" {
		return Service{"unknown", "unknown", "unknown"}
	}
	if h, _, ok := strings.Cut(host, ":"); ok {
		host = h
	}
	name, rest, ok := strings.Cut(host, ".")
	s := Service{Host: host, Name: name, Namespace: "unknown"}
	if ok {
		s.Namespace, _, _ = strings.Cut(rest, ".")
	}
	return s
}

// ServiceOfCluster reads the host out of outbound|PORT|SUBSET|HOST, or a
// gateway's SNI-named outbound_.PORT_.SUBSET_.HOST.
func ServiceOfCluster(cluster string) Service {
	if i := strings.LastIndexByte(cluster, '|'); i >= 0 && strings.HasPrefix(cluster, "outbound|") {
		return ServiceOf(cluster[i+1:])
	}
	if rest, ok := strings.CutPrefix(cluster, "outbound_."); ok {
		if p := strings.SplitN(rest, "_.", 3); len(p) == 3 {
			return ServiceOf(p[2])
		}
	}
	return ServiceOf("")
}

// labels of Istio's standard metrics, in Istio's order.
var labels = []string{"reporter", "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
	"source_principal", "source_app", "source_version", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_canonical_service", "destination_canonical_revision", "destination_service_name",
	"destination_service_namespace", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy"}

// Metrics are the standard metric families.
type Metrics struct {
	requests  *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	tcpOpen   *prometheus.CounterVec
	tcpClose  *prometheus.CounterVec
	tcpSent   *prometheus.CounterVec
	tcpRecv   *prometheus.CounterVec
	reqBytes  *prometheus.HistogramVec
	respBytes *prometheus.HistogramVec

	// series caches each label set's request series: WithLabelValues
	// validates and hashes all 25 values on every call, which was a
	// visible part of every request's cost.
	mu     sync.RWMutex
	series map[labelValues]*requestSeries
	tcp    map[labelValues]bool
}

// maxSeries bounds the label sets a family keeps: peers' labels come from
// the metadata they send, so past the bound new label sets are recorded
// with their peers "unknown" instead of growing memory without end.
var maxSeries = 10000

// labelValues are an Event's values for labels, in order.
type labelValues [25]string

type requestSeries struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// New registers the families.
func New(reg prometheus.Registerer) *Metrics {
	sizes := prometheus.ExponentialBuckets(1, 10, 8)
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total", Help: "Requests through the proxy."}, labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_duration_milliseconds", Help: "Request duration.",
			Buckets: []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}}, labels),
		reqBytes:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_request_bytes", Help: "Request body sizes.", Buckets: sizes}, labels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "istio_response_bytes", Help: "Response body sizes.", Buckets: sizes}, labels),
		tcpOpen:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_opened_total", Help: "TCP connections opened."}, labels),
		tcpClose:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed."}, labels),
		tcpSent:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent during TCP connections."}, labels),
		tcpRecv:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_tcp_received_bytes_total", Help: "Bytes received during TCP connections."}, labels),
	}
	reg.MustRegister(m.requests, m.duration, m.reqBytes, m.respBytes, m.tcpOpen, m.tcpClose, m.tcpSent, m.tcpRecv)
	m.series = map[labelValues]*requestSeries{}
	return m
}

// Event is one request or connection as a metric sees it.
type Event struct {
	Reporter   string // source (outbound) or destination (inbound)
	Src, Dst   Peer
	Service    Service
	Protocol   string // http, grpc, tcp
	Code       int
	GRPCStatus string
	Flags      string
	MTLS       bool
}

func (e *Event) values() labelValues {
	code := "0"
	if e.Code != 0 {
		code = strconv.Itoa(e.Code)
	}
	policy := "none"
	if e.MTLS {
		policy = "mutual_tls"
	}
	flags := e.Flags
	if flags == "" {
		flags = "-"
	}
	return labelValues{e.Reporter, e.Src.Workload, e.Src.CanonicalService, e.Src.CanonicalRevision, e.Src.Namespace,
		e.Src.Principal, e.Src.App, e.Src.Version, e.Src.Cluster,
		e.Dst.Workload, e.Dst.Namespace, e.Dst.Principal, e.Dst.App, e.Dst.Version,
		e.Service.Host, e.Dst.CanonicalService, e.Dst.CanonicalRevision, e.Service.Name,
		e.Service.Namespace, e.Dst.Cluster, e.Protocol, code, orDash(e.GRPCStatus), flags, policy}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Request records one HTTP or gRPC request.
func (m *Metrics) Request(e *Event, d time.Duration, reqBytes, respBytes int64) {
	m.requestSeries(e.values()).record(d, reqBytes, respBytes)
}

// LastSeries remembers the series of a connection's last request: the
// requests of one connection mostly share their labels, and comparing an
// Event is cheaper than hashing its 25 label values.
type LastSeries struct {
	ev Event
	s  *requestSeries
}

// RequestOn records one request as Request does, through the connection's last series.
func (m *Metrics) RequestOn(last *LastSeries, e *Event, d time.Duration, reqBytes, respBytes int64) {
	if last.s == nil || last.ev != *e {
		last.ev, last.s = *e, m.requestSeries(e.values())
	}
	last.s.record(d, reqBytes, respBytes)
}

func (s *requestSeries) record(d time.Duration, reqBytes, respBytes int64) {
	s.requests.Inc()
	s.duration.Observe(float64(d.Microseconds()) / 1000)
	if reqBytes >= 0 {
		s.reqBytes.Observe(float64(reqBytes))
	}
	if respBytes >= 0 {
		s.respBytes.Observe(float64(respBytes))
	}
}

func (m *Metrics) requestSeries(v labelValues) *requestSeries {
	m.mu.RLock()
	s, ok := m.series[v]
	full := len(m.series) >= maxSeries
	m.mu.RUnlock()
	if ok {
		return s
	}
	if full {
		v = v.withoutPeers()
		m.mu.RLock()
		s, ok = m.series[v]
		m.mu.RUnlock()
		if ok {
			return s
		}
	}
	valid := v.valid()
	vs := valid[:]
	s = &requestSeries{requests: m.requests.WithLabelValues(vs...), duration: m.duration.WithLabelValues(vs...),
		reqBytes: m.reqBytes.WithLabelValues(vs...), respBytes: m.respBytes.WithLabelValues(vs...)}
	m.mu.Lock()
	m.series[v] = s
	m.mu.Unlock()
	return s
}

// withoutPeers is a label set with both peers' labels and the service
// (an inbound request names it by its Host) "unknown"; the reporter,
// protocol, code, flags and security policy stay.
func (v labelValues) withoutPeers() labelValues {
	for i := 1; i <= 19; i++ { // source_workload .. destination_cluster
		v[i] = "unknown"
	}
	return v
}

// valid is v with bytes that are not UTF-8 replaced: Prometheus refuses
// (panics on) such label values, and a caller's Host or an upstream's
// grpc-status may hold any bytes.
func (v labelValues) valid() labelValues {
	for i, s := range v {
		if !utf8.ValidString(s) {
			v[i] = strings.ToValidUTF8(s, "\uFFFD")
		}
	}
	return v
}

// tcpValues are a connection's label values, bounded as requestSeries are.
func (m *Metrics) tcpValues(e *Event) labelValues {
	v := e.values().valid()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.tcp == nil {
		m.tcp = map[labelValues]bool{}
	}
	if !m.tcp[v] && len(m.tcp) >= maxSeries {
		v = v.withoutPeers()
	}
	m.tcp[v] = true
	return v
}

// TCPOpened records a connection; call the result when it closes.
func (m *Metrics) TCPOpened(e *Event) func(sent, received int64) {
	lv := m.tcpValues(e)
	v := lv[:]
	m.tcpOpen.WithLabelValues(v...).Inc()
	return func(sent, received int64) {
		m.tcpSent.WithLabelValues(v...).Add(float64(sent))
		m.tcpRecv.WithLabelValues(v...).Add(float64(received))
		m.tcpClose.WithLabelValues(v...).Inc()
	}
}
