package registry

import (
	"slices"
	"testing"
)

// A remote's istiod Service names its ports differently from the
// primary's; endpoints of both clusters still belong to the same port.
func TestEndpointsMatchPortsByNumber(t *testing.T) {
	r := New()
	const host = "istiod.istio-system.svc.cluster.local"
	svc := func(names ...string) map[string]*Service {
		s := &Service{Namespace: "istio-system", Name: "istiod", Hostname: host}
		for i, n := range names {
			s.Ports = append(s.Ports, Port{Name: n, Port: []int32{15012, 443}[i]})
		}
		return map[string]*Service{host: s}
	}
	r.ReplaceCluster("cluster-aks", Shard{Services: svc("tcp-istiod", "tcp-webhook"),
		Endpoints: map[string][]Endpoint{host: {{Address: "198.18.1.11", Cluster: "cluster-aks", Ports: map[string]int32{"tcp-istiod": 15012, "tcp-webhook": 15017}}}}})
	r.ReplaceCluster("cluster-eks", Shard{Services: svc("https-dns", "https-webhook"),
		Endpoints: map[string][]Endpoint{host: {{Address: "100.64.0.3", Cluster: "cluster-eks", Ports: map[string]int32{"https-dns": 15012, "https-webhook": 15017}}}}})
	names := map[int32]string{}
	for _, s := range r.Services() {
		for _, p := range s.Ports {
			names[p.Port] = p.Name
		}
	}
	for _, e := range r.Endpoints(host) {
		if e.Ports[names[15012]] != 15012 || e.Ports[names[443]] != 15017 {
			t.Errorf("%s endpoint ports %v; service ports %v", e.Cluster, e.Ports, names)
		}
	}
}

// Where pods run: recorded per cluster, forgotten with the pod or the
// cluster, announced only when new or moved.
func TestWorkloads(t *testing.T) {
	r := New()
	var heard []string
	r.SubscribeWorkloads(func(cluster, address string) { heard = append(heard, cluster+"/"+address) })
	east := Locality{Region: "us-east-1", Zone: "us-east-1a"}
	r.SetWorkload("c1", "10.0.0.1", Workload{Locality: east}, true)
	r.SetWorkload("c1", "10.0.0.1", Workload{Locality: east}, true)
	if w, ok := r.Workload("c1", "10.0.0.1"); !ok || w.Locality != east {
		t.Fatalf("locality %v %v", w.Locality, ok)
	}
	if _, ok := r.Workload("c2", "10.0.0.1"); ok {
		t.Fatal("another cluster's pod")
	}
	r.SetWorkload("c1", "10.0.0.1", Workload{}, false)
	if _, ok := r.Workload("c1", "10.0.0.1"); ok {
		t.Fatal("a deleted pod is still placed")
	}
	r.ReplaceCluster("c1", Shard{Workloads: map[string]Workload{"10.0.0.2": {Locality: east}}})
	if _, ok := r.Workload("c1", "10.0.0.2"); !ok {
		t.Fatal("a full resync's pods are placed")
	}
	r.RemoveCluster("c1")
	if _, ok := r.Workload("c1", "10.0.0.2"); ok {
		t.Fatal("a removed cluster's pods are still placed")
	}
	// Placed, then removed: the same placement again is not news.
	if len(heard) != 2 || heard[0] != "c1/10.0.0.1" || heard[1] != "c1/10.0.0.1" {
		t.Errorf("announced %v, want c1/10.0.0.1 placed and removed", heard)
	}
}

// Informers report objects again unchanged (an EndpointSlice event sets
// its Service again): only real changes reach listeners, and an endpoint
// change is marked as one.
func TestOnlyChangesNotify(t *testing.T) {
	r := New()
	var events []Event
	r.Subscribe(func(e Event) { events = append(events, e) })
	const host = "a.ns.svc.cluster.local"
	svc := func() *Service {
		return &Service{Namespace: "ns", Name: "a", Hostname: host, Ports: []Port{{Name: "http", Port: 80}}, Labels: map[string]string{"app": "a"}}
	}
	eps := func(addr string) []Endpoint {
		return []Endpoint{{Address: addr, Ports: map[string]int32{"http": 8080}, Cluster: "c1", Labels: map[string]string{"app": "a"}}}
	}
	r.SetService("c1", host, svc())
	r.SetEndpoints("c1", host, eps("10.0.0.1"))
	r.SetService("c1", host, svc())
	r.SetEndpoints("c1", host, eps("10.0.0.1"))
	r.SetEndpoints("c1", host, eps("10.0.0.2"))
	r.SetEndpoints("c1", "none.ns.svc.cluster.local", nil)
	if len(events) != 3 || events[0].Reason != "service" || events[1].Reason != ReasonEndpoints || events[2].Reason != ReasonEndpoints {
		t.Fatalf("events %+v, want the service, then two endpoint changes", events)
	}
}

// An endpoint change is a load-assignment push, except where clusters
// and listeners depend on the endpoints: a headless service's pods are
// listeners, and a service's mTLS accounts are pinned by its clients.
func TestEndpointChangesThatNeedAFullPush(t *testing.T) {
	r := New()
	var full []bool
	r.Subscribe(func(e Event) { full = append(full, e.Full) })
	ep := func(addr, tlsMode string) []Endpoint {
		return []Endpoint{{Address: addr, Namespace: "data", ServiceAccount: "db", TLSMode: tlsMode, Ready: true}}
	}
	r.SetService("c1", "web", &Service{Name: "web", ClusterIP: "100.96.0.1"})
	r.SetService("c1", "db", &Service{Name: "db", Headless: true})
	full = nil
	r.SetEndpoints("c1", "web", ep("100.64.0.1", "istio"))
	r.SetEndpoints("c1", "web", ep("100.64.0.2", "istio")) // same account: endpoints only
	r.SetEndpoints("c1", "web", ep("100.64.0.2", ""))      // lost its sidecar
	r.SetEndpoints("c1", "db", ep("100.64.0.9", "istio"))
	r.SetEndpoints("c1", "db", ep("100.64.0.8", "istio"))
	if want := []bool{true, false, true, true, true}; !slices.Equal(full, want) {
		t.Errorf("full pushes %v, want %v", full, want)
	}
	// Headless in one cluster, not in another: the other's pods are
	// listeners of the first cluster's proxies.
	r.SetService("c2", "db", &Service{Name: "db", ClusterIP: "100.97.0.3"})
	r.SetEndpoints("c2", "db", ep("100.65.0.1", "istio"))
	full = nil
	r.SetEndpoints("c2", "db", ep("100.65.0.2", "istio"))
	if !slices.Equal(full, []bool{true}) {
		t.Errorf("endpoints of a service headless elsewhere: full %v", full)
	}
}

// kube-dns has port 53 twice, UDP "dns" and TCP "dns-tcp": both stay
// ports of the merged service, and endpoints keep both names (merged by
// number alone, the TCP port's endpoints were lost).
func TestPortsMergeByNumberAndProtocol(t *testing.T) {
	r := New()
	const host = "kube-dns.kube-system.svc.cluster.local"
	for _, c := range []string{"cluster-aks", "cluster-eks"} {
		r.SetService(c, host, &Service{Namespace: "kube-system", Name: "kube-dns", Hostname: host, ClusterIP: "100.96.0.10",
			Ports: []Port{{Name: "dns", Port: 53, Protocol: "UDP"}, {Name: "dns-tcp", Port: 53, Protocol: "TCP"}}})
		r.SetEndpoints(c, host, []Endpoint{{Address: "198.18.1.1", Cluster: c, Ports: map[string]int32{"dns": 53, "dns-tcp": 53}, Ready: true}})
	}
	if ports := r.Services()[0].Ports; len(ports) != 2 {
		t.Errorf("merged ports %v, want dns/UDP and dns-tcp/TCP", ports)
	}
	for _, e := range r.Endpoints(host) {
		if e.Ports["dns-tcp"] != 53 || e.Ports["dns"] != 53 {
			t.Errorf("%s endpoint ports %v", e.Cluster, e.Ports)
		}
	}
}

// A ServiceEntry naming a Kubernetes Service's host does not make it an
// external service: the Kubernetes one wins its address and kind, as in
// Istio, whichever shard sorts first.
func TestKubernetesWinsAHostAServiceEntryNames(t *testing.T) {
	r := New()
	const host = "db.data.svc.cluster.local"
	r.SetService("ServiceEntry", host, &Service{Namespace: "ops", Name: host, Hostname: host, ClusterIP: "240.240.0.3", FromServiceEntry: true, MeshExternal: true})
	r.SetService("cluster-eks", host, &Service{Namespace: "data", Name: "db", Hostname: host, ClusterIP: "100.96.0.3"})
	s := r.Services()[0]
	if s.FromServiceEntry || s.MeshExternal || s.Name != "db" || s.AddressFor("cluster-eks") != "100.96.0.3" || s.AddressFor("cluster-gke") != "100.96.0.3" {
		t.Errorf("merged %+v", s)
	}
}
