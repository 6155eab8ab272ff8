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
// identity) that claims the same node ID.
func (p *proxy) key() string {
	if p.identity == nil {
		return p.ID
	}
	return p.ID + " " + p.identity.String()
}
