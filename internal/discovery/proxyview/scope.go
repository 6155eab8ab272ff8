package proxyview

import (
	"fmt"
	"strconv"
	"strings"

	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Scope is what an Istio Sidecar resource makes of a sidecar's outbound
// side: the services it is given (its egress hosts), and whether what is
// none of them is refused (its outboundTrafficPolicy). A nil Scope is the
// mesh's default: every service, meshConfig's policy.
type Scope struct {
	// Name is the Sidecar's namespace/name@resourceVersion: sidecars of
	// the same scope share generated resources.
	Name string
	// namespace is the proxy's, which "." in the hosts means (also in
	// the root namespace's default Sidecar, as Istio).
	namespace string
	hosts     []egressHost
	// RegistryOnly overrides meshConfig's outboundTrafficPolicy when set.
	RegistryOnly *bool
	// ingress are its ingress listeners' ports (nil: none; the services'
	// target ports are served).
	ingress InboundPorts
}

// InboundPorts are the ports a sidecar of this scope serves: its
// Sidecar's ingress listeners where it has any (as Istio: then only
// those), else the ports its services target (fromServices).
func (s *Scope) InboundPorts(fromServices InboundPorts) InboundPorts {
	if s == nil || s.ingress == nil {
		return fromServices
	}
	return s.ingress
}

// egressHost is one "namespace/dnsName" of a Sidecar's egress hosts.
type egressHost struct{ ns, host string }

// Key names the scope for sharing ("" for none).
func (s *Scope) Key() string {
	if s == nil {
		return ""
	}
	return s.Name
}

// ResolveScope finds the Sidecar that applies to a workload as Istio
// does: one of its namespace whose workloadSelector matches its labels,
// else its namespace's without a selector, else the root namespace's
// without a selector; the oldest where several apply. nil: none applies.
func ResolveScope(sidecars []*networkingv1.Sidecar, root, ns string, lbls map[string]string, warn func(string)) *Scope {
	var selected, nsDefault, meshDefault *networkingv1.Sidecar
	for _, sc := range oldestFirst(sidecars) {
		// A selector, even an empty one (every workload), takes
		// precedence over the namespace's default, as in Istio.
		ws := sc.Spec.GetWorkloadSelector()
		sel := ws.GetLabels()
		switch {
		case sc.Namespace == ns && ws != nil:
			if selected == nil && labels.SelectorFromSet(sel).Matches(labels.Set(lbls)) {
				selected = sc
			}
		case sc.Namespace == ns:
			if nsDefault == nil {
				nsDefault = sc
			}
		case sc.Namespace == root && ws == nil:
			if meshDefault == nil {
				meshDefault = sc
			}
		}
	}
	for _, sc := range []*networkingv1.Sidecar{selected, nsDefault, meshDefault} {
		if sc != nil {
			return newScope(sc, ns, warn)
		}
	}
	return nil
}

func newScope(sc *networkingv1.Sidecar, ns string, warn func(string)) *Scope {
	s := &Scope{Name: sc.Namespace + "/" + sc.Name + "@" + sc.ResourceVersion, namespace: ns}
	if ns != sc.Namespace {
		s.Name += " for " + ns // the root's default: "." differs per namespace
	}
	where := fmt.Sprintf("Sidecar %s/%s", sc.Namespace, sc.Name)
	for _, l := range sc.Spec.GetEgress() {
		if l.GetPort() != nil || l.GetBind() != "" || l.GetCaptureMode() != apinetworking.CaptureMode_DEFAULT {
			warn(where + ": egress listeners of their own (port, bind, captureMode) are not built; their hosts are in the proxy's scope on every port")
		}
		for _, h := range l.GetHosts() {
			ns, host, ok := strings.Cut(h, "/")
			if !ok {
				warn(where + ": egress host " + h + " is not namespace/dnsName; ignored")
				continue
			}
			s.hosts = append(s.hosts, egressHost{ns: ns, host: host})
		}
	}
	if len(sc.Spec.GetEgress()) == 0 {
		// Istio: a Sidecar without egress listeners imports everything.
		s.hosts = []egressHost{{ns: "*", host: "*"}}
	}
	for i, in := range sc.Spec.GetIngress() {
		p := in.GetPort()
		at := fmt.Sprintf("%s: ingress[%d]", where, i)
		if p.GetNumber() == 0 || p.GetNumber() > 65535 {
			warn(at + ": no port number; skipped")
			continue
		}
		if in.GetTls() != nil || in.GetBind() != "" || in.GetCaptureMode() != apinetworking.CaptureMode_DEFAULT || in.GetConnectionPool() != nil {
			warn(at + ": tls, bind, captureMode and connectionPool are not supported; the port is served with the mesh's mTLS to defaultEndpoint")
		}
		ap := AppPort{Protocol: protocolOf(registry.Port{AppProtocol: strings.ToLower(p.GetProtocol())})}
		switch ep := in.GetDefaultEndpoint(); {
		case ep == "":
		case strings.HasPrefix(ep, "unix://"):
			warn(at + ": a unix socket defaultEndpoint is not supported; skipped")
			continue
		default:
			host, port, ok := strings.Cut(ep, ":")
			if n, err := strconv.Atoi(port); !ok || (host != "127.0.0.1" && host != "0.0.0.0") || err != nil || n < 1 || n > 65535 {
				warn(at + ": defaultEndpoint " + ep + " is not 127.0.0.1:PORT or 0.0.0.0:PORT; skipped")
				continue
			}
			// 0.0.0.0 is the workload's own address, reached on loopback
			// by an app listening on every address.
			ap.Endpoint = "127.0.0.1:" + port
		}
		if s.ingress == nil {
			s.ingress = InboundPorts{}
		}
		s.ingress[int32(p.GetNumber())] = ap
	}
	if p := sc.Spec.GetOutboundTrafficPolicy(); p != nil {
		only := p.GetMode() == apinetworking.OutboundTrafficPolicy_REGISTRY_ONLY
		s.RegistryOnly = &only
		if p.GetEgressProxy() != nil {
			warn(where + ": outboundTrafficPolicy.egressProxy is not supported; unknown destinations pass through or are refused by the mode")
		}
	}
	return s
}

// imports says whether an egress host takes in a host of a namespace.
func (s *Scope) imports(ns, host string) bool {
	for _, h := range s.hosts {
		switch h.ns {
		case "*":
		case ".":
			if ns != s.namespace {
				continue
			}
		case "~":
			continue
		default:
			if ns != h.ns {
				continue
			}
		}
		if h.host == "*" || h.host == host || strings.HasPrefix(h.host, "*.") && strings.HasSuffix(host, h.host[1:]) {
			return true
		}
	}
	return false
}

// Services is the part of all a proxy of this scope is given: the
// services its egress hosts import, and the destinations of the
// VirtualServices they import (Istio adds those, so a route never
// points at a service the proxy does not know).
func (s *Scope) Services(all []*registry.Service, vss []*networkingv1.VirtualService, domain string) []*registry.Service {
	if s == nil {
		return all
	}
	keep := map[string]bool{}
	for _, svc := range all {
		if s.imports(svc.Namespace, svc.Hostname) {
			keep[svc.Hostname] = true
		}
	}
	for _, vs := range vss {
		in := false
		for _, h := range vs.Spec.GetHosts() {
			if s.imports(vs.Namespace, Qualify(h, vs.Namespace, domain)) {
				in = true
			}
		}
		if !in {
			continue
		}
		for _, d := range vsDestinations(&vs.Spec) {
			keep[Qualify(d, vs.Namespace, domain)] = true
		}
	}
	out := make([]*registry.Service, 0, len(keep))
	for _, svc := range all {
		if keep[svc.Hostname] {
			out = append(out, svc)
		}
	}
	return out
}

// vsDestinations are the hosts a VirtualService routes or mirrors to.
func vsDestinations(vs *apinetworking.VirtualService) []string {
	var out []string
	for _, r := range vs.GetHttp() {
		for _, d := range r.GetRoute() {
			out = append(out, d.GetDestination().GetHost())
		}
		if m := r.GetMirror(); m != nil {
			out = append(out, m.GetHost())
		}
		for _, m := range r.GetMirrors() {
			out = append(out, m.GetDestination().GetHost())
		}
	}
	for _, r := range vs.GetTcp() {
		for _, d := range r.GetRoute() {
			out = append(out, d.GetDestination().GetHost())
		}
	}
	for _, r := range vs.GetTls() {
		for _, d := range r.GetRoute() {
			out = append(out, d.GetDestination().GetHost())
		}
	}
	return out
}
