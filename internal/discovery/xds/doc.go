// Package xds delivers what package proxyview generates: it serves the
// mesh's configuration to proxies over Envoy's aggregated discovery
// service (state-of-the-world and delta), with go-control-plane's types and
// its own stream handling (ads.go says why). server.go is the push loop,
// snapshot.go assembles each proxy's snapshot from views generated once per
// push, connect.go decides who a stream is (on the TLS port the pod its
// token proves; the node's word only on the plaintext port, and never for
// credentials), status.go is what proxy-status shows.
package xds
