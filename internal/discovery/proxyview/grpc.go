package proxyview

import (
	"net"
	"strconv"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/isthmus-mesh/isthmus/internal/discovery/network"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// GeneratorGRPC is the node metadata GENERATOR value of proxyless gRPC
// clients, as in Istio: they get API listeners named HOST:PORT.
const GeneratorGRPC = "grpc"

// GenerateGRPC builds what a proxyless gRPC client resolves `xds:///HOST:PORT`
// with: an API listener per service port with an inline route to the
// outbound cluster, and EDS clusters without transport-socket matches
// (which gRPC does not accept); endpoints as for a sidecar.
func GenerateGRPC(p *Proxy, reg *registry.Registry, noGW network.NoGateway) Generated {
	var g Generated
	gws := reg.Gateways()
	view := network.View{Network: p.Network, Requested: network.ParseRequested(p.RequestedNetworkView)}
	router := mustAny(&routerv3.Router{})
	for _, svc := range reg.Services() {
		eps := reg.Endpoints(svc.Hostname)
		for _, port := range svc.Ports {
			if port.Protocol == "UDP" {
				continue
			}
			name := OutboundCluster(port.Port, "", svc.Hostname)
			cl := edsCluster(name, nil)
			cl.LbPolicy = cluster.Cluster_ROUND_ROBIN
			g.Clusters = append(g.Clusters, cl)
			g.Endpoints = append(g.Endpoints, loadAssignment(name, network.SplitHorizon(view, eps, port.Name, gws, noGW), nil))
			hostPort := net.JoinHostPort(svc.Hostname, strconv.Itoa(int(port.Port)))
			manager := &hcm.HttpConnectionManager{
				RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
					Name: hostPort,
					VirtualHosts: []*route.VirtualHost{{
						Name:    hostPort,
						Domains: []string{hostPort, svc.Hostname},
						Routes: []*route.Route{{
							Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}},
							Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name}}},
						}},
					}},
				}},
				HttpFilters: []*hcm.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: router}}},
			}
			g.Listeners = append(g.Listeners, &listener.Listener{
				Name:        hostPort,
				ApiListener: &listener.ApiListener{ApiListener: mustAny(manager)},
			})
		}
	}
	return g
}
