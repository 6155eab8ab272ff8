package check

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/kubecluster"
)

// networks is each cluster's network: its istio-system's
// topology.istio.io/network label, else (the primary) the control plane's
// NETWORK, else what its proxies report to the control plane, else its
// east-west gateways' label. "" when unknown.
func (r *run) networks(ctx context.Context, cp *controlPlane) map[*Cluster]string {
	out := map[*Cluster]string{}
	fromProxies := map[string]string{}
	for _, ps := range cp.syncz {
		if ps.Network != "" && fromProxies[ps.ClusterID] == "" {
			fromProxies[ps.ClusterID] = ps.Network
		}
	}
	for _, c := range r.mesh.clusters() {
		n := ""
		if c.Client != nil && r.reachable[c] {
			if ns, err := c.Client.CoreV1().Namespaces().Get(ctx, r.mesh.Namespace, metav1.GetOptions{}); err == nil {
				n = ns.Labels[kubecluster.LabelNetwork]
			}
		}
		if n == "" && c == r.mesh.Primary {
			n = cp.network
		}
		if n == "" && c.ID != "" {
			n = fromProxies[c.ID]
		}
		if n == "" && c.Client != nil && r.reachable[c] {
			// Its own east-west gateways, when they agree.
			if gws, err := eastWestGateways(ctx, c); err == nil {
				for i, g := range gws {
					if i > 0 && g.network != n {
						n = ""
						break
					}
					n = g.network
				}
			}
		}
		out[c] = n
	}
	return out
}

// gateway is one east-west gateway Service.
type gateway struct {
	cluster   *Cluster
	svc       *corev1.Service
	network   string
	addresses []string
	ready     int
}

func (g *gateway) name() string { return g.svc.Namespace + "/" + g.svc.Name }

// eastWestGateways are a cluster's Services the control plane takes for
// network gateways: labelled topology.istio.io/network and exposing the
// gateway port (15443, or networking.istio.io/gatewayPort), as the
// installer labels istio-eastwestgateway.
func eastWestGateways(ctx context.Context, c *Cluster) ([]*gateway, error) {
	svcs, err := c.Client.CoreV1().Services("").List(ctx, metav1.ListOptions{LabelSelector: kubecluster.LabelNetwork})
	if err != nil {
		return nil, fmt.Errorf("list Services labelled %s: %w", kubecluster.LabelNetwork, err)
	}
	var out []*gateway
	for i := range svcs.Items {
		s := &svcs.Items[i]
		network, _, problem := kubecluster.GatewayPort(s)
		if network == "" || problem != "" {
			continue // not a gateway the control plane takes either
		}
		g := &gateway{cluster: c, svc: s, network: network}
		for _, ing := range s.Status.LoadBalancer.Ingress {
			if ing.IP != "" {
				g.addresses = append(g.addresses, ing.IP)
			} else if ing.Hostname != "" {
				g.addresses = append(g.addresses, ing.Hostname)
			}
		}
		g.addresses = append(g.addresses, s.Spec.ExternalIPs...)
		slices, err := c.Client.DiscoveryV1().EndpointSlices(s.Namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + s.Name})
		if err != nil {
			return nil, fmt.Errorf("list EndpointSlices of %s/%s: %w", s.Namespace, s.Name, err)
		}
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					g.ready += len(ep.Addresses)
				}
			}
		}
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name() < out[j].name() })
	return out, nil
}

// gateways checks every cluster's east-west gateways (an address, ready
// endpoints) and that each network of a multi-network mesh has one.
func (r *run) gateways(ctx context.Context, networks map[*Cluster]string) {
	byNetwork := map[string][]*gateway{}
	perCluster := map[*Cluster][]*gateway{}
	failed := map[*Cluster]string{}
	for _, c := range r.checked() {
		gws, err := eastWestGateways(ctx, c)
		if err != nil {
			failed[c] = err.Error()
			r.checkFailed(CheckGateway, c, err)
			continue
		}
		perCluster[c] = gws
		for _, g := range gws {
			byNetwork[g.network] = append(byNetwork[g.network], g)
			fixSvc := fmt.Sprintf("kubectl --context %s -n %s describe service %s", ctxName(c), g.svc.Namespace, g.svc.Name)
			if len(g.addresses) == 0 {
				msg := fmt.Sprintf("the east-west gateway %s of network %s in cluster %s has no address in status.loadBalancer.ingress: other networks cannot reach this network's services", g.name(), g.network, c.Name())
				if g.svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
					msg += fmt.Sprintf(" (its type is %s, not LoadBalancer)", g.svc.Spec.Type)
				}
				r.find(Finding{Code: CodeEastWestGatewayNoAddr, Severity: SeverityError, Cluster: c.Name(), Subject: g.name(), Message: msg,
					Fix: "the cloud's load balancer controller gives a LoadBalancer Service its address; see the Service's events: " + fixSvc + "; isthmus gateway address --context " + ctxName(c)})
			}
			if g.ready == 0 {
				r.find(Finding{Code: CodeEastWestGatewayNotReady, Severity: SeverityError, Cluster: c.Name(), Subject: g.name(),
					Message: fmt.Sprintf("the east-west gateway %s of network %s in cluster %s has no ready endpoints: its pods are not running or not ready, so calls from other networks fail", g.name(), g.network, c.Name()),
					Fix:     fmt.Sprintf("kubectl --context %s -n %s get pods -l %s; describe them and read their istio-proxy log", ctxName(c), g.svc.Namespace, selector(g.svc.Spec.Selector))})
			}
		}
	}
	nets := map[string][]*Cluster{}
	for _, c := range r.mesh.clusters() {
		if networks[c] == "" && (c.Client == nil || !r.reachable[c]) {
			continue // not known to be on no network
		}
		nets[networks[c]] = append(nets[networks[c]], c)
	}
	multi := len(nets) > 1
	missing := map[string]bool{}
	if multi {
		names := make([]string, 0, len(nets))
		for n := range nets {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			if len(byNetwork[n]) > 0 {
				continue
			}
			// Only a network with a cluster this check could read is known
			// to lack one.
			var read []*Cluster
			for _, c := range nets[n] {
				if _, ok := perCluster[c]; ok {
					read = append(read, c)
				}
			}
			if len(read) == 0 {
				continue
			}
			missing[n] = true
			var ids []string
			for _, c := range nets[n] {
				ids = append(ids, c.Name())
			}
			c := read[0]
			if n == "" {
				r.find(Finding{Code: CodeEastWestGatewayMissing, Severity: SeverityError, Cluster: c.Name(), Subject: "network (none)",
					Message: fmt.Sprintf("cluster(s) %s name no network (label %s on %s, or the control plane's values.global.network) in a mesh of several networks, and have no east-west gateway", strings.Join(ids, ", "), kubecluster.LabelNetwork, r.mesh.Namespace),
					Fix:     fmt.Sprintf("label the cluster's %s namespace: kubectl --context %s label namespace %s %s=NETWORK, and install its east-west gateway", r.mesh.Namespace, ctxName(c), r.mesh.Namespace, kubecluster.LabelNetwork)})
				continue
			}
			r.find(Finding{Code: CodeEastWestGatewayMissing, Severity: SeverityError, Cluster: c.Name(), Subject: "network " + n,
				Message: fmt.Sprintf("network %s (cluster %s) has no east-west gateway: no Service labelled %s=%s exposing port %d in any cluster, so calls from other networks to its services fail",
					n, strings.Join(ids, ", "), kubecluster.LabelNetwork, n, kubecluster.DefaultGatewayPort),
				Fix: fmt.Sprintf("isthmus install -f east-west-gateway-%s.yaml --context %s (an ingress gateway labelled %s: %s with port 15443), then expose its services with a Gateway on 15443 (AUTO_PASSTHROUGH, expose-services.yaml)", c.Name(), ctxName(c), kubecluster.LabelNetwork, n)})
		}
	}
	for _, c := range r.mesh.clusters() {
		if c.Client == nil || !r.reachable[c] {
			r.row(CheckGateway, c, StatusSkipped, "%s", skipWhy(c, r.reachable[c]))
			continue
		}
		if _, bad := failed[c]; bad {
			continue
		}
		n := networks[c]
		netName := n
		if netName == "" {
			netName = "no network"
		}
		var parts []string
		status := StatusOK
		for _, g := range perCluster[c] {
			addr := strings.Join(g.addresses, ",")
			if addr == "" {
				addr, status = "no address", StatusError
			}
			if g.ready == 0 {
				status = StatusError
			}
			parts = append(parts, fmt.Sprintf("%s: %s at %s (%d ready)", g.network, g.name(), addr, g.ready))
		}
		switch {
		case len(parts) > 0:
			r.row(CheckGateway, c, status, "%s", strings.Join(parts, "; "))
		case missing[n]:
			r.row(CheckGateway, c, StatusError, "%s: no east-west gateway", netName)
		case !multi:
			r.row(CheckGateway, c, StatusOK, "single network (%s): no east-west gateway needed", netName)
		default:
			var where []string
			for _, g := range byNetwork[n] {
				where = append(where, g.cluster.Name())
			}
			r.row(CheckGateway, c, StatusOK, "%s: gateway in cluster %s", netName, strings.Join(dedupe(where), ", "))
		}
	}
}

func selector(m map[string]string) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// skipWhy is the row of a cluster the per-cluster checks cannot read.
func skipWhy(c *Cluster, reachable bool) string {
	if c.Client == nil {
		return "no kubeconfig context for this cluster"
	}
	if !reachable {
		return "API server not answering"
	}
	return ""
}

// checkFailed is a check that could not read what it needs in a cluster.
// Lacking a permission (RBAC) is a warning naming it: the check did not
// run, which says nothing of the mesh; any other error is an error.
func (r *run) checkFailed(check string, c *Cluster, err error) {
	if perm, ok := forbidden(err); ok {
		who := ""
		if perm.user != "" {
			who = fmt.Sprintf(" (user %s)", perm.user)
		}
		r.find(Finding{Code: CodeCheckFailed, Severity: SeverityWarning, Cluster: c.Name(), Subject: check,
			Message: fmt.Sprintf("the %s check did not run in cluster %s: context %s's credentials%s may not %s (%s); this part of the mesh is not checked, which says nothing of its health",
				check, c.Name(), ctxName(c), who, perm, oneLine(err)),
			Fix: fmt.Sprintf("grant that permission to the context's user (a Role or ClusterRole and its binding; %s answers yes once it is), or run the check with a context that has it", perm.canI(ctxName(c)))})
		r.row(check, c, StatusWarning, "not checked: may not %s", perm)
		return
	}
	r.find(Finding{Code: CodeCheckFailed, Severity: SeverityError, Cluster: c.Name(), Subject: check,
		Message: fmt.Sprintf("the %s check could not read cluster %s: %s", check, c.Name(), oneLine(err)),
		Fix:     fmt.Sprintf("the check needs to read (and for the probe, create and delete) these objects with context %s's credentials; see the error", ctxName(c))})
	r.row(check, c, StatusError, "could not read: %s", oneLine(err))
}
