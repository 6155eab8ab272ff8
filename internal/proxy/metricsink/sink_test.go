package metricsink

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// collector is a control plane's metrics service that hands over what it gets.
type collector struct {
	got chan *metricsv3.StreamMetricsMessage
}

func (c *collector) StreamMetrics(st grpc.ClientStreamingServer[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse]) error {
	for {
		m, err := st.Recv()
		if err != nil {
			return err
		}
		c.got <- m
	}
}

func listen(t *testing.T, addr string, c *collector) *grpc.Server {
	t.Helper()
	var l net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	metricsv3.RegisterMetricsServiceServer(s, c)
	go s.Serve(l)
	return s
}

func next(t *testing.T, c *collector) *metricsv3.StreamMetricsMessage {
	t.Helper()
	select {
	case m := <-c.got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no metrics pushed")
		return nil
	}
}

// The sink pushes only the Istio counters, the node in the first message
// of each stream, and reopens its stream when the control plane returns.
func TestSinkStream(t *testing.T) {
	c := &collector{got: make(chan *metricsv3.StreamMetricsMessage, 100)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	srv := grpc.NewServer()
	metricsv3.RegisterMetricsServiceServer(srv, c)
	go srv.Serve(l)

	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "istio_requests_total"}, []string{"response_code"})
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "isthmus_something_else_total"})
	reg.MustRegister(requests, other)
	requests.WithLabelValues("200").Add(3)
	other.Inc()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sink := &Sink{Conn: conn, Node: &core.Node{Id: "sidecar~10.0.0.1~sleep-1.multicluster~multicluster.svc.cluster.local"}, Gatherer: reg,
		Every: 50 * time.Millisecond, Log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { _ = sink.Run(ctx); close(done) }()

	first := next(t, c)
	if first.GetIdentifier().GetNode().GetId() != sink.Node.Id {
		t.Fatalf("first message's node %v, want the proxy's", first.GetIdentifier())
	}
	if fams := first.GetEnvoyMetrics(); len(fams) != 1 || fams[0].GetName() != "istio_requests_total" ||
		fams[0].GetMetric()[0].GetCounter().GetValue() != 3 || fams[0].GetMetric()[0].GetTimestampMs() == 0 {
		t.Fatalf("pushed %v, want only istio_requests_total (3), stamped", fams)
	}
	requests.WithLabelValues("200").Add(2)
	var second *metricsv3.StreamMetricsMessage
	for second = next(t, c); second.GetEnvoyMetrics()[0].GetMetric()[0].GetCounter().GetValue() != 5; second = next(t, c) {
	}
	if second.GetIdentifier() != nil {
		t.Errorf("a later message carries the node again: %v", second.GetIdentifier())
	}

	// The control plane goes away and comes back: the sink opens a new
	// stream, the node first again.
	srv.Stop()
	for len(c.got) > 0 {
		<-c.got
	}
	srv = listen(t, addr, c)
	defer srv.Stop()
	for m := next(t, c); m.GetIdentifier() == nil; m = next(t, c) {
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sink did not stop with its context")
	}
}
