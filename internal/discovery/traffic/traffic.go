// Package traffic is the control plane's view of the requests between
// workloads. Proxies push their Istio request counters over Envoy's
// metrics service (the stream their metrics sink opens next to xDS);
// Graph turns two consecutive pushes of each proxy into rates and error
// shares per edge, for the live topology view.
//
// A proxy speaks only for itself: a series it reports as the source
// must name its own identity as source_principal and its cluster as
// source_cluster (as the destination for reporter="destination"), or it
// is dropped and counted — a compromised sidecar cannot draw traffic
// between other workloads.
package traffic

import (
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Workload is one end of an edge, as Istio's metric labels name it.
type Workload struct {
	Cluster   string `json:"cluster"`
	Namespace string `json:"namespace"`
	Name      string `json:"workload"`
}

// Edge is the traffic from one workload to another over the last two
// pushes of the proxies that reported it.
type Edge struct {
	Source      Workload `json:"source"`
	Destination Workload `json:"destination"`
	// Service is the destination service's host.
	Service string `json:"service"`
	// RPS is requests per second; ErrorRate the share of them answered
	// 5xx or not at all (response_code 0).
	RPS       float64 `json:"rps"`
	ErrorRate float64 `json:"errorRate"`
}

// Caller is who opened a metrics stream, proven like an xDS stream's
// caller (a token review on the TLS port).
type Caller struct{ Cluster, Namespace, ServiceAccount string }

// Graph serves Envoy's metrics service and keeps what every proxy pushed.
type Graph struct {
	metricsv3.UnimplementedMetricsServiceServer

	// Identify returns the stream's proven caller; ok false on a stream
	// without one (the plaintext port), whose series are all dropped.
	Identify func(ctx context.Context) (Caller, bool)
	// Expire drops a proxy not heard from for this long (3 of Envoy's
	// 5 s flush intervals by default).
	Expire time.Duration
	// MaxSeries bounds what one proxy may make the control plane keep.
	MaxSeries int

	mu      sync.Mutex
	streams map[*reporter]struct{}
	refused *prometheus.CounterVec
}

// reporter is one proxy's stream and its last two pushes.
type reporter struct {
	node      string
	self      Workload
	prev, cur sample
}

type sample struct {
	at     time.Time
	counts map[edgeKey]counts
}

type edgeKey struct {
	src, dst Workload
	service  string
}

type counts struct{ total, errors float64 }

// New makes a Graph whose refusals are counted in reg.
func New(reg prometheus.Registerer) *Graph {
	g := &Graph{Expire: 15 * time.Second, MaxSeries: 5000, streams: map[*reporter]struct{}{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "isthmus_traffic_series_refused_total",
			Help: "Request series a proxy pushed about traffic that is not its own (or beyond its limit), dropped."}, []string{"reason"})}
	if reg != nil {
		reg.MustRegister(g.refused)
	}
	return g
}

// Register adds the metrics service to gRPC servers.
func (g *Graph) Register(gs ...*grpc.Server) {
	for _, s := range gs {
		metricsv3.RegisterMetricsServiceServer(s, g)
	}
}

// StreamMetrics receives one proxy's pushes until it closes the stream.
func (g *Graph) StreamMetrics(st grpc.ClientStreamingServer[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse]) error {
	caller, proven := Caller{}, false
	if g.Identify != nil {
		caller, proven = g.Identify(st.Context())
	}
	r := &reporter{}
	g.mu.Lock()
	g.streams[r] = struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.streams, r)
		g.mu.Unlock()
	}()
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return st.SendAndClose(&metricsv3.StreamMetricsResponse{})
		}
		if err != nil {
			return err
		}
		if id := msg.GetIdentifier().GetNode(); id != nil && r.node == "" {
			md := id.GetMetadata().GetFields()
			r.node = id.GetId()
			r.self = Workload{Cluster: md["CLUSTER_ID"].GetStringValue(), Namespace: md["NAMESPACE"].GetStringValue(), Name: md["WORKLOAD_NAME"].GetStringValue()}
		}
		if r.node == "" {
			return status.Error(codes.InvalidArgument, "the first message of a metrics stream must carry the node (identifier.node)")
		}
		s := sample{at: time.Now(), counts: map[edgeKey]counts{}}
		for _, f := range msg.GetEnvoyMetrics() {
			if f.GetName() != "istio_requests_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				g.add(s.counts, m, caller, proven)
			}
		}
		g.mu.Lock()
		r.prev, r.cur = r.cur, s
		g.mu.Unlock()
	}
}

// add counts one series into a sample, if its reporter may speak for it.
func (g *Graph) add(into map[edgeKey]counts, m *dto.Metric, caller Caller, proven bool) {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	side := "source"
	if l["reporter"] == "destination" {
		side = "destination"
	}
	switch {
	case !proven:
		g.refused.WithLabelValues("no identity").Inc()
		return
	case l[side+"_principal"] != "" && !principalOf(l[side+"_principal"], caller) || l[side+"_cluster"] != caller.Cluster:
		g.refused.WithLabelValues("not its own").Inc()
		return
	case len(into) >= g.MaxSeries:
		g.refused.WithLabelValues("too many").Inc()
		return
	}
	k := edgeKey{
		src:     Workload{Cluster: l["source_cluster"], Namespace: l["source_workload_namespace"], Name: l["source_workload"]},
		dst:     Workload{Cluster: l["destination_cluster"], Namespace: l["destination_workload_namespace"], Name: l["destination_workload"]},
		service: l["destination_service"],
	}
	c := into[k]
	v := m.GetCounter().GetValue()
	c.total += v
	if code := l["response_code"]; code == "0" || strings.HasPrefix(code, "5") {
		c.errors += v
	}
	into[k] = c
}

// principalOf reports whether a SPIFFE ID names the caller's service
// account (any trust domain: the caller was proven by its token).
func principalOf(principal string, c Caller) bool {
	return strings.HasSuffix(principal, "/ns/"+c.Namespace+"/sa/"+c.ServiceAccount)
}

// Edges are the rates between workloads now: the sum over the proxies
// that reported each edge. An edge seen by both its source and its
// destination proxy counts the source's view (it also sees calls that
// never arrived); the destination's counts only where the source has no
// proxy reporting it.
func (g *Graph) Edges() []Edge {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := time.Now()
	type rate struct{ total, errors float64 }
	bySource, byDest := map[edgeKey]rate{}, map[edgeKey]rate{}
	for r := range g.streams {
		if r.prev.at.IsZero() || now.Sub(r.cur.at) > g.Expire {
			continue
		}
		dt := r.cur.at.Sub(r.prev.at).Seconds()
		if dt <= 0 {
			continue
		}
		for k, c := range r.cur.counts {
			p := r.prev.counts[k]
			d := counts{total: c.total - p.total, errors: c.errors - p.errors}
			if d.total < 0 { // the proxy restarted: its counters began again
				d = c
			}
			into := bySource
			if k.dst == r.self && k.src != r.self {
				into = byDest
			}
			e := into[k]
			e.total += d.total / dt
			e.errors += max(d.errors, 0) / dt
			into[k] = e
		}
	}
	for k, e := range byDest {
		if _, seen := bySource[k]; !seen {
			bySource[k] = e
		}
	}
	out := make([]Edge, 0, len(bySource))
	for k, e := range bySource {
		edge := Edge{Source: k.src, Destination: k.dst, Service: k.service, RPS: e.total}
		if e.total > 0 {
			edge.ErrorRate = e.errors / e.total
		}
		out = append(out, edge)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Source != b.Source {
			return less(a.Source, b.Source)
		}
		if a.Destination != b.Destination {
			return less(a.Destination, b.Destination)
		}
		return a.Service < b.Service
	})
	return out
}

// Reporters are the workloads whose proxies push, with how many proxies each.
func (g *Graph) Reporters() map[Workload]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[Workload]int{}
	for r := range g.streams {
		if r.node != "" && time.Since(r.cur.at) <= g.Expire {
			out[r.self]++
		}
	}
	return out
}

func less(a, b Workload) bool {
	if a.Cluster != b.Cluster {
		return a.Cluster < b.Cluster
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}
