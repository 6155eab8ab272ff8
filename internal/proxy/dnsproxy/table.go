package dnsproxy

import (
	"net/netip"
	"slices"
	"sort"
	"strings"
)

// Name is one host of the control plane's name table (Istio's NDS
// NameTable: the map key and its NameInfo).
type Name struct {
	// Host is the service's hostname, e.g. profile.multicluster.svc.cluster.local.
	Host string
	// IPs are the addresses answered for the host, v4 and v6 mixed.
	IPs []netip.Addr
	// Registry is "Kubernetes" for Kubernetes services; other registries
	// (ServiceEntry hosts) answer only to Host itself.
	Registry string
	// Shortname and Namespace are the Kubernetes service name and namespace,
	// from which the short forms (name, name.ns, name.ns.svc) are made.
	Shortname string
	Namespace string
}

// RegistryKubernetes is the Registry of entries that get Kubernetes' short names.
const RegistryKubernetes = "Kubernetes"

// addrs are one host's addresses, shared by all the names that lead to it.
type addrs struct{ v4, v6 []netip.Addr }

// entry is what one query name resolves to. A search-list expansion is a
// CNAME to the name it expands (cname) and carries that name's addresses,
// so a lookup is a single map access.
type entry struct {
	ips   *addrs
	cname string
}

// table is an immutable lookup table; the server swaps whole tables so the
// query path reads without locks.
type table struct {
	names []Name
	// exact holds every answerable name, lower case, with the final dot.
	exact map[string]entry
	// wild holds the names starting "*.", keyed by what follows the "*.".
	wild map[string]entry
}

// tableConfig is what of the pod's own DNS set-up shapes the table.
type tableConfig struct {
	namespace string
	// domain is the proxy's domain without its namespace label
	// (svc.cluster.local); empty turns off the short names.
	domain string
	// search is the first search domain of resolv.conf, without final dot.
	search string
}

// newTableConfig derives the domain as Istio's agent does: the proxy domain
// defaults to NS.svc.cluster.local and loses its leading namespace label.
func newTableConfig(namespace, domain string, search []string) tableConfig {
	if domain == "" && namespace != "" {
		domain = namespace + ".svc.cluster.local"
	}
	domain = strings.ToLower(strings.Trim(domain, "."))
	if first, rest, ok := strings.Cut(domain, "."); ok && first == namespace {
		domain = rest
	}
	c := tableConfig{namespace: namespace, domain: domain}
	if len(search) > 0 {
		c.search = strings.ToLower(strings.Trim(search[0], "."))
	}
	return c
}

func buildTable(cfg tableConfig, in []Name) *table {
	names := make([]Name, len(in))
	for i, n := range in {
		n.IPs = slices.Clone(n.IPs)
		names[i] = n
	}
	t := &table{names: names, exact: map[string]entry{}, wild: map[string]entry{}}

	// Sorted, and in three passes, so that a clash is settled the same way
	// every time: a host beats a short name, which beats a search expansion.
	order := slices.Clone(names)
	sort.SliceStable(order, func(i, j int) bool { return order[i].Host < order[j].Host })
	type built struct {
		ips  *addrs
		alts []string
	}
	all := make([]built, 0, len(order))
	for _, n := range order {
		host := fqdn(n.Host)
		ips := splitAddrs(n.IPs)
		if host == "." || ips == nil {
			continue
		}
		all = append(all, built{ips, altNames(cfg, host, n)})
	}
	for _, b := range all {
		t.add(b.alts[0], entry{ips: b.ips})
	}
	for _, b := range all {
		for _, alt := range b.alts[1:] {
			t.add(alt, entry{ips: b.ips})
		}
	}
	if cfg.search == "" {
		return t
	}
	// The app's resolver tries NAME.search[0] first; answering it with a
	// CNAME to NAME stops the search after two queries instead of one
	// upstream round trip per search domain. Only the first search domain
	// is expanded, and names already ending with it are left alone, as
	// Istio's agent does.
	suffix := "." + cfg.search + "."
	for _, b := range all {
		for _, alt := range b.alts {
			if strings.HasSuffix(alt, suffix) {
				continue
			}
			t.add(alt+cfg.search+".", entry{ips: b.ips, cname: alt})
		}
	}
	return t
}

func (t *table) add(name string, e entry) {
	if _, ok := t.exact[name]; ok {
		return
	}
	t.exact[name] = e
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		t.wild[rest] = e
	}
}

// altNames lists the names a host answers to, the host first. A Kubernetes
// service of the proxy's own domain also answers to name.ns, name.ns.svc
// and, from its own namespace only, to name: what a pod's search list would
// make of them. Services of other domains (other clusters' domains) keep
// only their host, as name.ns could not tell them apart.
func altNames(cfg tableConfig, host string, n Name) []string {
	out := []string{host}
	if n.Registry != RegistryKubernetes || cfg.domain == "" || n.Shortname == "" || n.Namespace == "" ||
		!strings.HasSuffix(host, "."+cfg.domain+".") {
		return out
	}
	short, ns := strings.ToLower(n.Shortname), strings.ToLower(n.Namespace)
	svc, _, _ := strings.Cut(cfg.domain, ".")
	out = append(out, short+"."+ns+".", short+"."+ns+"."+svc+".")
	if ns == strings.ToLower(cfg.namespace) {
		out = append(out, short+".")
	}
	return out
}

// lookup finds a lower-case query name, falling back to the most specific
// wildcard host that covers it.
func (t *table) lookup(name string) (entry, bool) {
	if e, ok := t.exact[name]; ok {
		return e, true
	}
	for i := 0; i < len(name)-1; i++ {
		if name[i] == '.' {
			if e, ok := t.wild[name[i+1:]]; ok {
				return e, true
			}
		}
	}
	return entry{}, false
}

func fqdn(host string) string {
	return strings.ToLower(strings.TrimSuffix(host, ".")) + "."
}

// splitAddrs separates v4 from v6 and drops invalid and repeated addresses;
// nil when none is left, as such a host cannot be answered.
func splitAddrs(ips []netip.Addr) *addrs {
	a := &addrs{}
	for _, ip := range ips {
		if !ip.IsValid() {
			continue
		}
		ip = ip.Unmap().WithZone("")
		if ip.Is4() {
			if !slices.Contains(a.v4, ip) {
				a.v4 = append(a.v4, ip)
			}
		} else if !slices.Contains(a.v6, ip) {
			a.v6 = append(a.v6, ip)
		}
	}
	if len(a.v4)+len(a.v6) == 0 {
		return nil
	}
	return a
}
