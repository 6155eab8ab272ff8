package registry

import "testing"

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
	r.SetWorkload("c1", "10.0.0.1", east, true)
	r.SetWorkload("c1", "10.0.0.1", east, true)
	if l, ok := r.WorkloadLocality("c1", "10.0.0.1"); !ok || l != east {
		t.Fatalf("locality %v %v", l, ok)
	}
	if _, ok := r.WorkloadLocality("c2", "10.0.0.1"); ok {
		t.Fatal("another cluster's pod")
	}
	r.SetWorkload("c1", "10.0.0.1", Locality{}, false)
	if _, ok := r.WorkloadLocality("c1", "10.0.0.1"); ok {
		t.Fatal("a deleted pod is still placed")
	}
	r.ReplaceCluster("c1", Shard{Workloads: map[string]Locality{"10.0.0.2": east}})
	if _, ok := r.WorkloadLocality("c1", "10.0.0.2"); !ok {
		t.Fatal("a full resync's pods are placed")
	}
	r.RemoveCluster("c1")
	if _, ok := r.WorkloadLocality("c1", "10.0.0.2"); ok {
		t.Fatal("a removed cluster's pods are still placed")
	}
	if len(heard) != 1 || heard[0] != "c1/10.0.0.1" {
		t.Errorf("announced %v, want c1/10.0.0.1 once", heard)
	}
}
