package proxyview

import (
	"runtime"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
)

// Two views' load assignments share one endpoint object for one endpoint
// (the point: a copy per view was most of the heap), and only that.
func TestLoadAssignmentsShareEndpoints(t *testing.T) {
	e := network.LbEndpoint{Address: "10.0.0.1", Port: 8080, Weight: 1, Network: "n1", Cluster: "c1", TLSMode: "istio", ServiceAccount: "sa", Namespace: "ns"}
	a := loadAssignment("a", []network.LbEndpoint{e}, nil)
	b := loadAssignment("b", []network.LbEndpoint{e}, nil)
	if a.Endpoints[0].LbEndpoints[0] != b.Endpoints[0].LbEndpoints[0] {
		t.Fatal("one endpoint in two load assignments is two objects")
	}
	for _, other := range []network.LbEndpoint{
		func() network.LbEndpoint { o := e; o.Port = 9090; return o }(),
		func() network.LbEndpoint { o := e; o.Weight = 2; return o }(),
		func() network.LbEndpoint { o := e; o.TLSMode = ""; return o }(),
		func() network.LbEndpoint { o := e; o.ServiceAccount = "other"; return o }(),
		func() network.LbEndpoint { o := e; o.Network = "n2"; return o }(),
	} {
		c := loadAssignment("c", []network.LbEndpoint{other}, nil)
		if c.Endpoints[0].LbEndpoints[0] == a.Endpoints[0].LbEndpoints[0] {
			t.Errorf("%+v shares %+v's endpoint object", other, e)
		}
	}
	md := a.Endpoints[0].LbEndpoints[0].Metadata.FilterMetadata
	if md["istio"].Fields["serviceAccount"].GetStringValue() != "sa" || md["envoy.transport_socket_match"].Fields["tlsMode"].GetStringValue() != "istio" {
		t.Errorf("metadata %v", md)
	}
}

// An endpoint no load assignment holds any more leaves the table: a
// cluster's churn of pod addresses must not grow it for ever.
func TestInternedEndpointsAreDropped(t *testing.T) {
	e := network.LbEndpoint{Address: "10.9.9.9", Port: 1, Weight: 1, Network: "n", Cluster: "c"}
	loadAssignment("gone", []network.LbEndpoint{e}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		n := 0
		lbEndpoints.m.Range(func(k, _ any) bool {
			if k.(lbEndpointKey).address == e.Address {
				n++
			}
			return true
		})
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("an endpoint nothing holds is still interned")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
