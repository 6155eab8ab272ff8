package traffic

import (
	"context"
	"io"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// series is one istio_requests_total series as a sidecar labels it.
func series(reporter, src, srcPrincipal, dst, dstPrincipal, code string, v float64) *dto.Metric {
	l := map[string]string{"reporter": reporter, "response_code": code,
		"source_workload": src, "source_workload_namespace": "multicluster", "source_cluster": "cluster-eks", "source_principal": srcPrincipal,
		"destination_workload": dst, "destination_workload_namespace": "multicluster", "destination_cluster": "cluster-aks",
		"destination_principal": dstPrincipal, "destination_service": "profile.multicluster.svc.cluster.local"}
	if dst == "profile-v1" {
		l["destination_cluster"] = "cluster-eks"
	}
	m := &dto.Metric{Counter: &dto.Counter{Value: proto.Float64(v)}}
	for k, val := range l {
		m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(k), Value: proto.String(val)})
	}
	return m
}

func push(ms ...*dto.Metric) *metricsv3.StreamMetricsMessage {
	return &metricsv3.StreamMetricsMessage{EnvoyMetrics: []*dto.MetricFamily{{Name: proto.String("istio_requests_total"), Type: dto.MetricType_COUNTER.Enum(), Metric: ms}}}
}

const (
	sleepID   = "spiffe://cluster.local/ns/multicluster/sa/sleep"
	profileID = "spiffe://cluster.local/ns/multicluster/sa/profile"
)

// serve runs a Graph on loopback; a stream's caller is what its
// "caller" metadata says ("cluster/namespace/sa"; none: unproven).
func serve(t *testing.T) (*Graph, *prometheus.Registry, metricsv3.MetricsServiceClient) {
	t.Helper()
	reg := prometheus.NewRegistry()
	g := New(reg)
	g.Identify = func(ctx context.Context) (Caller, bool) {
		md, _ := metadata.FromIncomingContext(ctx)
		v := md.Get("caller")
		if len(v) != 3 {
			return Caller{}, false
		}
		return Caller{Cluster: v[0], Namespace: v[1], ServiceAccount: v[2]}, true
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	g.Register(s)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return g, reg, metricsv3.NewMetricsServiceClient(conn)
}

func node(workload, cluster string) *metricsv3.StreamMetricsMessage_Identifier {
	md, _ := structpb.NewStruct(map[string]any{"WORKLOAD_NAME": workload, "NAMESPACE": "multicluster", "CLUSTER_ID": cluster})
	return &metricsv3.StreamMetricsMessage_Identifier{Node: &core.Node{Id: "sidecar~1.2.3.4~" + workload + ".multicluster~multicluster.svc.cluster.local", Metadata: md}}
}

// stream opens a proxy's metrics stream as caller (cluster, namespace, sa).
func stream(t *testing.T, c metricsv3.MetricsServiceClient, caller ...string) grpc.ClientStreamingClient[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse] {
	t.Helper()
	ctx := context.Background()
	for _, v := range caller {
		ctx = metadata.AppendToOutgoingContext(ctx, "caller", v)
	}
	st, err := c.StreamMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func send(t *testing.T, st grpc.ClientStreamingClient[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse], m *metricsv3.StreamMetricsMessage) {
	t.Helper()
	if err := st.Send(m); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls the graph until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestEdgesFromTwoPushes(t *testing.T) {
	g, reg, c := serve(t)
	sleep := stream(t, c, "cluster-eks", "multicluster", "sleep")
	first := push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 100), series("source", "sleep", sleepID, "profile-v2", profileID, "503", 10),
		series("source", "sleep", sleepID, "profile-v1", profileID, "200", 50))
	first.Identifier = node("sleep", "cluster-eks")
	send(t, sleep, first)
	// The same proxy speaking for someone else's traffic: refused.
	send(t, sleep, push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 100), series("source", "sleep", sleepID, "profile-v2", profileID, "503", 10),
		series("source", "sleep", sleepID, "profile-v1", profileID, "200", 50),
		series("source", "accounts", "spiffe://cluster.local/ns/multicluster/sa/accounts", "profile-v2", profileID, "200", 1e6)))
	waitFor(t, "the forged series refused", func() bool {
		return testutil.ToFloat64(g.refused.WithLabelValues("not its own")) == 1
	})
	time.Sleep(500 * time.Millisecond)
	send(t, sleep, push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 150), series("source", "sleep", sleepID, "profile-v2", profileID, "503", 20),
		series("source", "sleep", sleepID, "profile-v1", profileID, "200", 50)))
	var edges []Edge
	waitFor(t, "rates from the last two pushes", func() bool {
		edges = g.Edges()
		return len(edges) == 2 && edges[0].RPS > 0
	})
	// Sorted by destination: cluster-aks's profile-v2 first.
	v2, v1 := edges[0], edges[1]
	if v1.Destination.Name != "profile-v1" || v1.RPS != 0 {
		t.Errorf("sleep -> profile-v1: %+v, want 0 rps (no new calls)", v1)
	}
	// 60 calls in ~0.5 s, 10 of them 503.
	if v2.Destination != (Workload{Cluster: "cluster-aks", Namespace: "multicluster", Name: "profile-v2"}) || v2.RPS < 60 || v2.RPS > 125 {
		t.Errorf("sleep -> profile-v2: %+v, want about 120 rps", v2)
	}
	if math.Abs(v2.ErrorRate-10.0/60) > 1e-9 {
		t.Errorf("error rate %v, want 10 of 60", v2.ErrorRate)
	}
	if got := g.Reporters(); got[Workload{Cluster: "cluster-eks", Namespace: "multicluster", Name: "sleep"}] != 1 {
		t.Errorf("reporters %v, want sleep's one proxy", got)
	}
	if n, err := testutil.GatherAndCount(reg, "isthmus_traffic_series_refused_total"); err != nil || n != 1 {
		t.Errorf("refusals counted in %d series (%v)", n, err)
	}
}

func TestDestinationViewOnlyWithoutSource(t *testing.T) {
	g, _, c := serve(t)
	// profile-v2's sidecar saw calls from sleep (whose proxy does not
	// report) and from a caller without a sidecar.
	profile := stream(t, c, "cluster-aks", "multicluster", "profile")
	first := push(series("destination", "sleep", sleepID, "profile-v2", profileID, "200", 10), series("destination", "unknown", "unknown", "profile-v2", profileID, "200", 10))
	first.Identifier = node("profile-v2", "cluster-aks")
	send(t, profile, first)
	time.Sleep(200 * time.Millisecond)
	send(t, profile, push(series("destination", "sleep", sleepID, "profile-v2", profileID, "200", 30), series("destination", "unknown", "unknown", "profile-v2", profileID, "200", 20)))
	waitFor(t, "the destination's view", func() bool { return len(g.Edges()) == 2 })
	// Now sleep's proxy reports the same edge: its view wins.
	sleep := stream(t, c, "cluster-eks", "multicluster", "sleep")
	m := push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1))
	m.Identifier = node("sleep", "cluster-eks")
	send(t, sleep, m)
	time.Sleep(200 * time.Millisecond)
	send(t, sleep, push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1)))
	waitFor(t, "the source's view of sleep -> profile-v2", func() bool {
		for _, e := range g.Edges() {
			if e.Source.Name == "sleep" {
				return e.RPS == 0
			}
		}
		return false
	})
	for _, e := range g.Edges() {
		if e.Source.Name == "unknown" && e.RPS == 0 {
			t.Errorf("calls from outside the mesh lost their destination view: %+v", e)
		}
	}
}

// A stream must be proven, name its node first, and the node must be of
// the caller's namespace and cluster.
func TestStreamsHeldToTheirCaller(t *testing.T) {
	g, _, c := serve(t)
	for _, tc := range []struct {
		name   string
		caller []string
		first  *metricsv3.StreamMetricsMessage_Identifier
		want   codes.Code
	}{
		{"no identity (the plaintext port)", nil, node("sleep", "cluster-eks"), codes.Unauthenticated},
		{"no node", []string{"cluster-eks", "multicluster", "sleep"}, nil, codes.InvalidArgument},
		{"a node of another namespace", []string{"cluster-eks", "other", "sleep"}, node("sleep", "cluster-eks"), codes.PermissionDenied},
		{"a node of another cluster", []string{"cluster-aks", "multicluster", "sleep"}, node("sleep", "cluster-eks"), codes.PermissionDenied},
	} {
		st := stream(t, c, tc.caller...)
		m := push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1))
		m.Identifier = tc.first
		// A stream refused at once may be closed before this send: gRPC
		// then says io.EOF here and the refusal in CloseAndRecv.
		if err := st.Send(m); err != nil && err != io.EOF {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if _, err := st.CloseAndRecv(); status.Code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
	}
	if len(g.Reporters()) != 0 {
		t.Errorf("refused streams became reporters: %v", g.Reporters())
	}
}

// A sidecar cannot draw edges of other namespaces or workloads' identities,
// whatever label it leaves out or bends.
func TestForgedSeriesRefused(t *testing.T) {
	g, _, c := serve(t)
	sleep := stream(t, c, "cluster-eks", "multicluster", "sleep")
	other := func(mod func(m *dto.Metric)) *dto.Metric {
		m := series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1000)
		mod(m)
		return m
	}
	set := func(name, value string) func(m *dto.Metric) {
		return func(m *dto.Metric) {
			for _, l := range m.Label {
				if l.GetName() == name {
					l.Value = proto.String(value)
				}
			}
		}
	}
	forged := []*dto.Metric{
		other(set("source_workload_namespace", "payments")),                                    // its own principal, another namespace
		other(set("source_principal", "")),                                                     // no principal
		other(set("source_principal", "spiffe://cluster.local/ns/x/ns/multicluster/sa/sleep")), // a suffix match only
		other(set("source_principal", "unknown")),
		other(set("source_cluster", "cluster-aks")),
		other(set("reporter", "")),
		other(set("reporter", "destination")), // speaks for profile's side
		other(set("source_workload", strings.Repeat("x", 300))),
	}
	m := push(forged...)
	m.Identifier = node("sleep", "cluster-eks")
	send(t, sleep, m)
	send(t, sleep, push(forged...))
	waitFor(t, "every forged series refused", func() bool {
		return testutil.ToFloat64(g.refused.WithLabelValues("not its own"))+testutil.ToFloat64(g.refused.WithLabelValues("no reporter"))+
			testutil.ToFloat64(g.refused.WithLabelValues("too long")) == 2*float64(len(forged))
	})
	if e := g.Edges(); len(e) != 0 {
		t.Errorf("forged series drew edges: %+v", e)
	}
}

// A proxy's newer stream replaces its older one; an identity's streams
// are bounded.
func TestStreamReplacedAndBounded(t *testing.T) {
	g, _, c := serve(t)
	g.MaxStreams = 2
	open := func(workload string) grpc.ClientStreamingClient[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse] {
		st := stream(t, c, "cluster-eks", "multicluster", "sleep")
		m := push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1))
		m.Identifier = node(workload, "cluster-eks")
		send(t, st, m)
		return st
	}
	first := open("sleep")
	waitFor(t, "the first stream", func() bool { return len(g.Reporters()) == 1 })
	second := open("sleep") // the same node again: a reconnect
	time.Sleep(100 * time.Millisecond)
	send(t, first, push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 2)))
	if _, err := first.CloseAndRecv(); status.Code(err) != codes.Aborted {
		t.Errorf("the replaced stream: %v, want Aborted", err)
	}
	open("sleep-2")
	waitFor(t, "the second proxy's stream", func() bool { return len(g.Reporters()) == 2 })
	third := open("sleep-3")
	if _, err := third.CloseAndRecv(); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a third proxy of an identity bounded to 2: %v, want ResourceExhausted", err)
	}
	_ = second
}

func TestExpiredProxyDrops(t *testing.T) {
	g, _, c := serve(t)
	g.Expire = 300 * time.Millisecond
	sleep := stream(t, c, "cluster-eks", "multicluster", "sleep")
	m := push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 1))
	m.Identifier = node("sleep", "cluster-eks")
	send(t, sleep, m)
	send(t, sleep, push(series("source", "sleep", sleepID, "profile-v2", profileID, "200", 5)))
	waitFor(t, "an edge", func() bool { return len(g.Edges()) == 1 })
	waitFor(t, "the edge gone once the proxy is silent", func() bool { return len(g.Edges()) == 0 && len(g.Reporters()) == 0 })
}
