// Package registry is the control plane's merged view of services and
// endpoints across every cluster of the mesh. Each cluster writes its own
// shard; readers see services merged by hostname with every cluster's
// endpoints, each endpoint tagged with the cluster and network it lives in.
// The registry knows nothing of Kubernetes or xDS.
package registry

import (
	"maps"
	"reflect"
	"slices"
	"sort"
	"sync"
)

// Port is one port of a service.
type Port struct {
	Name     string
	Port     int32
	Protocol string // TCP, UDP, SCTP
	// AppProtocol is the declared application protocol (http, http2, grpc,
	// tcp...), from appProtocol or the Istio port-name prefix.
	AppProtocol string
	// TargetPort is the workload's port by number, or TargetPortName by
	// name (a Kubernetes Service's targetPort): what a WorkloadEntry the
	// service selects is called on.
	TargetPort     int32
	TargetPortName string
}

// Service is one service as one cluster declares it.
type Service struct {
	Namespace, Name string
	// Hostname is name.namespace.svc.<domain>.
	Hostname string
	Ports    []Port
	// ClusterIP is this cluster's virtual address ("" for headless); in
	// a merged service, the first cluster's (by name).
	ClusterIP string
	// ClusterIPs is, in a merged service, each cluster's ClusterIP by
	// cluster ID: a proxy reaches the service at its own cluster's.
	ClusterIPs map[string]string
	// Labels of the Service object (used for network gateways).
	Labels map[string]string
	// Selector is a Kubernetes Service's pod selector (nil: none); it
	// selects WorkloadEntries of its namespace too.
	Selector map[string]string
	// Headless: clusterIP None, its pods are called by their addresses
	// (an ExternalName service has no ClusterIP either, and is not); a
	// ServiceEntry of resolution NONE too.
	Headless bool
	// FromServiceEntry: a ServiceEntry host, which answers to its name
	// alone (no Kubernetes short names); MeshExternal: outside the mesh
	// (MESH_EXTERNAL), never called with Istio mTLS.
	FromServiceEntry, MeshExternal bool
	// headlessIn is, in a merged service, whether each cluster's is.
	headlessIn map[string]bool
}

// HeadlessFor says whether the service is headless for a proxy of
// cluster: as that cluster declares it, else as the merged default.
func (s *Service) HeadlessFor(cluster string) bool {
	if h, ok := s.headlessIn[cluster]; ok {
		return h
	}
	return s.Headless
}

// AddressFor is the service's virtual address for a proxy of cluster: that
// cluster's ClusterIP where the service exists there ("" where it is
// headless), else the merged default, as Istio's GetAddressForProxy. A
// service in two clusters has two ClusterIPs, and a pod calls its own.
func (s *Service) AddressFor(cluster string) string {
	if ip, ok := s.ClusterIPs[cluster]; ok {
		return ip
	}
	return s.ClusterIP
}

// Locality places an endpoint for locality-aware load balancing.
type Locality struct{ Region, Zone, Subzone string }

// String renders region/zone/subzone, Istio's locality string.
func (l Locality) String() string {
	if l.Region == "" && l.Zone == "" && l.Subzone == "" {
		return ""
	}
	return l.Region + "/" + l.Zone + "/" + l.Subzone
}

// Endpoint is one workload address behind a service.
type Endpoint struct {
	Address string
	// Ports maps a service port name to the port on this endpoint.
	Ports          map[string]int32
	Cluster        string
	Network        string
	Locality       Locality
	ServiceAccount string // SPIFFE-less "ns/sa" form is not used: bare SA name
	Namespace      string
	Labels         map[string]string
	// TLSMode is "istio" when the workload has a sidecar that accepts mTLS.
	TLSMode string
	Ready   bool
	// Hostname is the pod's own DNS label under a headless service (a
	// StatefulSet's web-0 in web-0.web.ns.svc), from its EndpointSlice.
	Hostname string
}

// Gateway is a network's east-west gateway as one cluster reports it.
type Gateway struct {
	Network string
	Cluster string
	Address string
	Port    int32
	// Service is the gateway's Service (namespace/name), when it is one.
	Service string `json:",omitempty"`
}

// ReasonEndpoints marks an Event about endpoints alone: only the load
// assignments of its Hostnames changed.
const ReasonEndpoints = "endpoints"

// Event tells listeners what changed: services (hostnames) or, with Full,
// something global (gateways, a whole cluster) that needs a full push.
type Event struct {
	Hostnames []string
	Full      bool
	Reason    string
}

// Registry holds the shards of every cluster.
type Registry struct {
	mu        sync.RWMutex // guards clusters and listeners
	clusters  map[string]*shard
	listeners []func(Event)
	// workloadListeners hear of pods placed, without a push.
	workloadListeners []func(cluster, address string)
}

type shard struct {
	services  map[string]*Service   // by hostname
	endpoints map[string][]Endpoint // by hostname
	gateways  []Gateway
	// workloads are the cluster's pods by address: where a proxy runs
	// when no service selects its pod, and what it may claim to be.
	workloads map[string]Workload
}

// Workload is a running pod of a cluster: where it runs, and what a proxy
// that connects for it may say of itself (the control plane takes a
// proxy's labels and role from here, not from what the proxy claims).
type Workload struct {
	Namespace, Name, ServiceAccount string
	Labels                          map[string]string
	Locality                        Locality
	// Network is the pod's network (its label, else its cluster's).
	Network string
	// Ready: the pod's Ready condition (a ServiceEntry's workloadSelector
	// picks ready pods only).
	Ready bool
	// Router: the pod runs a gateway (its istio-proxy container runs
	// `proxy router`).
	Router bool
}

// New returns an empty registry.
func New() *Registry { return &Registry{clusters: map[string]*shard{}} }

// Subscribe registers fn for every change; fn must not block for long.
func (r *Registry) Subscribe(fn func(Event)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listeners = append(r.listeners, fn)
}

func (r *Registry) notify(e Event) {
	r.mu.RLock()
	ls := slices.Clone(r.listeners)
	r.mu.RUnlock()
	for _, fn := range ls {
		fn(e)
	}
}

func (r *Registry) shard(cluster string) *shard {
	s, ok := r.clusters[cluster]
	if !ok {
		s = &shard{services: map[string]*Service{}, endpoints: map[string][]Endpoint{}, workloads: map[string]Workload{}}
		r.clusters[cluster] = s
	}
	return s
}

// SetService records (or, with svc nil, removes) a cluster's service;
// listeners hear of it only if it changed (an EndpointSlice event sets
// its service again, unchanged, and must not cost a full push).
func (r *Registry) SetService(cluster, hostname string, svc *Service) {
	r.mu.Lock()
	s := r.shard(cluster)
	if reflect.DeepEqual(s.services[hostname], svc) {
		r.mu.Unlock()
		return
	}
	if svc == nil {
		delete(s.services, hostname)
	} else {
		s.services[hostname] = svc
	}
	r.mu.Unlock()
	r.notify(Event{Hostnames: []string{hostname}, Reason: "service"})
}

// SetEndpoints replaces a cluster's endpoints of one service; listeners
// hear of it only if they changed.
func (r *Registry) SetEndpoints(cluster, hostname string, eps []Endpoint) {
	r.mu.Lock()
	s := r.shard(cluster)
	if old := s.endpoints[hostname]; (len(old) == 0 && len(eps) == 0) || reflect.DeepEqual(old, eps) {
		r.mu.Unlock()
		return
	}
	accountsChanged := !maps.Equal(accounts(s.endpoints[hostname]), accounts(eps))
	// Headless in any cluster: some proxies list its pods as listeners.
	headless := false
	for _, sh := range r.clusters {
		if svc := sh.services[hostname]; svc != nil && svc.Headless {
			headless = true
		}
	}
	if len(eps) == 0 {
		delete(s.endpoints, hostname)
	} else {
		s.endpoints[hostname] = eps
	}
	r.mu.Unlock()
	switch {
	case accountsChanged:
		// Clients pin the service's accounts in its clusters (secure
		// naming): those change, not only the load assignments.
		r.notify(Event{Hostnames: []string{hostname}, Full: true, Reason: "service accounts of " + hostname})
		return
	case headless:
		// A headless service's pods are listeners, not load assignments.
		r.notify(Event{Hostnames: []string{hostname}, Full: true, Reason: "pods of headless " + hostname})
		return
	}
	r.notify(Event{Hostnames: []string{hostname}, Reason: ReasonEndpoints})
}

// accounts is the set of service accounts behind endpoints, with whether
// each speaks mTLS (only those are pinned).
func accounts(eps []Endpoint) map[string]bool {
	out := map[string]bool{}
	for _, e := range eps {
		if e.ServiceAccount != "" {
			out[e.Namespace+"/"+e.ServiceAccount+"/"+e.TLSMode] = true
		}
	}
	return out
}

// SetGateways replaces the network gateways a cluster reports.
func (r *Registry) SetGateways(cluster string, gws []Gateway) {
	r.mu.Lock()
	s := r.shard(cluster)
	same := slices.Equal(s.gateways, gws)
	s.gateways = gws
	r.mu.Unlock()
	if !same {
		r.notify(Event{Full: true, Reason: "gateways"})
	}
}

// Shard is one cluster's complete contribution.
type Shard struct {
	Services  map[string]*Service
	Endpoints map[string][]Endpoint
	Gateways  []Gateway
	Workloads map[string]Workload // by address
}

// ReplaceCluster swaps a cluster's whole shard at once, so a resync or a
// rotated remote secret leaves nothing stale behind.
func (r *Registry) ReplaceCluster(cluster string, sh Shard) {
	r.mu.Lock()
	if sh.Workloads == nil {
		sh.Workloads = map[string]Workload{}
	}
	r.clusters[cluster] = &shard{services: sh.Services, endpoints: sh.Endpoints, gateways: sh.Gateways, workloads: sh.Workloads}
	r.mu.Unlock()
	r.notify(Event{Full: true, Reason: "cluster " + cluster + " synced"})
}

// RemoveCluster drops every service, endpoint and gateway of a cluster.
func (r *Registry) RemoveCluster(cluster string) {
	r.mu.Lock()
	_, ok := r.clusters[cluster]
	delete(r.clusters, cluster)
	r.mu.Unlock()
	if ok {
		r.notify(Event{Full: true, Reason: "cluster " + cluster + " removed"})
	}
}

// SubscribeWorkloads registers fn for pods placed, changed or removed
// (SetWorkload); fn must not block for long.
func (r *Registry) SubscribeWorkloads(fn func(cluster, address string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.workloadListeners = append(r.workloadListeners, fn)
}

// SetWorkload records a cluster's pod by its address; with ok false it
// forgets the address. No push follows: only the proxy of that pod, if
// connected, cares where it runs (SubscribeWorkloads hears of new pods
// and changed localities).
func (r *Registry) SetWorkload(cluster, address string, w Workload, ok bool) {
	r.mu.Lock()
	s := r.shard(cluster)
	old, had := s.workloads[address]
	if ok {
		s.workloads[address] = w
	} else {
		delete(s.workloads, address)
	}
	ls := slices.Clone(r.workloadListeners)
	r.mu.Unlock()
	if ok != had || ok && !reflect.DeepEqual(old, w) {
		for _, fn := range ls {
			fn(cluster, address)
		}
	}
}

// ClusterWorkloads returns a copy of a cluster's (or shard's) pods by
// address.
func (r *Registry) ClusterWorkloads(cluster string) map[string]Workload {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if sh := r.clusters[cluster]; sh != nil {
		return maps.Clone(sh.workloads)
	}
	return nil
}

// Workload is the pod with this address in a cluster.
func (r *Registry) Workload(cluster, address string) (Workload, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s, ok := r.clusters[cluster]
	if !ok {
		return Workload{}, false
	}
	w, ok := s.workloads[address]
	return w, ok
}

// samePort: clusters' ports are the same port when number and protocol
// are (kube-dns has 53 twice, UDP "dns" and TCP "dns-tcp").
func samePort(a, b Port) bool { return a.Port == b.Port && protocolOf(a) == protocolOf(b) }

// protocolOf is a port's protocol, TCP when unset as in Kubernetes.
func protocolOf(p Port) string {
	if p.Protocol == "" {
		return "TCP"
	}
	return p.Protocol
}

// ClusterServices returns one cluster's (or shard's) own services, sorted
// by hostname, as that cluster declares them.
func (r *Registry) ClusterServices(cluster string) []*Service {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sh := r.clusters[cluster]
	if sh == nil {
		return nil
	}
	out := slices.Collect(maps.Values(sh.services))
	sort.Slice(out, func(i, j int) bool { return out[i].Hostname < out[j].Hostname })
	return out
}

// Services returns every service merged by hostname, sorted. When clusters
// disagree on ports, the union by port number and protocol is kept.
func (r *Registry) Services() []*Service {
	r.mu.RLock()
	defer r.mu.RUnlock()
	merged := map[string]*Service{}
	for _, name := range r.clusterNames() {
		for h, svc := range r.clusters[name].services {
			m, ok := merged[h]
			if !ok {
				c := *svc
				c.Ports = slices.Clone(svc.Ports)
				c.ClusterIPs = map[string]string{name: svc.ClusterIP}
				c.headlessIn = map[string]bool{name: svc.Headless}
				merged[h] = &c
				continue
			}
			m.ClusterIPs[name] = svc.ClusterIP
			m.headlessIn[name] = svc.Headless
			if m.FromServiceEntry && !svc.FromServiceEntry {
				// A Kubernetes Service wins a host a ServiceEntry also
				// names, as in Istio: its address, names and kind.
				m.Namespace, m.Name, m.ClusterIP, m.Labels, m.Headless = svc.Namespace, svc.Name, svc.ClusterIP, svc.Labels, svc.Headless
				m.FromServiceEntry, m.MeshExternal = false, false
			}
			for _, p := range svc.Ports {
				if !slices.ContainsFunc(m.Ports, func(q Port) bool { return samePort(p, q) }) {
					m.Ports = append(m.Ports, p)
				}
			}
		}
	}
	out := make([]*Service, 0, len(merged))
	for _, s := range merged {
		sort.Slice(s.Ports, func(i, j int) bool { return s.Ports[i].Port < s.Ports[j].Port })
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Hostname < out[j].Hostname })
	return out
}

// Endpoints returns every cluster's endpoints of a service. Their ports
// carry the merged service's port names: clusters may name the same port
// differently (a remote's istiod Service says tcp-istiod where the
// primary's says https-dns), and the port number and protocol are what
// they share.
func (r *Registry) Endpoints(hostname string) []Endpoint {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []Endpoint
	type key struct {
		port     int32
		protocol string
	}
	merged := map[key]string{}
	for _, name := range r.clusterNames() {
		if svc := r.clusters[name].services[hostname]; svc != nil {
			for _, p := range svc.Ports {
				if _, ok := merged[key{p.Port, protocolOf(p)}]; !ok {
					merged[key{p.Port, protocolOf(p)}] = p.Name
				}
			}
		}
	}
	for _, name := range r.clusterNames() {
		sh := r.clusters[name]
		eps := sh.endpoints[hostname]
		var rename map[string]string
		if svc := sh.services[hostname]; svc != nil {
			for _, p := range svc.Ports {
				if m := merged[key{p.Port, protocolOf(p)}]; m != p.Name {
					if rename == nil {
						rename = map[string]string{}
					}
					rename[p.Name] = m
				}
			}
		}
		if rename == nil {
			out = append(out, eps...)
			continue
		}
		for _, e := range eps {
			ports := make(map[string]int32, len(e.Ports))
			for n, port := range e.Ports {
				if m, ok := rename[n]; ok {
					n = m
				}
				ports[n] = port
			}
			e.Ports = ports
			out = append(out, e)
		}
	}
	return out
}

// Gateways returns every known network gateway, de-duplicated and sorted.
func (r *Registry) Gateways() []Gateway {
	r.mu.RLock()
	defer r.mu.RUnlock()
	seen := map[Gateway]bool{}
	var out []Gateway
	for _, name := range r.clusterNames() {
		for _, g := range r.clusters[name].gateways {
			if !seen[g] {
				seen[g] = true
				out = append(out, g)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Network != b.Network {
			return a.Network < b.Network
		}
		if a.Address != b.Address {
			return a.Address < b.Address
		}
		return a.Port < b.Port
	})
	return out
}

// Clusters lists the clusters with a shard.
func (r *Registry) Clusters() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.clusterNames()
}

func (r *Registry) clusterNames() []string {
	names := make([]string, 0, len(r.clusters))
	for n := range r.clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
