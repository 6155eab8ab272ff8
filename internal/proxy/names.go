package proxy

import (
	"github.com/isthmus-mesh/isthmus/internal/nds"
	"github.com/isthmus-mesh/isthmus/internal/proxy/dnsproxy"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// NamesApplier hands Istio's name table (NDS) to the sidecar's DNS and
// everything else to the proxy. A table that does not decode is refused
// (NACKed) and the DNS keeps the last one.
type NamesApplier struct {
	Next xdsclient.Applier
	DNS  *dnsproxy.Server
	// want is what the last configuration applied subscribes to: a new
	// name table changes none of it.
	want map[string][]string
}

// Apply implements xdsclient.Applier.
func (a *NamesApplier) Apply(st xdsclient.State, changed string) (map[string][]string, error) {
	if changed != nds.TypeURL {
		want, err := a.Next.Apply(st, changed)
		if err == nil {
			a.want = want
		}
		return want, err
	}
	var names []dnsproxy.Name
	for _, r := range st[nds.TypeURL] {
		t, err := nds.Decode(r)
		if err != nil {
			return nil, err
		}
		for host, n := range t {
			names = append(names, dnsproxy.Name{Host: host, IPs: n.IPs, Registry: n.Registry, Shortname: n.Shortname, Namespace: n.Namespace})
		}
	}
	a.DNS.SetTable(names)
	return a.want, nil
}
