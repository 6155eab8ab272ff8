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
