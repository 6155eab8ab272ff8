// Package network decides how a proxy reaches each endpoint: directly when
// the endpoint is on the proxy's network, through that network's east-west
// gateway otherwise (split-horizon EDS, Istio's semantics).
package network

import (
	"slices"
	"sort"
	"strings"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// View is what the proxy asking for endpoints can see.
type View struct {
	// Network is the proxy's own network ("" = unknown).
	Network string
	// Requested limits the networks whose endpoints the proxy receives
	// (REQUESTED_NETWORK_VIEW); nil means all. The empty network is always visible.
	Requested []string
}

// Visible reports whether endpoints of network n are in the view.
func (v View) Visible(n string) bool {
	return v.Requested == nil || n == "" || slices.Contains(v.Requested, n)
}

// ParseRequested splits a comma-separated REQUESTED_NETWORK_VIEW; "" means nil.
func ParseRequested(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// LbEndpoint is one entry of a proxy's load-balancing set.
type LbEndpoint struct {
	Address  string
	Port     int32
	Weight   uint32
	Locality registry.Locality
	// TLSMode "istio" means the endpoint speaks Istio mTLS.
	TLSMode string
	Network string
	Cluster string
	// Gateway is true when the entry stands for endpoints behind a gateway.
	Gateway bool
	// Labels of the workload (nil for gateway entries).
	Labels map[string]string
	// ServiceAccount of the workload ("" for gateway entries).
	ServiceAccount string
	Namespace      string
}

// NoGateway is told about an endpoint on another network that has no
// gateway and is therefore sent as a direct pod address.
type NoGateway func(network string)

// SplitHorizon turns a service port's endpoints into what one proxy may dial.
// Endpoints on the proxy's network (or the unknown network, or a network
// with no gateway) are kept; the others are replaced, per locality, by their
// network's gateways, weighted by how many endpoints each stands for. A
// cross-network endpoint without mTLS is dropped: only mTLS carries the SNI
// the gateway routes on.
func SplitHorizon(v View, eps []registry.Endpoint, portName string, gateways []registry.Gateway, noGW NoGateway) []LbEndpoint {
	type gwKey struct{ network, cluster string }
	byNet := map[string][]registry.Gateway{}
	byNetCluster := map[gwKey][]registry.Gateway{}
	for _, g := range gateways {
		byNet[g.Network] = append(byNet[g.Network], g)
		k := gwKey{g.Network, g.Cluster}
		byNetCluster[k] = append(byNetCluster[k], g)
	}
	scale := uint32(1)
	for _, gs := range byNet {
		scale = lcm(scale, uint32(len(gs)))
	}
	for _, gs := range byNetCluster {
		scale = lcm(scale, uint32(len(gs)))
	}

	type group struct {
		out []LbEndpoint
		acc map[registry.Gateway]uint32
	}
	groups := map[registry.Locality]*group{}
	var order []registry.Locality
	for _, e := range eps {
		port, ok := e.Ports[portName]
		if !ok || !e.Ready || !v.Visible(e.Network) {
			continue
		}
		g, ok := groups[e.Locality]
		if !ok {
			g = &group{acc: map[registry.Gateway]uint32{}}
			groups[e.Locality] = g
			order = append(order, e.Locality)
		}
		direct := LbEndpoint{Address: e.Address, Port: port, Weight: scale, Locality: e.Locality, TLSMode: e.TLSMode,
			Network: e.Network, Cluster: e.Cluster, Labels: e.Labels, ServiceAccount: e.ServiceAccount, Namespace: e.Namespace}
		if len(gateways) == 0 {
			g.out = append(g.out, direct)
			continue
		}
		gws := byNetCluster[gwKey{e.Network, e.Cluster}]
		if len(gws) == 0 {
			gws = byNet[e.Network]
		}
		force := v.Network == "" && e.Network != "" && len(gws) > 0
		if !force && (v.Network == e.Network || e.Network == "" || len(gws) == 0) {
			if len(gws) == 0 && e.Network != v.Network && e.Network != "" && noGW != nil {
				noGW(e.Network)
			}
			g.out = append(g.out, direct)
			continue
		}
		if e.TLSMode != "istio" {
			continue
		}
		share := scale / uint32(len(gws))
		for _, gw := range gws {
			g.acc[gw] += share
		}
	}
	total := 0
	for _, g := range groups {
		total += len(g.out) + len(g.acc)
	}
	out := make([]LbEndpoint, 0, total)
	sort.Slice(order, func(i, j int) bool { return order[i].String() < order[j].String() })
	for _, loc := range order {
		g := groups[loc]
		gws := make([]registry.Gateway, 0, len(g.acc))
		for gw := range g.acc {
			gws = append(gws, gw)
		}
		sort.Slice(gws, func(i, j int) bool {
			if gws[i].Address != gws[j].Address {
				return gws[i].Address < gws[j].Address
			}
			return gws[i].Port < gws[j].Port
		})
		out = append(out, g.out...)
		for _, gw := range gws {
			out = append(out, LbEndpoint{Address: gw.Address, Port: gw.Port, Weight: max(g.acc[gw], 1), Locality: loc,
				TLSMode: "istio", Network: gw.Network, Cluster: gw.Cluster, Gateway: true})
		}
	}
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func lcm(a, b uint32) uint32 {
	if a == 0 || b == 0 {
		return max(a, b)
	}
	return a / gcd(a, b) * b
}
