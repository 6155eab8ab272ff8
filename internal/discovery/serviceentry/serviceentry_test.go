package serviceentry

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

type fakeDNS map[string][]netip.Addr

func (f fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if ips, ok := f[host]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func entry(t *testing.T, ns, name string, age int, spec string) *networkingv1.ServiceEntry {
	t.Helper()
	se := &networkingv1.ServiceEntry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name,
		CreationTimestamp: metav1.NewTime(time.Unix(int64(1000-age), 0))}}
	j, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := se.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return se
}

func workload(t *testing.T, ns, name, spec string) *networkingv1.WorkloadEntry {
	t.Helper()
	we := &networkingv1.WorkloadEntry{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	j, err := yaml.YAMLToJSON([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if err := we.Spec.UnmarshalJSON(j); err != nil {
		t.Fatal(err)
	}
	return we
}

func TestBuild(t *testing.T) {
	dns := fakeDNS{"api.example.com": {netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.6")},
		"db.internal": {netip.MustParseAddr("10.9.0.5")}}
	var warnings []string
	sh := Build(context.Background(), []*networkingv1.ServiceEntry{
		entry(t, "shop", "api", 3, "hosts: [api.example.com]\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS\n"),
		entry(t, "shop", "registry", 2, "hosts: [registry.example.test]\naddresses: [192.0.2.10]\nports: [{number: 5000, name: http, protocol: HTTP, targetPort: 5001}]\n"+
			"resolution: STATIC\nendpoints: [{address: 198.18.0.2}, {address: vm.example, ports: {http: 9000}}]\n"),
		entry(t, "shop", "vm", 1, "hosts: [vm.shop.mesh]\nlocation: MESH_INTERNAL\nports: [{number: 8080, name: http, protocol: HTTP}]\nresolution: DNS\n"+
			"endpoints: [{address: db.internal, labels: {security.istio.io/tlsMode: istio}, serviceAccount: vm, network: vm-net, locality: us-east-1/a}]\n"),
		entry(t, "shop", "any", 0, "hosts: [passthrough.example]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: NONE\n"),
		entry(t, "other", "dup", 0, "hosts: [api.example.com, '*.wild.example']\nports: [{number: 443, name: tls, protocol: TLS}]\nresolution: DNS\n"),
		entry(t, "other", "sel", 0, "hosts: [sel.example]\nlocation: MESH_INTERNAL\nworkloadSelector: {labels: {app: vm}}\nports: [{number: 80, name: http, protocol: HTTP}]\n"),
	}, Selectable{Entries: []*networkingv1.WorkloadEntry{
		workload(t, "other", "vm-1", "address: 10.0.0.9\nlabels: {app: vm}\nports: {http: 8081}\nserviceAccount: vm\nnetwork: vm-net\n"),
		workload(t, "other", "db-1", "address: 10.0.0.10\nlabels: {app: db}\n"),
		workload(t, "shop", "vm-2", "address: 10.0.0.11\nlabels: {app: vm}\n"),
	}, Pods: map[string]registry.Workload{
		"10.1.0.5": {Namespace: "other", Name: "vm-pod", ServiceAccount: "vm", Labels: map[string]string{"app": "vm", "security.istio.io/tlsMode": "istio"}, Network: "n1", Ready: true},
		"10.1.0.6": {Namespace: "other", Name: "plain", ServiceAccount: "default", Labels: map[string]string{"app": "vm"}, Network: "n1", Ready: true},
		"10.1.0.7": {Namespace: "other", Name: "gw", Labels: map[string]string{"app": "vm"}, Router: true, Ready: true},
		"10.1.0.8": {Namespace: "shop", Name: "vm-pod", Labels: map[string]string{"app": "vm"}, Ready: true},
		"10.1.0.9": {Namespace: "other", Name: "starting", Labels: map[string]string{"app": "vm"}},
	}, Cluster: "c1"}, dns, func(w string) { warnings = append(warnings, w) })

	api := sh.Services["api.example.com"]
	if api == nil || !api.MeshExternal || !api.FromServiceEntry || api.Headless || !strings.HasPrefix(api.ClusterIP, "240.240.") || api.Ports[0].AppProtocol != "tls" {
		t.Fatalf("api.example.com: %+v", api)
	}
	if eps := sh.Endpoints["api.example.com"]; len(eps) != 2 || eps[0].Address != "198.51.100.6" || eps[0].Ports["tls"] != 443 || eps[0].TLSMode != "" {
		t.Errorf("api.example.com endpoints (DNS, sorted): %+v", eps)
	}
	reg := sh.Services["registry.example.test"]
	if reg.ClusterIP != "192.0.2.10" {
		t.Errorf("registry.example.test keeps its address: %q", reg.ClusterIP)
	}
	if eps := sh.Endpoints["registry.example.test"]; len(eps) != 1 || eps[0].Address != "198.18.0.2" || eps[0].Ports["http"] != 5001 {
		t.Errorf("registry.example.test endpoints (STATIC, targetPort; the hostname skipped): %+v", eps)
	}
	vm := sh.Endpoints["vm.shop.mesh"]
	if sh.Services["vm.shop.mesh"].MeshExternal || len(vm) != 1 || vm[0].TLSMode != "istio" || vm[0].ServiceAccount != "vm" || vm[0].Network != "vm-net" || vm[0].Locality.Zone != "a" {
		t.Errorf("MESH_INTERNAL endpoint: %+v", vm)
	}
	if p := sh.Services["passthrough.example"]; !p.Headless || p.ClusterIP != "" {
		t.Errorf("resolution NONE: %+v", p)
	}
	if sh.Services["*.wild.example"] != nil {
		t.Error("a wildcard host is in the registry")
	}
	// workloadSelector: the WorkloadEntries of the entry's namespace it
	// selects, on their own port, with mTLS (they name a service account).
	sel := sh.Endpoints["sel.example"]
	if len(sel) != 3 || sel[0].Address != "10.0.0.9" || sel[0].Ports["http"] != 8081 ||
		sel[0].TLSMode != "istio" || sel[0].Namespace != "other" || sel[0].Network != "vm-net" || sel[0].Cluster != "c1" {
		t.Fatalf("workloadSelector endpoints (the entry, then the pods): %+v", sel)
	}
	// The config cluster's ready pods too (not a gateway's, not another
	// namespace's, not one starting), mTLS by their tlsMode label alone.
	if p := sel[1]; p.Address != "10.1.0.5" || p.Ports["http"] != 80 || p.TLSMode != "istio" || p.Network != "n1" || p.Cluster != "c1" || p.ServiceAccount != "vm" {
		t.Errorf("a selected pod with a sidecar: %+v", p)
	}
	if p := sel[2]; p.Address != "10.1.0.6" || p.TLSMode == "istio" {
		t.Errorf("a selected pod without a sidecar: %+v", p)
	}
	if sh.Services["api.example.com"].Namespace != "shop" {
		t.Error("the newer entry took api.example.com")
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"vm.example is not an IP address", "wildcard host *.wild.example", "declared by an older ServiceEntry"} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
}

// Allocated addresses are stable for a host and never shared.
func TestAllocate(t *testing.T) {
	taken := map[netip.Addr]bool{}
	seen := map[netip.Addr]string{}
	for i := range 2000 {
		key := "ns/host-" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		ip := allocate(key, taken)
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s share %s", key, other, ip)
		}
		seen[ip] = key
		if !netip.MustParsePrefix("240.240.0.0/16").Contains(ip) || ip == netip.MustParseAddr("240.240.0.0") {
			t.Fatalf("%s outside 240.240.0.0/16 hosts", ip)
		}
	}
	if a, b := allocate("ns/h", map[netip.Addr]bool{}), allocate("ns/h", map[netip.Addr]bool{}); a != b {
		t.Errorf("unstable: %s then %s", a, b)
	}
}

// The source replaces the registry's shard when entries change, and
// not when a re-resolution changes nothing.
func TestSourceSkipsUnchanged(t *testing.T) {
	reg := registry.New()
	var full int
	reg.Subscribe(func(e registry.Event) {
		if e.Full {
			full++
		}
	})
	entries := []*networkingv1.ServiceEntry{entry(t, "shop", "api", 1, "hosts: [api.example.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS\n")}
	dns := &countingDNS{fakeDNS: fakeDNS{"api.example.com": {netip.MustParseAddr("198.51.100.7")}}}
	s := &Source{Registry: reg, Entries: func() []*networkingv1.ServiceEntry { return entries }, Resolver: dns}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for len(reg.Endpoints("api.example.com")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(reg.Endpoints("api.example.com")) != 1 {
		t.Fatal("the entry never reached the registry")
	}
	for range 3 {
		s.Changed()
		time.Sleep(20 * time.Millisecond)
	}
	if full != 1 {
		t.Errorf("%d full pushes for one change", full)
	}
	// The store says "changed" for any Istio kind: unchanged entries are
	// not looked up again before the next re-resolution.
	if n := dns.lookups.Load(); n != 1 {
		t.Errorf("%d DNS lookups for unchanged entries, want 1", n)
	}
}

type countingDNS struct {
	fakeDNS
	lookups atomic.Int32
}

func (c *countingDNS) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	c.lookups.Add(1)
	return c.fakeDNS.LookupNetIP(ctx, network, host)
}
