package proxyview

import (
	"net/netip"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/nds"
)

// NameTable is what a sidecar's DNS answers for mesh services (Istio's
// NDS): each service at its ClusterIP in the proxy's cluster, or in
// another cluster's where the proxy's has none, so a service that exists
// only in another cluster resolves to an address the sidecar has a
// listener or route for; a headless service at the ready pods of the
// proxy's network (another network's pod addresses are not reachable).
func NameTable(p *Proxy, reg *registry.Registry, services []*registry.Service) nds.Table {
	t := nds.Table{}
	podLocal := map[string]bool{} // pod names of the proxy's cluster
	// A service known only from another cluster has that cluster's
	// ClusterIP, which a local service may have too (service ranges
	// overlap): the local one keeps the address's listener (ownFirst),
	// so the other name must not lead there.
	own := map[string]bool{}
	for _, svc := range services {
		if ip, ok := svc.ClusterIPs[p.ClusterID]; ok && ip != "" {
			own[ip] = true
		}
	}
	for _, svc := range services {
		var ips []netip.Addr
		if svc.HeadlessFor(p.ClusterID) {
			for _, e := range reg.Endpoints(svc.Hostname) {
				if !e.Ready || !p.Reaches(e.Network) {
					continue
				}
				ip, err := netip.ParseAddr(e.Address)
				if err != nil {
					continue
				}
				ips = append(ips, ip)
				if e.Hostname != "" {
					// A StatefulSet pod by its own name, as Istio's table:
					// web-0.web.ns.svc.cluster.local, the proxy's own
					// cluster's pod first.
					host := e.Hostname + "." + svc.Hostname
					local := e.Cluster == p.ClusterID
					if n, ok := t[host]; ok && !(local && !podLocal[host]) {
						if local == podLocal[host] {
							n.IPs = append(n.IPs, ip)
							t[host] = n
						}
						continue
					}
					podLocal[host] = local
					t[host] = nds.Name{IPs: []netip.Addr{ip}, Registry: "Kubernetes", Shortname: e.Hostname + "." + svc.Name, Namespace: svc.Namespace}
				}
			}
		} else if ip, err := netip.ParseAddr(svc.AddressFor(p.ClusterID)); err == nil {
			if _, local := svc.ClusterIPs[p.ClusterID]; local || !own[ip.String()] {
				ips = append(ips, ip)
			}
		}
		if len(ips) == 0 {
			continue // an ExternalName service, or a headless one without pods here: the cluster's DNS answers
		}
		if svc.FromServiceEntry {
			t[svc.Hostname] = nds.Name{IPs: ips, Registry: "External"} // its name alone, as Istio's
			continue
		}
		t[svc.Hostname] = nds.Name{IPs: ips, Registry: "Kubernetes", Shortname: svc.Name, Namespace: svc.Namespace}
	}
	return t
}
