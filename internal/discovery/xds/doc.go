// Package xds serves the mesh's configuration to proxies over Envoy's
// aggregated discovery service (state-of-the-world and delta), with
// go-control-plane's types and its own stream handling (ads.go says why).
// Each proxy gets resources generated for it: its cluster, network and
// network view decide which endpoints are direct and which go through an
// east-west gateway. On the TLS port a proxy is the pod its token proves
// (server.go: connect); what the node says is believed only on the
// plaintext port, and never for credentials.
package xds
