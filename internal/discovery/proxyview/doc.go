// Package proxyview decides what each proxy gets: from the registry and
// the Istio configuration, the listeners, routes, clusters, load
// assignments and gateway credentials of one proxy's view of the mesh (its
// type, network, cluster, locality, namespace and labels), in Envoy's
// shapes and Istio's names. It knows nothing of streams: package xds
// delivers what it generates.
//
// The path of one endpoint through it: generate.go turns a service's
// endpoints, split by network (package network), into load assignments;
// sidecar.go builds a sidecar's listeners and routes, gateway.go and
// ingress.go a router's; vs.go, dr.go, authz.go and peerauthn.go translate
// VirtualService, DestinationRule, AuthorizationPolicy and
// PeerAuthentication.
package proxyview
