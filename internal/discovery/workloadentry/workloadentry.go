// Package workloadentry brings Istio WorkloadEntries (VMs and other
// workloads outside Kubernetes) into the mesh as Istio's registry does:
//
//   - a WorkloadEntry is an endpoint of each Kubernetes Service of the
//     config cluster, in its namespace, whose selector its labels match
//     (Istio lets only the config cluster's Kubernetes registry select
//     WorkloadEntries; the service's other clusters add their pods);
//   - it is a workload a proxy may connect as: a proxy with a token of the
//     entry's service account, at the entry's address, gets the entry's
//     labels, as a pod's proxy gets its pod's.
//
// ServiceEntries' workloadSelector reads them too (package serviceentry).
// The entries live in the registry as a shard of their own, Shard.
package workloadentry

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"sync"

	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Shard is the registry shard of WorkloadEntry endpoints and workloads.
const Shard = "WorkloadEntry"

// Key is how the shard's workloads are keyed: by namespace and address,
// so an entry of one namespace claiming another's address takes nothing
// from it (a proxy connects as the entry of its token's namespace).
func Key(namespace, address string) string { return namespace + "/" + address }

// LabelTLSMode is Istio's label saying whether a workload accepts Istio mTLS.
const LabelTLSMode = "security.istio.io/tlsMode"

// TLSMode is an entry's mTLS mode as Istio reads it: its
// security.istio.io/tlsMode label, else "istio" when it names a service
// account (it runs a proxy with that identity), else none.
func TLSMode(we *apinetworking.WorkloadEntry) string {
	if v, ok := we.GetLabels()[LabelTLSMode]; ok {
		return v
	}
	if we.GetServiceAccount() != "" {
		return "istio"
	}
	return ""
}

// Locality parses Istio's region/zone/subzone.
func Locality(s string) registry.Locality {
	var l registry.Locality
	if s == "" {
		return l
	}
	parts := strings.SplitN(s, "/", 3)
	l.Region = parts[0]
	if len(parts) > 1 {
		l.Zone = parts[1]
	}
	if len(parts) > 2 {
		l.Subzone = parts[2]
	}
	return l
}

// Endpoint is an entry at one address, without ports.
func Endpoint(we *apinetworking.WorkloadEntry, namespace, address string) registry.Endpoint {
	return registry.Endpoint{Address: address, Network: we.GetNetwork(), Locality: Locality(we.GetLocality()),
		Labels: we.GetLabels(), ServiceAccount: we.GetServiceAccount(), Namespace: namespace, TLSMode: TLSMode(we), Ready: true}
}

// Selects says whether a selector (a Service's, a ServiceEntry's
// workloadSelector) picks an entry; an empty selector picks nothing.
func Selects(selector map[string]string, we *apinetworking.WorkloadEntry) bool {
	return len(selector) > 0 && labels.SelectorFromSet(selector).Matches(labels.Set(we.GetLabels()))
}

// Source keeps the registry's WorkloadEntry shard up to date.
type Source struct {
	Registry *registry.Registry
	// Cluster is the config cluster: the one whose Kubernetes Services
	// select entries, and whose tokens a workload's proxy presents.
	Cluster string
	// Entries lists the WorkloadEntries (the Istio config store's).
	Entries func() []*networkingv1.WorkloadEntry
	Log     *slog.Logger

	mu     sync.Mutex
	kick   chan struct{}
	warned map[string]bool
	last   *registry.Shard
}

// Changed asks for a rebuild: entries or the config cluster's services
// changed.
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

// Run rebuilds the shard on every change until ctx ends. Registry events
// other than endpoint-only ones (a service's selector or ports may have
// changed) count as changes; a rebuild that changes nothing costs no push.
func (s *Source) Run(ctx context.Context) error {
	s.Registry.Subscribe(func(e registry.Event) {
		if e.Reason != registry.ReasonEndpoints {
			s.Changed()
		}
	})
	s.Changed()
	s.mu.Lock()
	k := s.kick
	s.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-k:
		}
		sh := Build(s.Entries(), s.Registry.ClusterServices(s.Cluster), s.Registry.Services(), s.Cluster, s.warn)
		if s.last != nil && reflect.DeepEqual(*s.last, sh) {
			continue
		}
		if s.last == nil && len(sh.Endpoints) == 0 && len(sh.Workloads) == 0 {
			s.last = &sh
			continue // nothing to add, no push
		}
		s.last = &sh
		s.Registry.ReplaceCluster(Shard, sh)
	}
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

// Build is the shard of a set of entries: each an endpoint of the
// config cluster's Services (own) of its namespace that select it, under
// the merged services' port names (merged), and a workload by namespace
// and address (Key). Entries come sorted by namespace and name; the first
// of a namespace keeps an address two of its entries claim.
func Build(entries []*networkingv1.WorkloadEntry, own, merged []*registry.Service, cluster string, warn func(string)) registry.Shard {
	sh := registry.Shard{Endpoints: map[string][]registry.Endpoint{}, Workloads: map[string]registry.Workload{}}
	names := map[string]*registry.Service{}
	for _, m := range merged {
		names[m.Hostname] = m
	}
	owner := map[string]string{}
	for _, we := range entries {
		where := fmt.Sprintf("WorkloadEntry %s/%s", we.Namespace, we.Name)
		spec := &we.Spec
		addr, err := netip.ParseAddr(spec.GetAddress())
		if err != nil {
			// Istio allows a DNS name for entries that DNS ServiceEntries
			// select; a Kubernetes Service's endpoints are addresses.
			warn(where + ": address " + fmt.Sprintf("%q", spec.GetAddress()) + " is not an IP address; it is no endpoint of a Kubernetes Service and no proxy can connect as it")
			continue
		}
		if spec.GetWeight() != 0 {
			warn(where + ": weight is not applied; the entry gets an equal share")
		}
		a := addr.String()
		k := Key(we.Namespace, a)
		if first, dup := owner[k]; dup {
			warn(where + ": address " + a + " is already " + first + "'s; ignored")
			continue
		}
		owner[k] = we.Namespace + "/" + we.Name
		sh.Workloads[k] = registry.Workload{Namespace: we.Namespace, Name: we.Name, ServiceAccount: spec.GetServiceAccount(),
			Labels: spec.GetLabels(), Locality: Locality(spec.GetLocality())}
		for _, svc := range own {
			if svc.Namespace != we.Namespace || svc.FromServiceEntry || svc.Headless || !Selects(svc.Selector, spec) {
				continue
			}
			e := Endpoint(spec, we.Namespace, a)
			e.Cluster = cluster
			e.Ports = ports(svc, names[svc.Hostname], spec)
			if len(e.Ports) == 0 {
				continue
			}
			sh.Endpoints[svc.Hostname] = append(sh.Endpoints[svc.Hostname], e)
		}
	}
	return sh
}

// ports is where an entry serves each port of a Service, as Istio's
// serviceInstanceFromWorkloadInstance: a numeric targetPort, unless the
// entry's ports name the service port; a named targetPort, the entry's
// port of that name, and without one the port is skipped. Ports carry
// the merged service's names (clusters may name a port differently).
func ports(svc, merged *registry.Service, we *apinetworking.WorkloadEntry) map[string]int32 {
	out := map[string]int32{}
	for _, p := range svc.Ports {
		if p.Protocol == "UDP" || p.Protocol == "SCTP" {
			continue
		}
		n := p.TargetPort
		if n == 0 {
			n = p.Port
		}
		if p.TargetPortName != "" {
			v, ok := we.GetPorts()[p.TargetPortName]
			if !ok {
				continue
			}
			n = int32(v)
		} else if v, ok := we.GetPorts()[p.Name]; ok {
			n = int32(v)
		}
		name := p.Name
		if merged != nil {
			for _, m := range merged.Ports {
				if m.Port == p.Port && m.Protocol == p.Protocol {
					name = m.Name
					break
				}
			}
		}
		out[name] = n
	}
	return out
}
