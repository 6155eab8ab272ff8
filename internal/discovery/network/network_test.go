package network

import (
	"reflect"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func ep(addr, network, cluster string, tls bool) registry.Endpoint {
	e := registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080}, Network: network, Cluster: cluster, Ready: true}
	if tls {
		e.TLSMode = "istio"
	}
	return e
}

type brief struct {
	Addr    string
	Port    int32
	Weight  uint32
	Gateway bool
}

func briefs(in []LbEndpoint) []brief {
	var out []brief
	for _, e := range in {
		out = append(out, brief{e.Address, e.Port, e.Weight, e.Gateway})
	}
	return out
}

func TestSplitHorizon(t *testing.T) {
	gw2 := registry.Gateway{Network: "network2", Cluster: "cluster-aks", Address: "198.18.2.10", Port: 15443}
	gw1 := registry.Gateway{Network: "network1", Cluster: "cluster-eks", Address: "198.18.1.10", Port: 15443}
	local1, local2 := ep("100.64.0.5", "network1", "cluster-eks", true), ep("100.64.0.6", "network1", "cluster-eks", true)
	remote1, remote2 := ep("100.65.0.5", "network2", "cluster-aks", true), ep("100.65.0.6", "network2", "cluster-aks", true)
	tests := []struct {
		name string
		view View
		eps  []registry.Endpoint
		gws  []registry.Gateway
		want []brief
		warn []string
	}{
		{
			name: "without any gateway every endpoint is direct",
			view: View{Network: "network1"},
			eps:  []registry.Endpoint{local1, remote1},
			want: []brief{{"100.64.0.5", 8080, 1, false}, {"100.65.0.5", 8080, 1, false}},
		},
		{
			name: "remote endpoints become their gateway, weighted by how many it stands for",
			view: View{Network: "network1"},
			eps:  []registry.Endpoint{local1, local2, remote1, remote2},
			gws:  []registry.Gateway{gw1, gw2},
			want: []brief{{"100.64.0.5", 8080, 1, false}, {"100.64.0.6", 8080, 1, false}, {"198.18.2.10", 15443, 2, true}},
		},
		{
			name: "a remote endpoint without mTLS is dropped, it cannot cross a gateway",
			view: View{Network: "network1"},
			eps:  []registry.Endpoint{local1, ep("100.65.0.7", "network2", "cluster-aks", false)},
			gws:  []registry.Gateway{gw2},
			want: []brief{{"100.64.0.5", 8080, 1, false}},
		},
		{
			name: "a network without a gateway is sent direct and reported",
			view: View{Network: "network2"},
			eps:  []registry.Endpoint{local1, remote1},
			gws:  []registry.Gateway{gw2},
			want: []brief{{"100.64.0.5", 8080, 1, false}, {"100.65.0.5", 8080, 1, false}},
			warn: []string{"network1"},
		},
		{
			name: "a gateway with a requested network view sees only its own network",
			view: View{Network: "network2", Requested: []string{"network2"}},
			eps:  []registry.Endpoint{local1, remote1, remote2},
			gws:  []registry.Gateway{gw1, gw2},
			want: []brief{{"100.65.0.5", 8080, 1, false}, {"100.65.0.6", 8080, 1, false}},
		},
		{
			name: "two gateways of one network share its endpoints and local weights scale alike",
			view: View{Network: "network1"},
			eps:  []registry.Endpoint{local1, remote1},
			gws:  []registry.Gateway{gw2, {Network: "network2", Cluster: "cluster-aks", Address: "198.18.2.11", Port: 15443}},
			want: []brief{{"100.64.0.5", 8080, 2, false}, {"198.18.2.10", 15443, 1, true}, {"198.18.2.11", 15443, 1, true}},
		},
		{
			name: "a proxy on an unknown network always goes through gateways",
			view: View{},
			eps:  []registry.Endpoint{remote1},
			gws:  []registry.Gateway{gw2},
			want: []brief{{"198.18.2.10", 15443, 1, true}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var warned []string
			got := SplitHorizon(tt.view, tt.eps, "http", tt.gws, func(n string) { warned = append(warned, n) })
			if !reflect.DeepEqual(briefs(got), tt.want) {
				t.Fatalf("got %+v\nwant %+v", briefs(got), tt.want)
			}
			if !reflect.DeepEqual(warned, tt.warn) {
				t.Fatalf("warned %v, want %v", warned, tt.warn)
			}
		})
	}
}
