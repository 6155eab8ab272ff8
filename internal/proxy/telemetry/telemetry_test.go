package telemetry

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestServiceOfCluster(t *testing.T) {
	for cluster, want := range map[string]Service{
		"outbound|8080||profile.multicluster.svc.cluster.local":    {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"outbound|8080|v1|profile.multicluster.svc.cluster.local":  {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"outbound_.8080_._.profile.multicluster.svc.cluster.local": {"profile.multicluster.svc.cluster.local", "profile", "multicluster"},
		"PassthroughCluster": {"unknown", "unknown", "unknown"},
	} {
		if got := ServiceOfCluster(cluster); got != want {
			t.Errorf("%s: %+v, want %+v", cluster, got, want)
		}
	}
}

// A connection's requests recorded through its last series count in the
// series of their own labels: a changed label is a new series.
func TestRequestOnFollowsLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	var last LastSeries
	e := &Event{Reporter: "source", Src: unknownPeer, Dst: unknownPeer, Protocol: "http", Code: 200}
	m.RequestOn(&last, e, time.Millisecond, 0, 2)
	m.RequestOn(&last, e, time.Millisecond, 0, 2)
	e.Code = 503
	m.RequestOn(&last, e, time.Millisecond, 0, 2)
	m.Request(e, time.Millisecond, 0, 2)
	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "istio_requests_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "response_code" {
					got[l.GetValue()] = s.GetCounter().GetValue()
				}
			}
		}
	}
	if got["200"] != 2 || got["503"] != 2 || len(got) != 2 {
		t.Fatalf("istio_requests_total by response_code: %v, want 200: 2 and 503: 2", got)
	}
}

// Callers choose their metadata and Host: a caller sending a new one with
// every request grows neither the decode cache nor the metric families
// without bound.
func TestCallerChosenLabelsAreBounded(t *testing.T) {
	defer func(n int) { maxSeries = n }(maxSeries)
	maxSeries = 50
	reg := prometheus.NewRegistry()
	m := New(reg)
	for i := range 3000 {
		self := NewSelf("n", fmt.Sprintf("w%d", i), "ns", "c", "", nil)
		_, md := self.Headers()
		e := &Event{Reporter: "destination", Src: Decode(md), Dst: unknownPeer, Service: ServiceOf(fmt.Sprintf("h%d.ns.svc", i)), Protocol: "http", Code: 200}
		m.Request(e, time.Millisecond, 0, 0)
		m.TCPOpened(e)(1, 1)
	}
	if n := peers.Len(); n > 1024 {
		t.Errorf("%d decoded peers cached, want at most 1024", n)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if n := len(f.GetMetric()); n > maxSeries+1 {
			t.Errorf("%s: %d series, want at most %d", f.GetName(), n, maxSeries+1)
		}
	}
}
