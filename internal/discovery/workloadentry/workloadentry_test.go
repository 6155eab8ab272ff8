package workloadentry

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func entry(t *testing.T, ns, name, spec string) *networkingv1.WorkloadEntry {
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

// Services of the config cluster select entries of their namespace; the
// port is the numeric targetPort unless the entry names the service port,
// the entry's port of a named targetPort (skipped without one).
func TestBuild(t *testing.T) {
	own := []*registry.Service{
		{Namespace: "demo", Name: "vmapp", Hostname: "vmapp.demo.svc.cluster.local", ClusterIP: "10.96.0.10", Selector: map[string]string{"app": "vmapp"},
			Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}, {Name: "grpc", Port: 90, Protocol: "TCP", TargetPortName: "grpc-port"}}},
		{Namespace: "demo", Name: "named", Hostname: "named.demo.svc.cluster.local", ClusterIP: "10.96.0.11", Selector: map[string]string{"app": "vmapp"},
			Ports: []registry.Port{{Name: "web", Port: 80, Protocol: "TCP", TargetPort: 80}}},
		{Namespace: "other", Name: "vmapp", Hostname: "vmapp.other.svc.cluster.local", ClusterIP: "10.96.0.12", Selector: map[string]string{"app": "vmapp"},
			Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}}},
		{Namespace: "demo", Name: "noselector", Hostname: "noselector.demo.svc.cluster.local", ClusterIP: "10.96.0.13",
			Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}}},
	}
	// The merged view names port 80 of named differently (another
	// cluster was first): endpoints carry the merged name.
	merged := []*registry.Service{own[0], {Hostname: "named.demo.svc.cluster.local", Ports: []registry.Port{{Name: "http-web", Port: 80, Protocol: "TCP"}}}}
	var warnings []string
	sh := Build([]*networkingv1.WorkloadEntry{
		entry(t, "demo", "vm-1", "address: 198.19.1.10\nlabels: {app: vmapp, version: v1}\nserviceAccount: vm\nnetwork: vm-net\nlocality: r1/z1\nports: {web: 8000}\n"),
		entry(t, "demo", "vm-2", "address: 198.19.1.11\nlabels: {app: vmapp}\nports: {grpc-port: 9090}\n"),
		entry(t, "demo", "vm-3", "address: 198.19.1.10\nlabels: {app: vmapp}\n"),
		entry(t, "demo", "vm-dns", "address: vm.example.com\nlabels: {app: vmapp}\n"),
		entry(t, "aa-other", "squat", "address: 198.19.1.10\nlabels: {app: vmapp}\nserviceAccount: vm\n"),
	}, own, merged, "cluster-eks", func(w string) { warnings = append(warnings, w) })

	eps := sh.Endpoints["vmapp.demo.svc.cluster.local"]
	if len(eps) != 2 {
		t.Fatalf("vmapp endpoints: %+v", eps)
	}
	if e := eps[0]; e.Address != "198.19.1.10" || e.Ports["http"] != 8080 || len(e.Ports) != 1 || e.TLSMode != "istio" || e.ServiceAccount != "vm" ||
		e.Namespace != "demo" || e.Network != "vm-net" || e.Cluster != "cluster-eks" || e.Locality.Zone != "z1" || !e.Ready {
		t.Errorf("vm-1 (numeric targetPort; no grpc-port, so no grpc): %+v", e)
	}
	if e := eps[1]; e.Address != "198.19.1.11" || e.Ports["http"] != 8080 || e.Ports["grpc"] != 9090 || e.TLSMode != "" {
		t.Errorf("vm-2 (named targetPort from its ports; no account, no mTLS): %+v", e)
	}
	if n := sh.Endpoints["named.demo.svc.cluster.local"]; len(n) != 2 || n[0].Ports["http-web"] != 8000 || n[1].Ports["http-web"] != 80 {
		t.Errorf("named (the entry's port of the service port's name, under the merged name): %+v", n)
	}
	if len(sh.Endpoints["vmapp.other.svc.cluster.local"]) != 0 || len(sh.Endpoints["noselector.demo.svc.cluster.local"]) != 0 {
		t.Error("another namespace's service, or one without a selector, selected an entry")
	}
	if w := sh.Workloads[Key("aa-other", "198.19.1.10")]; w.Name != "squat" {
		t.Errorf("another namespace's entry at the same address is its own workload: %+v", w)
	}
	if w := sh.Workloads[Key("demo", "198.19.1.10")]; w.Name != "vm-1" || w.ServiceAccount != "vm" || w.Labels["version"] != "v1" || w.Router {
		t.Errorf("workload at 198.19.1.10 (the first entry keeps it): %+v", w)
	}
	all := strings.Join(warnings, "\n")
	for _, want := range []string{"vm-3: address 198.19.1.10 is already demo/vm-1's", `vm-dns: address "vm.example.com" is not an IP address`} {
		if !strings.Contains(all, want) {
			t.Errorf("no warning %q in:\n%s", want, all)
		}
	}
}

// The source follows entries and the config cluster's services, and a
// rebuild that changes nothing is no push.
func TestSource(t *testing.T) {
	reg := registry.New()
	var entries atomic.Pointer[[]*networkingv1.WorkloadEntry]
	entries.Store(&[]*networkingv1.WorkloadEntry{entry(t, "demo", "vm-1", "address: 198.19.1.10\nlabels: {app: vmapp}\nserviceAccount: vm\n")})
	s := &Source{Registry: reg, Cluster: "cluster-eks", Entries: func() []*networkingv1.WorkloadEntry { return *entries.Load() }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Run(ctx) }()
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal(what)
			}
		}
	}
	waitFor("the entry never became a workload", func() bool { _, ok := reg.Workload(Shard, Key("demo", "198.19.1.10")); return ok })
	reg.SetService("cluster-aks", "vmapp.demo.svc.cluster.local", &registry.Service{Namespace: "demo", Name: "vmapp", Hostname: "vmapp.demo.svc.cluster.local",
		Selector: map[string]string{"app": "vmapp"}, Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}}})
	time.Sleep(100 * time.Millisecond)
	if len(reg.Endpoints("vmapp.demo.svc.cluster.local")) != 0 {
		t.Error("a service of another cluster than the config cluster selected the entry")
	}
	var full atomic.Int32
	reg.Subscribe(func(e registry.Event) {
		if e.Full {
			full.Add(1)
		}
	})
	reg.SetService("cluster-eks", "vmapp.demo.svc.cluster.local", &registry.Service{Namespace: "demo", Name: "vmapp", Hostname: "vmapp.demo.svc.cluster.local",
		Selector: map[string]string{"app": "vmapp"}, Ports: []registry.Port{{Name: "http", Port: 80, Protocol: "TCP", TargetPort: 8080}}})
	waitFor("the config cluster's service did not select the entry", func() bool { return len(reg.Endpoints("vmapp.demo.svc.cluster.local")) == 1 })
	time.Sleep(100 * time.Millisecond)
	if n := full.Load(); n != 1 { // the shard's replacement; the service itself is not full
		t.Errorf("%d full pushes, want 1 (the shard replaced once)", n)
	}
	entries.Store(&[]*networkingv1.WorkloadEntry{})
	s.Changed()
	waitFor("a deleted entry stayed", func() bool { _, ok := reg.Workload(Shard, Key("demo", "198.19.1.10")); return !ok })
}
