// Package serviceentry turns Istio ServiceEntries into registry services,
// as Istio's "External" registry does: each host a service with its
// ports, its addresses (or one allocated from 240.240.0.0/16 when it has
// none, as Istio's auto-allocation), and its endpoints: the entry's own
// (STATIC), its hosts or endpoints resolved by DNS (DNS,
// DNS_ROUND_ROBIN), or none, the client's destination kept (NONE).
// MESH_EXTERNAL services are called without mTLS; MESH_INTERNAL
// endpoints labelled security.istio.io/tlsMode=istio with it.
//
// The entries live in the registry as a shard of their own, Shard, which
// no Kubernetes cluster has.
package serviceentry

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/discovery/workloadentry"
)

// Shard is the registry shard of ServiceEntry services.
const Shard = "ServiceEntry"

// resolveEvery is how often DNS entries are resolved again (Envoy's
// STRICT_DNS refreshes every 5 s; the control plane resolves for every
// proxy, so less often).
const resolveEvery = 30 * time.Second

// Resolver looks hostnames up.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Source keeps the registry's ServiceEntry shard up to date.
type Source struct {
	Registry *registry.Registry
	// Entries lists the ServiceEntries (the Istio config store's).
	Entries func() []*networkingv1.ServiceEntry
	// Workloads lists the WorkloadEntries that entries' workloadSelector
	// picks from (nil: none).
	Workloads func() []*networkingv1.WorkloadEntry
	// Cluster is the config cluster, whose pods (in Registry) a
	// workloadSelector picks too, as Istio's.
	Cluster  string
	Resolver Resolver
	Log      *slog.Logger

	mu     sync.Mutex
	warned map[string]bool
	kick   chan struct{}
	// last is the shard the registry has: an unchanged one (most
	// re-resolutions) costs no push.
	last *registry.Shard
	// lastEntries names the entries it was built from (namespace, name
	// and resource version): the store says "changed" for every Istio
	// kind, and unchanged entries need no rebuild (and no DNS lookups)
	// before the next re-resolution.
	lastEntries string
}

// Changed tells the source that the entries changed (the config store's
// subscription).
func (s *Source) Changed() {
	s.mu.Lock()
	if s.kick == nil {
		s.kick = make(chan struct{}, 1)
	}
	k := s.kick
	s.mu.Unlock()
	select {
	case k <- struct{}{}:
	default:
	}
}

// Run rebuilds the shard when entries change and every resolveEvery (DNS
// answers change), until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	s.Changed()
	s.mu.Lock()
	k := s.kick
	s.mu.Unlock()
	// A pod of the config cluster placed, changed or gone may be a
	// workloadSelector's.
	pods := make(chan struct{}, 1)
	podsChanged := func() {
		select {
		case pods <- struct{}{}:
		default:
		}
	}
	s.Registry.SubscribeWorkloads(func(cluster, _ string) {
		if cluster == s.Cluster {
			podsChanged()
		}
	})
	// A resync replaces the cluster's pods without announcing each.
	s.Registry.Subscribe(func(e registry.Event) {
		if e.Full && e.Reason == "cluster "+s.Cluster+" synced" {
			podsChanged()
		}
	})
	t := time.NewTicker(resolveEvery)
	defer t.Stop()
	for {
		var entries []*networkingv1.ServiceEntry
		var workloads []*networkingv1.WorkloadEntry
		read := func() {
			entries = s.Entries()
			if s.Workloads != nil {
				workloads = s.Workloads()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-k:
			read()
			if s.last != nil && versions(entries, workloads) == s.lastEntries {
				continue
			}
		case <-pods:
			read()
			if !slices.ContainsFunc(entries, func(se *networkingv1.ServiceEntry) bool { return se.Spec.GetWorkloadSelector() != nil }) {
				continue
			}
		case <-t.C:
			read()
		}
		s.lastEntries = versions(entries, workloads)
		sh := Build(ctx, entries, Selectable{Entries: workloads, Pods: s.Registry.ClusterWorkloads(s.Cluster), Cluster: s.Cluster}, s.Resolver, s.warn)
		if s.last != nil && reflect.DeepEqual(*s.last, sh) {
			continue
		}
		s.last = &sh
		s.Registry.ReplaceCluster(Shard, sh)
	}
}

// versions names a set of entries by namespace, name and resource version.
func versions(entries []*networkingv1.ServiceEntry, workloads []*networkingv1.WorkloadEntry) string {
	var b strings.Builder
	for _, se := range entries {
		b.WriteString("se " + se.Namespace + "/" + se.Name + "@" + se.ResourceVersion + "\n")
	}
	for _, we := range workloads {
		b.WriteString("we " + we.Namespace + "/" + we.Name + "@" + we.ResourceVersion + "\n")
	}
	return b.String()
}

func (s *Source) warn(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.warned == nil {
		s.warned = map[string]bool{}
	}
	if !s.warned[msg] && s.Log != nil {
		s.warned[msg] = true
		s.Log.Warn(msg)
	}
}

// Selectable is what a workloadSelector picks from: WorkloadEntries and
// the config cluster's pods (by address), as Istio's.
type Selectable struct {
	Entries []*networkingv1.WorkloadEntry
	Pods    map[string]registry.Workload
	Cluster string
}

// Build is the shard of a set of ServiceEntries; an entry with a
// workloadSelector has the WorkloadEntries and the config cluster's pods
// of its namespace that it selects as endpoints. The oldest entry wins a
// host another entry also declares.
func Build(ctx context.Context, entries []*networkingv1.ServiceEntry, from Selectable, res Resolver, warn func(string)) registry.Shard {
	sh := registry.Shard{Services: map[string]*registry.Service{}, Endpoints: map[string][]registry.Endpoint{}}
	entries = slices.Clone(entries)
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	pods := slices.Sorted(maps.Keys(from.Pods))
	taken := map[netip.Addr]bool{}
	for _, se := range entries {
		for _, a := range se.Spec.GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				taken[ip] = true
			}
		}
	}
	for _, se := range entries {
		where := fmt.Sprintf("ServiceEntry %s/%s", se.Namespace, se.Name)
		spec := &se.Spec
		var selected []*apinetworking.WorkloadEntry
		if ws := spec.GetWorkloadSelector(); ws != nil {
			// An empty selector picks every entry of the namespace (Istio).
			sel := labels.SelectorFromSet(ws.GetLabels())
			if len(spec.GetEndpoints()) > 0 {
				warn(where + ": endpoints and workloadSelector together are invalid in Istio; the endpoints are ignored")
			}
			for _, we := range from.Entries {
				if we.Namespace == se.Namespace && sel.Matches(labels.Set(we.Spec.GetLabels())) {
					selected = append(selected, &we.Spec)
				}
			}
			for _, a := range pods {
				if w := from.Pods[a]; w.Namespace == se.Namespace && w.Ready && !w.Router && sel.Matches(labels.Set(w.Labels)) {
					selected = append(selected, podEntry(a, w))
				}
			}
		}
		external := spec.GetLocation() != apinetworking.ServiceEntry_MESH_INTERNAL
		var ports []registry.Port
		for _, p := range spec.GetPorts() {
			ports = append(ports, registry.Port{Name: p.GetName(), Port: int32(p.GetNumber()), Protocol: "TCP", AppProtocol: appProtocol(p.GetProtocol())})
		}
		for _, host := range spec.GetHosts() {
			if strings.HasPrefix(host, "*") {
				warn(where + ": wildcard host " + host + " is not supported yet; ignored")
				continue
			}
			if _, dup := sh.Services[host]; dup {
				warn(where + ": host " + host + " is declared by an older ServiceEntry; ignored here")
				continue
			}
			svc := &registry.Service{Namespace: se.Namespace, Name: host, Hostname: host, Ports: ports,
				FromServiceEntry: true, MeshExternal: external}
			for _, a := range spec.GetAddresses() {
				if _, err := netip.ParseAddr(a); err == nil {
					svc.ClusterIP = a
					break
				}
			}
			if spec.GetResolution() == apinetworking.ServiceEntry_NONE {
				// The client's destination is kept: Istio's ORIGINAL_DST.
				svc.Headless = true
			} else if svc.ClusterIP == "" {
				svc.ClusterIP = allocate(se.Namespace+"/"+host, taken).String()
			}
			sh.Services[host] = svc
			eps := endpoints(ctx, spec, selected, se.Namespace, host, external, res, func(m string) { warn(where + ": " + m) })
			if selected != nil {
				for i := range eps {
					eps[i].Cluster = from.Cluster // the config cluster's entries and pods
				}
			}
			sh.Endpoints[host] = eps
		}
	}
	return sh
}

// podEntry is a selected pod as a WorkloadEntry: its mTLS mode is its
// tlsMode label alone (a pod without a sidecar has an account too).
func podEntry(addr string, w registry.Workload) *apinetworking.WorkloadEntry {
	l := maps.Clone(w.Labels)
	if l == nil {
		l = map[string]string{}
	}
	if _, ok := l[workloadentry.LabelTLSMode]; !ok {
		l[workloadentry.LabelTLSMode] = "disabled"
	}
	loc := w.Locality.String()
	return &apinetworking.WorkloadEntry{Address: addr, Labels: l, ServiceAccount: w.ServiceAccount, Network: w.Network, Locality: loc}
}

// appProtocol is a ServiceEntry port protocol as the registry names it.
func appProtocol(p string) string {
	switch p = strings.ToLower(p); p {
	case "http", "http2", "grpc", "grpc-web", "https", "tls", "tcp", "mongo", "redis", "mysql":
		return p
	}
	return "" // sniffed
}

// endpoints are a host's endpoints as the entry's resolution says: its
// own, or the WorkloadEntries its workloadSelector picked (selected, nil
// without a selector).
func endpoints(ctx context.Context, spec *apinetworking.ServiceEntry, selected []*apinetworking.WorkloadEntry, namespace, host string, external bool, res Resolver, warn func(string)) []registry.Endpoint {
	portsOf := func(we *apinetworking.WorkloadEntry) map[string]int32 {
		out := map[string]int32{}
		for _, p := range spec.GetPorts() {
			n := int32(p.GetNumber())
			if p.GetTargetPort() != 0 {
				n = int32(p.GetTargetPort())
			}
			if v, ok := we.GetPorts()[p.GetName()]; ok {
				n = int32(v)
			}
			out[p.GetName()] = n
		}
		return out
	}
	endpoint := func(we *apinetworking.WorkloadEntry, addr string) registry.Endpoint {
		e := workloadentry.Endpoint(we, namespace, addr)
		e.Ports = portsOf(we)
		if external {
			e.TLSMode = "" // never Istio mTLS
		}
		return e
	}
	own := spec.GetEndpoints()
	if selected != nil || spec.GetWorkloadSelector() != nil {
		own = selected
	}
	var out []registry.Endpoint
	switch spec.GetResolution() {
	case apinetworking.ServiceEntry_STATIC, apinetworking.ServiceEntry_NONE:
		for _, we := range own {
			if _, err := netip.ParseAddr(we.GetAddress()); err != nil {
				warn("endpoint " + we.GetAddress() + " is not an IP address (resolution " + spec.GetResolution().String() + "); skipped")
				continue
			}
			out = append(out, endpoint(we, we.GetAddress()))
		}
	default: // DNS, DNS_ROUND_ROBIN: resolved here, for every proxy
		wes := own
		if len(wes) == 0 && spec.GetWorkloadSelector() == nil {
			wes = []*apinetworking.WorkloadEntry{{Address: host}}
		}
		for _, we := range wes {
			if res == nil {
				break
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ips, err := res.LookupNetIP(rctx, "ip4", we.GetAddress())
			cancel()
			if err != nil {
				warn("cannot resolve " + we.GetAddress() + ": " + err.Error())
				continue
			}
			slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
			for _, ip := range slices.Compact(ips) {
				out = append(out, endpoint(we, ip.String()))
			}
		}
	}
	return out
}

// allocate gives a host a stable address in 240.240.0.0/16 (Istio's
// auto-allocation range), by hash, the next free one on a collision.
func allocate(key string, taken map[netip.Addr]bool) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(key))
	n := h.Sum32() % 65534
	for {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], 240<<24|240<<16|(n+1))
		ip := netip.AddrFrom4(b)
		if !taken[ip] {
			taken[ip] = true
			return ip
		}
		n = (n + 1) % 65534
	}
}
