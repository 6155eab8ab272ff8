package xds

import "github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"

// proxy is a connected proxy as the server holds it: the view its
// configuration is generated for, and what its stream proved.
type proxy struct {
	*proxyview.Proxy
	// identity is what the stream's token proved; nil on the plaintext
	// port. Never read from node metadata.
	identity *Identity
	// credentials: the proxy receives its namespace's TLS credentials
	// (only with an identity, and only when authorized).
	credentials bool
}

// key names the proxy's state on the server: streams that proved an
// identity never share state with a plaintext stream (or another
// identity) that claims the same node ID, and streams that declare
// another network, network view, generator or locality never share one
// either: the last to connect would otherwise set what every stream of
// the node is generated for (a second stream without NETWORK made a
// sidecar's view drop the endpoints of pods without sidecars).
func (p *proxy) key() string {
	k := p.ID + "|" + p.Network + "|" + p.RequestedNetworkView + "|" + p.Generator + "|" + p.Locality.String()
	if p.identity == nil {
		return k
	}
	return k + " " + p.identity.String()
}
