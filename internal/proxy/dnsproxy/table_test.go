package dnsproxy

import (
	"net/netip"
	"slices"
	"testing"
)

func ips(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

// demoNames is the walkthrough's table as a sleep pod's sidecar gets it.
func demoNames() []Name {
	return []Name{
		{Host: "profile.multicluster.svc.cluster.local", IPs: ips("10.96.0.20"), Registry: RegistryKubernetes, Shortname: "profile", Namespace: "multicluster"},
		{Host: "dual.multicluster.svc.cluster.local", IPs: ips("10.96.0.21", "fd00::21"), Registry: RegistryKubernetes, Shortname: "dual", Namespace: "multicluster"},
		{Host: "v6only.multicluster.svc.cluster.local", IPs: ips("fd00::22"), Registry: RegistryKubernetes, Shortname: "v6only", Namespace: "multicluster"},
		{Host: "details.other.svc.cluster.remote", IPs: ips("10.97.0.1"), Registry: RegistryKubernetes, Shortname: "details", Namespace: "other"},
		{Host: "api.example.com", IPs: ips("240.240.0.1"), Registry: "External"},
		{Host: "*.wild.example.com", IPs: ips("240.240.0.2"), Registry: "External"},
		{Host: "*.b.wild.example.com", IPs: ips("240.240.0.3"), Registry: "External"},
		{Host: "noaddr.multicluster.svc.cluster.local", Registry: RegistryKubernetes, Shortname: "noaddr", Namespace: "multicluster"},
	}
}

var kubeSearch = func(ns string) []string {
	return []string{ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}
}

func TestTableNames(t *testing.T) {
	type want struct {
		name  string
		found bool
		cname string // "" for a direct answer
		v4    string
	}
	cases := []struct {
		ns    string
		wants []want
	}{
		{"multicluster", []want{
			{"profile.multicluster.svc.cluster.local.", true, "", "10.96.0.20"},
			{"profile.multicluster.svc.", true, "", "10.96.0.20"},
			{"profile.multicluster.", true, "", "10.96.0.20"},
			{"profile.", true, "", "10.96.0.20"},
			// The search list's first try of each short form is a CNAME.
			{"profile.multicluster.multicluster.svc.cluster.local.", true, "profile.multicluster.", "10.96.0.20"},
			{"profile.multicluster.svc.multicluster.svc.cluster.local.", true, "profile.multicluster.svc.", "10.96.0.20"},
			// Names already ending with the first search domain are not
			// expanded (Istio): this one goes upstream.
			{"profile.multicluster.svc.cluster.local.multicluster.svc.cluster.local.", false, "", ""},
			// A service of another cluster domain answers to its host only.
			{"details.other.svc.cluster.remote.", true, "", "10.97.0.1"},
			{"details.other.", false, "", ""},
			{"details.other.svc.cluster.remote.multicluster.svc.cluster.local.", true, "details.other.svc.cluster.remote.", "10.97.0.1"},
			// ServiceEntry hosts: exact, and its search expansion.
			{"api.example.com.", true, "", "240.240.0.1"},
			{"api.", false, "", ""},
			{"api.example.com.multicluster.svc.cluster.local.", true, "api.example.com.", "240.240.0.1"},
			// Wildcards: the most specific wins; the expansion points at the wildcard.
			{"x.wild.example.com.", true, "", "240.240.0.2"},
			{"x.y.wild.example.com.", true, "", "240.240.0.2"},
			{"x.b.wild.example.com.", true, "", "240.240.0.3"},
			{"wild.example.com.", false, "", ""},
			{"x.wild.example.com.multicluster.svc.cluster.local.", true, "*.wild.example.com.", "240.240.0.2"},
			// No address at all: not in the table.
			{"noaddr.multicluster.svc.cluster.local.", false, "", ""},
			{"unknown.", false, "", ""},
		}},
		{"sample", []want{
			{"profile.", false, "", ""},
			{"profile.multicluster.", true, "", "10.96.0.20"},
			{"profile.multicluster.svc.", true, "", "10.96.0.20"},
			{"profile.multicluster.svc.cluster.local.", true, "", "10.96.0.20"},
			{"profile.multicluster.svc.cluster.local.sample.svc.cluster.local.", true, "profile.multicluster.svc.cluster.local.", "10.96.0.20"},
			{"profile.multicluster.sample.svc.cluster.local.", true, "profile.multicluster.", "10.96.0.20"},
			{"profile.sample.svc.cluster.local.", false, "", ""},
		}},
	}
	for _, c := range cases {
		tab := buildTable(newTableConfig(c.ns, "", kubeSearch(c.ns)), demoNames())
		for _, w := range c.wants {
			e, ok := tab.lookup(w.name)
			if ok != w.found {
				t.Errorf("from %s: %s found=%v, want %v", c.ns, w.name, ok, w.found)
				continue
			}
			if !ok {
				continue
			}
			if e.cname != w.cname {
				t.Errorf("from %s: %s cname %q, want %q", c.ns, w.name, e.cname, w.cname)
			}
			if len(e.ips.v4) != 1 || e.ips.v4[0].String() != w.v4 {
				t.Errorf("from %s: %s v4 %v, want %s", c.ns, w.name, e.ips.v4, w.v4)
			}
		}
	}
}

func TestTableConfig(t *testing.T) {
	for _, c := range []struct{ ns, domain, want string }{
		{"sample", "", "svc.cluster.local"},
		{"sample", "sample.svc.cluster.local", "svc.cluster.local"},
		{"sample", "svc.corp.example.", "svc.corp.example"},
		{"", "", ""},
	} {
		if got := newTableConfig(c.ns, c.domain, nil).domain; got != c.want {
			t.Errorf("domain(%q, %q) = %q, want %q", c.ns, c.domain, got, c.want)
		}
	}
	// Another cluster domain: cluster.local services keep their host only.
	tab := buildTable(newTableConfig("multicluster", "multicluster.svc.corp", nil), demoNames())
	if _, ok := tab.lookup("profile.multicluster."); ok {
		t.Error("short name made outside the proxy's domain")
	}
	if _, ok := tab.lookup("profile.multicluster.svc.cluster.local."); !ok {
		t.Error("host missing")
	}
}

func TestTableClashesAndInputs(t *testing.T) {
	names := []Name{
		// A ServiceEntry whose host is another service's short form: the
		// host wins over the short name, whatever the order.
		{Host: "profile.multicluster", IPs: ips("240.0.0.9"), Registry: "External"},
		{Host: "Profile.Multicluster.svc.cluster.local.", IPs: ips("10.0.0.1", "10.0.0.1", "::ffff:10.0.0.2", "fe80::1%eth0", "fe80::1"), Registry: RegistryKubernetes, Shortname: "Profile", Namespace: "Multicluster"},
	}
	tab := buildTable(newTableConfig("multicluster", "", nil), names)
	e, ok := tab.lookup("profile.multicluster.")
	if !ok || e.ips.v4[0].String() != "240.0.0.9" {
		t.Fatalf("clash: got %v", e.ips)
	}
	e, ok = tab.lookup("profile.multicluster.svc.cluster.local.")
	if !ok || !slices.Equal(e.ips.v4, ips("10.0.0.1", "10.0.0.2")) || !slices.Equal(e.ips.v6, ips("fe80::1")) {
		t.Fatalf("addresses not cleaned: %v", e.ips)
	}
	if _, ok := tab.lookup("profile."); !ok {
		t.Error("upper-case namespace not matched")
	}
	// The table keeps its own copy.
	names[1].IPs[0] = netip.MustParseAddr("1.1.1.1")
	if tab.names[1].IPs[0].String() != "10.0.0.1" {
		t.Error("table shares the caller's slice")
	}
}
