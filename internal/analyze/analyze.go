// Package analyze checks Istio configuration against the whole mesh, as
// istioctl analyze does: references that resolve to nothing (a
// VirtualService's host, gateway or subset; a DestinationRule's host) and
// selectors that match no workload in any cluster (Gateway, DestinationRule
// subset, AuthorizationPolicy, PeerAuthentication); and, with isthmus's own
// code, authorization it does not enforce and what it does instead. It reads services and
// pods of every cluster, so a subset whose pods live only in a remote
// cluster is not reported.
package analyze

import (
	"fmt"
	"sort"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/validation"
)

// Message is one finding, printed as istioctl prints it.
type Message struct {
	Level   string // Error or Warning
	Code    string // Istio's analyzer code
	Kind    string
	Name    string
	Message string
}

func (m Message) String() string {
	return fmt.Sprintf("%s [%s] (%s %s) %s", m.Level, m.Code, m.Kind, m.Name, m.Message)
}

// Istio's analyzer codes.
const (
	ReferencedResourceNotFound = "IST0101"
	SchemaValidationError      = "IST0106"
	NoMatchingWorkloadsFound   = "IST0127"
)

// isthmus's own codes (Istio has none for these).
const (
	// NotEnforced: a policy part isthmus does not enforce, and what it
	// does instead (it fails closed).
	NotEnforced = "ISM0001"
	// NotActedOn: a kind or field isthmus does not act on, and what
	// happens instead; the validation webhook says the same at apply time.
	NotActedOn = "ISM0002"
)

// Validated is what the admission webhook said of one object, as
// findings: its errors (IST0106, the object would be refused) and what it
// does not act on (ISM0002). Authorization rules it does not enforce are
// left to Run, which reports them as ISM0001.
func Validated(res validation.Result) []Message {
	ns := res.Namespace
	if ns == "" {
		ns = "default"
	}
	name := res.Name + "." + ns
	var out []Message
	for _, e := range res.Errors {
		out = append(out, Message{Level: "Error", Code: SchemaValidationError, Kind: res.Kind, Name: name, Message: "Schema validation error: " + e})
	}
	for _, w := range res.Warnings {
		if res.Kind == "AuthorizationPolicy" && strings.HasSuffix(w, validation.FailsClosed) {
			continue
		}
		out = append(out, Message{Level: "Warning", Code: NotActedOn, Kind: res.Kind, Name: name, Message: w})
	}
	return out
}

// Cluster is what one cluster holds that configuration refers to.
type Cluster struct {
	Name     string
	Services []corev1.Service
	Pods     []corev1.Pod
}

// Config is the Istio configuration of the mesh (the primary's).
type Config struct {
	VirtualServices       []*networkingv1.VirtualService
	DestinationRules      []*networkingv1.DestinationRule
	Gateways              []*networkingv1.Gateway
	PeerAuthentications   []*securityv1.PeerAuthentication
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
}

// Options say what to compare against.
type Options struct {
	// Clusters are every cluster of the mesh; nil skips the checks that
	// need them (offline analysis of files).
	Clusters []Cluster
	Domain   string
	// RootNamespace holds mesh-wide policy (istio-system).
	RootNamespace string
}

// Run returns the findings, sorted.
func Run(cfg Config, o Options) []Message {
	if o.Domain == "" {
		o.Domain = "cluster.local"
	}
	if o.RootNamespace == "" {
		o.RootNamespace = "istio-system"
	}
	a := &analyzer{o: o, hosts: map[string]bool{}, subsets: map[string]bool{}, gateways: map[string]bool{}}
	for _, c := range o.Clusters {
		for _, s := range c.Services {
			a.hosts[s.Name+"."+s.Namespace+".svc."+o.Domain] = true
		}
	}
	for _, dr := range cfg.DestinationRules {
		h := proxyview.Qualify(dr.Spec.GetHost(), dr.Namespace, o.Domain)
		for _, ss := range dr.Spec.GetSubsets() {
			a.subsets[h+"+"+ss.GetName()] = true
		}
	}
	for _, gw := range cfg.Gateways {
		a.gateways[gw.Namespace+"/"+gw.Name] = true
	}
	for _, vs := range cfg.VirtualServices {
		a.virtualService(vs)
	}
	for _, dr := range cfg.DestinationRules {
		a.destinationRule(dr)
	}
	for _, gw := range cfg.Gateways {
		if sel := gw.Spec.GetSelector(); len(sel) > 0 && a.clustersKnown() && !a.anyPod("", sel) {
			a.add("Error", ReferencedResourceNotFound, "Gateway", gw.Name+"."+gw.Namespace,
				fmt.Sprintf("Referenced selector not found: %q (no gateway pod in any cluster has these labels)", labels.Set(sel).String()))
		}
	}
	for _, pa := range cfg.PeerAuthentications {
		a.selector("PeerAuthentication", pa.Name, pa.Namespace, pa.Spec.GetSelector().GetMatchLabels())
	}
	for _, ap := range cfg.AuthorizationPolicies {
		a.selector("AuthorizationPolicy", ap.Name, ap.Namespace, ap.Spec.GetSelector().GetMatchLabels())
		for _, m := range proxyview.NotEnforced(ap) {
			what := strings.TrimLeft(strings.TrimPrefix(m, "AuthorizationPolicy "+ap.Namespace+"/"+ap.Name), ": ")
			a.add("Warning", NotEnforced, "AuthorizationPolicy", ap.Name+"."+ap.Namespace, what)
		}
	}
	sort.Slice(a.out, func(i, j int) bool { return a.out[i].String() < a.out[j].String() })
	return a.out
}

type analyzer struct {
	o        Options
	hosts    map[string]bool // FQDNs of services in any cluster
	subsets  map[string]bool // "host+subset" defined by DestinationRules
	gateways map[string]bool // "ns/name"
	out      []Message
}

func (a *analyzer) add(level, code, kind, name, msg string) {
	a.out = append(a.out, Message{Level: level, Code: code, Kind: kind, Name: name, Message: msg})
}

func (a *analyzer) clustersKnown() bool { return a.o.Clusters != nil }

// anyPod reports whether a pod of any cluster (in ns, or any namespace
// when ns is "") carries the labels.
func (a *analyzer) anyPod(ns string, sel map[string]string) bool {
	s := labels.SelectorFromSet(sel)
	for _, c := range a.o.Clusters {
		for _, p := range c.Pods {
			if (ns == "" || p.Namespace == ns) && s.Matches(labels.Set(p.Labels)) {
				return true
			}
		}
	}
	return false
}

func (a *analyzer) virtualService(vs *networkingv1.VirtualService) {
	name := vs.Name + "." + vs.Namespace
	for _, g := range vs.Spec.GetGateways() {
		if g == "mesh" {
			continue
		}
		ref := g
		if !strings.Contains(ref, "/") {
			ref = vs.Namespace + "/" + ref
		}
		if !a.gateways[ref] {
			a.add("Error", ReferencedResourceNotFound, "VirtualService", name, fmt.Sprintf("Referenced gateway not found: %q", g))
		}
	}
	type dest struct{ host, subset string }
	var dests []dest
	for _, h := range vs.Spec.GetHttp() {
		for _, r := range h.GetRoute() {
			dests = append(dests, dest{r.GetDestination().GetHost(), r.GetDestination().GetSubset()})
		}
	}
	for _, t := range vs.Spec.GetTls() {
		for _, r := range t.GetRoute() {
			dests = append(dests, dest{r.GetDestination().GetHost(), r.GetDestination().GetSubset()})
		}
	}
	for _, t := range vs.Spec.GetTcp() {
		for _, r := range t.GetRoute() {
			dests = append(dests, dest{r.GetDestination().GetHost(), r.GetDestination().GetSubset()})
		}
	}
	seen := map[dest]bool{}
	for _, d := range dests {
		if d.host == "" || seen[d] {
			continue
		}
		seen[d] = true
		h := proxyview.Qualify(d.host, vs.Namespace, a.o.Domain)
		if a.clustersKnown() && !strings.Contains(h, "*") && !a.hosts[h] {
			a.add("Error", ReferencedResourceNotFound, "VirtualService", name, fmt.Sprintf("Referenced host not found: %q (no Service %s in any cluster of the mesh)", d.host, h))
		}
		if d.subset != "" && !a.subsets[h+"+"+d.subset] {
			a.add("Error", ReferencedResourceNotFound, "VirtualService", name, fmt.Sprintf("Referenced host+subset in destinationrule not found: %q", d.host+"+"+d.subset))
		}
	}
}

func (a *analyzer) destinationRule(dr *networkingv1.DestinationRule) {
	name := dr.Name + "." + dr.Namespace
	h := proxyview.Qualify(dr.Spec.GetHost(), dr.Namespace, a.o.Domain)
	if !a.clustersKnown() {
		return
	}
	if !strings.Contains(h, "*") && !a.hosts[h] {
		a.add("Warning", ReferencedResourceNotFound, "DestinationRule", name, fmt.Sprintf("Referenced host not found: %q (no Service %s in any cluster of the mesh)", dr.Spec.GetHost(), h))
		return
	}
	ns := namespaceOf(h, a.o.Domain)
	for _, ss := range dr.Spec.GetSubsets() {
		if len(ss.GetLabels()) > 0 && !a.anyPod(ns, ss.GetLabels()) {
			a.add("Warning", NoMatchingWorkloadsFound, "DestinationRule", name,
				fmt.Sprintf("Subset %q matches no pod of %s in any cluster (labels %s)", ss.GetName(), h, labels.Set(ss.GetLabels()).String()))
		}
	}
}

func (a *analyzer) selector(kind, name, ns string, sel map[string]string) {
	if len(sel) == 0 || !a.clustersKnown() {
		return
	}
	where := name + "." + ns
	if ns == a.o.RootNamespace {
		ns = "" // a root-namespace policy's selector applies mesh-wide
	}
	if !a.anyPod(ns, sel) {
		a.add("Warning", NoMatchingWorkloadsFound, kind, where,
			fmt.Sprintf("No matching workloads for this resource with the following labels: %s", labels.Set(sel).String()))
	}
}

// namespaceOf is the namespace of name.ns.svc.domain, or "".
func namespaceOf(host, domain string) string {
	parts := strings.Split(strings.TrimSuffix(host, ".svc."+domain), ".")
	if len(parts) == 2 {
		return parts[1]
	}
	return ""
}
