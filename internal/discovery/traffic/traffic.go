// Package traffic is the control plane's view of the requests between
// workloads. Proxies push their Istio request counters over Envoy's
// metrics service (the stream their metrics sink opens next to xDS);
// Graph turns two consecutive pushes of each proxy into rates and error
// shares per edge, for the live topology view.
//
// A proxy speaks only for itself. Its stream must be proven (the TLS
// port's token) and its node must name the caller's namespace and
// cluster; a series it reports as the source must name the caller as
// source_principal, source_workload_namespace and source_cluster (the
// destination's for reporter="destination"), or it is dropped and counted.
// A compromised sidecar can lie about its own namespace's traffic only
// (and, as a destination, about who called it: such edges are marked as
// the destination's view and give way to the source's).
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
	// Reporter is whose view this is: "source" (the caller's sidecar) or
	// "destination" (the callee's, for callers without a sidecar).
	Reporter string `json:"reporter"`
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
	// Identify returns the stream's proven caller; ok false on a stream
	// without one (the plaintext port), whose series are all dropped.
	Identify func(ctx context.Context) (Caller, bool)
	// Expire drops a proxy not heard from for this long (3 of Envoy's
	// 5 s flush intervals by default).
	Expire time.Duration
	// MaxSeries bounds the edges one proxy may make the control plane keep
	// (a sidecar calls a few dozen); MaxStreams the proxies of one
	// identity (one service account in one cluster).
	MaxSeries, MaxStreams int

	mu      sync.Mutex
	streams map[streamKey]*reporter
	refused *prometheus.CounterVec
}

// streamKey is one proxy: a node ID under a proven caller. A newer stream
// of the same proxy replaces the older one.
type streamKey struct {
	caller Caller
	node   string
}

// reporter is one proxy's stream and its last two pushes.
type reporter struct {
	self      Workload
	prev, cur sample
	// replaced is closed when a newer stream of the proxy took its place.
	replaced chan struct{}
}

type sample struct {
	at     time.Time
	counts map[edgeKey]counts
}

type edgeKey struct {
	src, dst Workload
	service  string
	view     string // the reporter label: source or destination
}

type counts struct{ total, errors float64 }

// New makes a Graph whose refusals are counted in reg.
func New(reg prometheus.Registerer) *Graph {
	g := &Graph{Expire: 15 * time.Second, MaxSeries: 500, MaxStreams: 512, streams: map[streamKey]*reporter{},
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
	if !proven {
		g.refused.WithLabelValues("no identity").Inc()
		return status.Error(codes.Unauthenticated, "metrics are accepted on the TLS port only, from a proxy that proved who it is with its token")
	}
	msg, err := st.Recv()
	if err != nil {
		return err
	}
	node := msg.GetIdentifier().GetNode()
	if node.GetId() == "" {
		return status.Error(codes.InvalidArgument, "the first message of a metrics stream must carry the node (identifier.node)")
	}
	md := node.GetMetadata().GetFields()
	self := Workload{Cluster: md["CLUSTER_ID"].GetStringValue(), Namespace: md["NAMESPACE"].GetStringValue(), Name: md["WORKLOAD_NAME"].GetStringValue()}
	if self.Cluster != caller.Cluster || self.Namespace != caller.Namespace {
		g.refused.WithLabelValues("not its own").Inc()
		return status.Errorf(codes.PermissionDenied, "node %s claims namespace %q in cluster %q; its token is of %s/%s in %s",
			node.GetId(), self.Namespace, self.Cluster, caller.Namespace, caller.ServiceAccount, caller.Cluster)
	}
	r, err := g.join(streamKey{caller, node.GetId()}, self)
	if err != nil {
		return err
	}
	defer g.leave(streamKey{caller, node.GetId()}, r)
	for {
		s := sample{at: time.Now(), counts: map[edgeKey]counts{}}
		for _, f := range msg.GetEnvoyMetrics() {
			if f.GetName() != "istio_requests_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				g.add(s.counts, m, caller)
			}
		}
		g.mu.Lock()
		r.prev, r.cur = r.cur, s
		g.mu.Unlock()
		select {
		case <-r.replaced:
			return status.Error(codes.Aborted, "replaced by a newer metrics stream of the same proxy")
		default:
		}
		if msg, err = st.Recv(); errors.Is(err, io.EOF) {
			return st.SendAndClose(&metricsv3.StreamMetricsResponse{})
		} else if err != nil {
			return err
		}
	}
}

// join registers a proxy's stream, in place of an older one of the same
// proxy, within its identity's bound.
func (g *Graph) join(k streamKey, self Workload) (*reporter, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if old, ok := g.streams[k]; ok {
		close(old.replaced)
		delete(g.streams, k)
	}
	n := 0
	for other := range g.streams {
		if other.caller == k.caller {
			n++
		}
	}
	if n >= g.MaxStreams {
		g.refused.WithLabelValues("too many").Inc()
		return nil, status.Errorf(codes.ResourceExhausted, "%s/%s in %s already has %d metrics streams", k.caller.Namespace, k.caller.ServiceAccount, k.caller.Cluster, n)
	}
	r := &reporter{self: self, replaced: make(chan struct{})}
	g.streams[k] = r
	return r, nil
}

func (g *Graph) leave(k streamKey, r *reporter) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.streams[k] == r {
		delete(g.streams, k)
	}
}

// maxLabel bounds a label value the graph keeps (a DNS name's length).
const maxLabel = 253

// add counts one series into a sample, if its reporter may speak for it.
func (g *Graph) add(into map[edgeKey]counts, m *dto.Metric, caller Caller) {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		if len(p.GetValue()) > maxLabel {
			g.refused.WithLabelValues("too long").Inc()
			return
		}
		l[p.GetName()] = p.GetValue()
	}
	side := l["reporter"]
	switch {
	case side != "source" && side != "destination":
		g.refused.WithLabelValues("no reporter").Inc()
		return
	case !principalOf(l[side+"_principal"], caller) || l[side+"_workload_namespace"] != caller.Namespace || l[side+"_cluster"] != caller.Cluster:
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
		view:    side,
	}
	c := into[k]
	v := m.GetCounter().GetValue()
	c.total += v
	if code := l["response_code"]; code == "0" || strings.HasPrefix(code, "5") {
		c.errors += v
	}
	into[k] = c
}

// principalOf reports whether a SPIFFE ID is the caller's service
// account, spiffe://TRUST-DOMAIN/ns/NS/sa/SA (any trust domain: the caller
// was proven by its token).
func principalOf(principal string, c Caller) bool {
	rest, ok := strings.CutPrefix(principal, "spiffe://")
	if !ok {
		return false
	}
	td, path, ok := strings.Cut(rest, "/")
	return ok && td != "" && path == "ns/"+c.Namespace+"/sa/"+c.ServiceAccount
}

// Edges are the rates between workloads now: the sum over the proxies
// that reported each edge. An edge seen by both its source and its
// destination proxy counts the source's view (it also sees calls that
// never arrived); the destination's view stays only where no source
// reports the edge (callers without a sidecar).
func (g *Graph) Edges() []Edge {
	g.mu.Lock()
	now := time.Now()
	rates := map[edgeKey]counts{}
	for _, r := range g.streams {
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
			e := rates[k]
			e.total += d.total / dt
			e.errors += max(d.errors, 0) / dt
			rates[k] = e
		}
	}
	g.mu.Unlock()
	out := make([]Edge, 0, len(rates))
	for k, e := range rates {
		if k.view == "destination" {
			if _, seen := rates[edgeKey{src: k.src, dst: k.dst, service: k.service, view: "source"}]; seen {
				continue
			}
		}
		edge := Edge{Source: k.src, Destination: k.dst, Service: k.service, Reporter: k.view, RPS: e.total}
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
	for _, r := range g.streams {
		if time.Since(r.cur.at) <= g.Expire {
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
