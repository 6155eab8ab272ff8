package proxyview

import (
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Istio's locality load balancing: with outlier detection, endpoints are
// ranked by proximity (then a failover region), made contiguous; distribute
// turns locality shares into weights.
func TestLocality(t *testing.T) {
	p := &Proxy{Network: "n1", ClusterID: "c1", Locality: registry.Locality{Region: "us-east-1", Zone: "us-east-1a"}}
	eps := []network.LbEndpoint{
		{Address: "a", Weight: 1, Locality: registry.Locality{Region: "us-east-1", Zone: "us-east-1a"}},
		{Address: "b", Weight: 1, Locality: registry.Locality{Region: "us-east-1", Zone: "us-east-1b"}},
		{Address: "c", Weight: 2, Locality: registry.Locality{Region: "eastus", Zone: "eastus-1"}},
		{Address: "c2", Weight: 2, Locality: registry.Locality{Region: "eastus", Zone: "eastus-2"}},
		{Address: "d", Weight: 1, Locality: registry.Locality{Region: "westeurope", Zone: "we-1"}},
	}
	outlier := &apinetworking.OutlierDetection{Consecutive_5XxErrors: wrapperspb.UInt32(1), Interval: durationpb.New(1e9)}
	policy := func(ls *apinetworking.LocalityLoadBalancerSetting, od *apinetworking.OutlierDetection) trafficPolicy {
		dr := &networkingv1.DestinationRule{ObjectMeta: metav1.ObjectMeta{Name: "d", Namespace: "ns"}, Spec: apinetworking.DestinationRule{Host: "h",
			TrafficPolicy: &apinetworking.TrafficPolicy{LoadBalancer: &apinetworking.LoadBalancerSettings{LocalityLbSetting: ls}, OutlierDetection: od}}}
		return policyFor(dr, 80, func(m string) { t.Errorf("warning: %s", m) })
	}
	prios := func(tp trafficPolicy) map[string]uint32 {
		f := priorities(eps, func(e network.LbEndpoint) uint32 { return tp.priority(p, e) })
		out := map[string]uint32{}
		for _, e := range eps {
			out[e.Address] = f(e)
		}
		return out
	}
	same := func(what string, got, want map[string]uint32) {
		t.Helper()
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %v, want %v", what, got, want)
				return
			}
		}
	}
	same("proximity (Istio's default with outlier detection)", prios(policy(nil, outlier)), map[string]uint32{"a": 0, "b": 1, "c": 2, "c2": 2, "d": 2})
	same("failover us-east-1 -> eastus", prios(policy(&apinetworking.LocalityLoadBalancerSetting{
		Failover: []*apinetworking.LocalityLoadBalancerSetting_Failover{{From: "us-east-1", To: "eastus"}}}, outlier)),
		map[string]uint32{"a": 0, "b": 1, "c": 2, "c2": 2, "d": 3})
	same("no outlier detection: no failover", prios(policy(nil, nil)), map[string]uint32{"a": 0, "b": 0, "c": 0, "d": 0})
	same("enabled: false", prios(policy(&apinetworking.LocalityLoadBalancerSetting{Enabled: wrapperspb.Bool(false)}, outlier)), map[string]uint32{"a": 0, "b": 0, "c": 0, "d": 0})
	for i := range eps {
		eps[i].Network = "n1"
	}
	eps[2].Network = "n2"
	same("failoverPriority network, then proximity", prios(policy(&apinetworking.LocalityLoadBalancerSetting{
		FailoverPriority: []string{labelNetwork}}, outlier)), map[string]uint32{"a": 0, "b": 1, "d": 2, "c2": 2, "c": 3})
	eps[2].Network = ""

	tp := policy(&apinetworking.LocalityLoadBalancerSetting{Distribute: []*apinetworking.LocalityLoadBalancerSetting_Distribute{
		{From: "westeurope/*", To: map[string]uint32{"westeurope/*": 100}},
		{From: "us-east-1/*", To: map[string]uint32{"us-east-1/us-east-1a/*": 80, "eastus/*": 20}},
	}}, nil)
	got := map[string]uint32{}
	for _, e := range tp.distribute(p, eps) {
		got[e.Address] = e.Weight
	}
	// eastus's 20% is split between its two localities.
	if len(got) != 3 || got["a"] != 800 || got["c"] != 100 || got["c2"] != 100 {
		t.Errorf("distribute: weights %v, want a 800, c 100, c2 100 and nothing else", got)
	}
	same("distribute sets no priorities", prios(tp), map[string]uint32{"a": 0, "c": 0})
}
