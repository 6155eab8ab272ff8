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

// Kiali groups by canonical service and revision: the injector's labels
// first, then the app's name and version, then the workload and latest;
// each side's reach the metric, the peer's through the metadata exchange.
func TestCanonicalLabels(t *testing.T) {
	for _, tc := range []struct {
		labels            map[string]string
		service, revision string
		app, version      string
	}{
		{map[string]string{"service.istio.io/canonical-name": "shop", "service.istio.io/canonical-revision": "v3", "app": "web", "version": "v1"}, "shop", "v3", "web", "v1"},
		{map[string]string{"app.kubernetes.io/name": "shop", "app": "web", "app.kubernetes.io/version": "2"}, "shop", "2", "shop", "2"},
		{map[string]string{}, "profile", "latest", "unknown", "unknown"},
	} {
		_, md := NewSelf("id", "profile", "ns", "c1", "", tc.labels).Headers()
		p := Decode(md)
		if p.CanonicalService != tc.service || p.CanonicalRevision != tc.revision || p.App != tc.app || p.Version != tc.version {
			t.Errorf("%v: %+v, want canonical %s/%s app %s/%s", tc.labels, p, tc.service, tc.revision, tc.app, tc.version)
		}
	}
	reg := prometheus.NewRegistry()
	m := New(reg)
	src := NewSelf("id", "sleep", "ns", "c1", "", map[string]string{"app": "sleep"}).Peer
	_, md := NewSelf("id", "profile", "ns", "c2", "", map[string]string{"app": "profile", "version": "v1"}).Headers()
	m.Request(&Event{Reporter: "source", Src: src, Dst: Decode(md), Service: ServiceOf("profile.ns.svc.cluster.local"), Protocol: "http", Code: 200}, time.Millisecond, 0, 0)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range families {
		if f.GetName() == "istio_requests_total" {
			for _, l := range f.GetMetric()[0].GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
		}
	}
	for k, v := range map[string]string{"source_canonical_service": "sleep", "source_canonical_revision": "latest",
		"destination_canonical_service": "profile", "destination_canonical_revision": "v1", "destination_cluster": "c2"} {
		if got[k] != v {
			t.Errorf("%s = %q, want %q (labels %v)", k, got[k], v, got)
		}
	}
}
