package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/isthmus-mesh/isthmus/internal/sandbox"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/test/istiod/launch"
)

// istiodArea runs Istio's own control plane (pilot-discovery, built from
// the istio.io/istio module by test/istiod) beside isthmus's on the
// walkthrough's clusters and checks that both give the same proxies the
// same endpoints: the sidecars of both networks and both east-west
// gateways' network views. istiod only reads: a ServiceAccount bound to
// get/list/watch, a plugged CA from files, its webhooks and status
// writers off, the remote cluster from a kubeconfig file instead of a
// Secret isthmus would also read, and it runs in the sandbox's internet
// namespace, so it reaches nothing but the sandbox.
func istiodArea(t *testing.T, w *walkthrough) {
	t.Run("istiod and isthmus give each network's sidecar and each east-west gateway the same endpoints", func(t *testing.T) {
		e := w.e
		// Besides the walkthrough's services: a TCP port and an unnamed
		// one in both clusters, a headless service, and a service that
		// exists only in cluster-aks.
		kinds := `apiVersion: v1
kind: Service
metadata: {name: profile-tcp, namespace: multicluster}
spec:
  selector: {app: profile}
  ports:
  - {name: tcp-web, port: 9080, targetPort: 8080}
  - {name: web, port: 9081, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: profile-headless, namespace: multicluster}
spec:
  clusterIP: None
  selector: {app: profile}
  ports: [{name: http, port: 8080}]
`
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			e.apply(c, kinds)
			defer e.kubectl(c, "", "-n", "multicluster", "delete", "service", "profile-tcp", "profile-headless")
		}
		e.apply("cluster-aks", "apiVersion: v1\nkind: Service\nmetadata: {name: profile-aks-only, namespace: multicluster}\nspec:\n  selector: {app: profile}\n  ports: [{name: http, port: 8080}]\n")
		defer e.kubectl("cluster-aks", "", "-n", "multicluster", "delete", "service", "profile-aks-only")

		before := meshFingerprint(t, e)
		start := time.Now()
		istiodXDS := startIstiod(t, e)
		t.Logf("istiod ready in %s", time.Since(start).Round(time.Second))
		isthmusXDS := forwardPort(t, e, "cluster-eks", e.waitReady("cluster-eks", "istio-system", "app=istiod", 1)[0], 15010)

		type side struct{ istiod, isthmus *adsClient }
		proxies := map[string]side{}
		for _, p := range []struct{ name, cluster, ns, selector string }{
			{"sleep (cluster-eks, network1)", "cluster-eks", "multicluster", "app=sleep"},
			{"profile (cluster-aks, network2)", "cluster-aks", "multicluster", "app=profile"},
			{"east-west gateway of cluster-eks", "cluster-eks", "istio-system", "istio=eastwestgateway"},
			{"east-west gateway of cluster-aks", "cluster-aks", "istio-system", "istio=eastwestgateway"},
		} {
			id, md := istioNode(e.waitReady(p.cluster, p.ns, p.selector, 1)[0])
			t.Logf("%s: node %s %v", p.name, id, md)
			proxies[p.name] = side{dialADS(t, istiodXDS, id, md), dialADS(t, isthmusXDS, id, md)}
		}

		// istiod syncs both clusters and pushes; poll until the two agree
		// but for the known differences, or time runs out.
		var unexplained, explained, counts []string
		deadline := time.Now().Add(3 * time.Minute)
		for {
			unexplained, explained, counts = nil, nil, nil
			for _, k := range knownDifferences {
				k.seen = false
			}
			for name, s := range proxies {
				a, b := s.istiod.edsView(), s.isthmus.edsView()
				counts = append(counts, fmt.Sprintf("%s: istiod %d outbound clusters, isthmus %d", name, len(a), len(b)))
				for _, d := range edsDifferences(a, b) {
					if why := knownDifference(name, d); why != "" {
						explained = append(explained, fmt.Sprintf("%s: %s\n    known: %s", name, d, why))
					} else {
						unexplained = append(unexplained, name+": "+d)
					}
				}
				// Two empty views agree: ask for what this area built.
				for _, c := range wantedClusters(name) {
					for _, v := range []edsView{a, b} {
						if len(v[c].endpoints) == 0 {
							unexplained = append(unexplained, fmt.Sprintf("%s: no endpoints (yet) for %s", name, c))
						}
					}
				}
			}
			if len(unexplained) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(2 * time.Second)
		}
		slices.Sort(counts)
		slices.Sort(explained)
		slices.Sort(unexplained)
		t.Logf("compared after %s:\n%s", time.Since(start).Round(time.Second), strings.Join(counts, "\n"))
		for _, d := range explained {
			t.Logf("explained difference: %s", d)
		}
		for _, d := range unexplained {
			t.Errorf("unexplained difference: %s", d)
		}
		for _, k := range knownDifferences {
			if !k.seen {
				t.Logf("known difference not seen (remove it if isthmus now agrees with istiod): %s on %s", k.diff, k.cluster)
			}
		}
		if after := meshFingerprint(t, e); after != before {
			t.Errorf("istiod changed the mesh it only had to read:\nbefore:\n%s\nafter:\n%s", before, after)
		}
	})
}

// wantedClusters are clusters each proxy must have endpoints for from
// both control planes before the views count as compared: a sidecar's
// outbound clusters, a gateway's SNI ones.
func wantedClusters(proxy string) []string {
	name := func(port int, host string) string {
		if strings.Contains(proxy, "gateway") {
			return fmt.Sprintf("outbound_.%d_._.%s.multicluster.svc.cluster.local", port, host)
		}
		return fmt.Sprintf("outbound|%d||%s.multicluster.svc.cluster.local", port, host)
	}
	return []string{name(8080, "profile"), name(9080, "profile-tcp"), name(9081, "profile-tcp")}
}

// A known difference between istiod's EDS and isthmus's, and why.
type known struct {
	proxy   *regexp.Regexp // which proxies (their names in istiodArea)
	cluster *regexp.Regexp // which clusters
	diff    *regexp.Regexp // which difference, as edsDifferences words it
	why     string
	seen    bool
}

// knownDifferences are the differences that are understood, each with
// why; any other fails the test.
var knownDifferences = []*known{
	{
		proxy:   regexp.MustCompile(`cluster-aks`),
		cluster: regexp.MustCompile(`^outbound\|(15012|443)\|\|istiod\.istio-system\.svc\.cluster\.local$`),
		diff:    regexp.MustCompile(`endpoint only from isthmus: [\d.]+:(15012|15017) .*cluster=cluster-aks tlsMode= `),
		why: "network2's proxies get no endpoint at all for istiod from istiod: Istio makes the discovery address's host " +
			"cluster-local by default (model/cluster_local.go), so only cluster-aks's endpoints count, and of those it keeps only " +
			"the ones whose port name is the merged Service's, which is the primary's (https-dns, https-webhook: " +
			"aggregate/controller.go takes the first cluster's ports), while the remote's selectorless Service and its " +
			"EndpointSlice name them tcp-istiod and tcp-webhook as Istio's remote profile does " +
			"(xds/endpoints/endpoint_builder.go: svcPort.Name != ep.ServicePortName). isthmus has no cluster-local hosts (it " +
			"drops cluster-eks's istiod pod anyway: plaintext, another network) and matches ports across clusters by number, " +
			"so network2 gets the slice's address, remotePilotAddress (cluster-eks's east-west gateway), which is where the " +
			"remote's istiod ClusterIP leads",
	},
}

// knownDifference says why a difference is expected, or "" if it is not.
func knownDifference(proxy, d string) string {
	name, _, _ := strings.Cut(d, ": ")
	for _, k := range knownDifferences {
		if k.proxy.MatchString(proxy) && k.cluster.MatchString(name) && k.diff.MatchString(d) {
			k.seen = true
			return k.why
		}
	}
	return ""
}

// edsView is a proxy's outbound clusters as the comparison sees them.
type edsView map[string]outboundCluster

type outboundCluster struct {
	typ       string   // EDS, ORIGINAL_DST, ...
	endpoints []string // an EDS cluster's endpoints, normalised and sorted
}

// edsView reads what a control plane sent for the outbound clusters
// (outbound|PORT|SUBSET|HOST and the routers' outbound_.PORT_.SUBSET_.HOST).
func (c *adsClient) edsView() edsView {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := edsView{}
	for name, cl := range c.clusters {
		if !strings.HasPrefix(name, "outbound|") && !strings.HasPrefix(name, "outbound_.") {
			continue
		}
		oc := outboundCluster{typ: cl.GetType().String()}
		if cl.GetType() == cluster.Cluster_EDS {
			svc := cl.GetEdsClusterConfig().GetServiceName()
			if svc == "" {
				svc = name
			}
			oc.endpoints = normaliseEndpoints(c.endpoints[svc])
		}
		v[name] = oc
	}
	return v
}

// normaliseEndpoints writes each endpoint as its address, locality,
// priority, cluster (isthmus's istio.cluster, the last field of Istio's
// istio.workload), tlsMode, health (UNKNOWN counts as HEALTHY, as Envoy
// takes it) and weight divided by the greatest common divisor of the
// assignment's weights (Istio scales gateway weights by a factor). Istio
// does not send an endpoint's network.
func normaliseEndpoints(cla *endpoint.ClusterLoadAssignment) []string {
	if cla == nil {
		return nil
	}
	type ep struct {
		key    string
		weight uint32
	}
	var eps []ep
	var g uint32
	for _, l := range cla.GetEndpoints() {
		loc := l.GetLocality()
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			md := e.GetMetadata().GetFilterMetadata()
			cl := md["istio"].GetFields()["cluster"].GetStringValue()
			if wl := md["istio"].GetFields()["workload"].GetStringValue(); cl == "" && wl != "" {
				cl = wl[strings.LastIndex(wl, ";")+1:]
			}
			tls := md["envoy.transport_socket_match"].GetFields()["tlsMode"].GetStringValue()
			health := e.GetHealthStatus()
			if health == core.HealthStatus_UNKNOWN {
				health = core.HealthStatus_HEALTHY
			}
			w := e.GetLoadBalancingWeight().GetValue()
			if w == 0 {
				w = 1
			}
			g = gcd(g, w)
			eps = append(eps, ep{fmt.Sprintf("%s:%d locality=%s/%s/%s priority=%d cluster=%s tlsMode=%s %s",
				sa.GetAddress(), sa.GetPortValue(), loc.GetRegion(), loc.GetZone(), loc.GetSubZone(), l.GetPriority(), cl, tls, health), w})
		}
	}
	out := make([]string, len(eps))
	for i, e := range eps {
		out[i] = fmt.Sprintf("%s weight=%d", e.key, e.weight/g)
	}
	slices.Sort(out)
	return out
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// edsDifferences lists how isthmus's view differs from istiod's, one line
// per cluster only one has or whose type differs, and per endpoint only
// one has.
func edsDifferences(istiod, isthmus edsView) []string {
	var out []string
	for name, a := range istiod {
		b, ok := isthmus[name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: cluster only from istiod (%s %v)", name, a.typ, a.endpoints))
		case a.typ != b.typ:
			out = append(out, fmt.Sprintf("%s: cluster type: istiod %s, isthmus %s (istiod's endpoints %v, isthmus's %v)", name, a.typ, b.typ, a.endpoints, b.endpoints))
		default:
			for _, e := range a.endpoints {
				if !slices.Contains(b.endpoints, e) {
					out = append(out, fmt.Sprintf("%s: endpoint only from istiod: %s", name, e))
				}
			}
			for _, e := range b.endpoints {
				if !slices.Contains(a.endpoints, e) {
					out = append(out, fmt.Sprintf("%s: endpoint only from isthmus: %s", name, e))
				}
			}
		}
	}
	for name, b := range isthmus {
		if _, ok := istiod[name]; !ok {
			out = append(out, fmt.Sprintf("%s: cluster only from isthmus (%s %v)", name, b.typ, b.endpoints))
		}
	}
	slices.Sort(out)
	return out
}

// istioNode is the node a pod's proxy presents, as Istio's agent builds
// it from the injected environment: the ID type~IP~POD.NS~NS.svc.DOMAIN,
// each ISTIO_META_* variable, and the pod's labels, namespace, address and
// service account. Both control planes get the same one.
func istioNode(p corev1.Pod) (string, map[string]any) {
	typ := "sidecar"
	md := map[string]any{}
	for _, c := range p.Spec.Containers {
		if c.Name != "istio-proxy" {
			continue
		}
		if strings.Join(c.Args, " ") == "proxy router" {
			typ = "router"
		}
		for _, env := range c.Env {
			if k, ok := strings.CutPrefix(env.Name, "ISTIO_META_"); ok && env.Value != "" {
				md[k] = env.Value
			}
		}
	}
	labels := map[string]any{}
	for k, v := range p.Labels {
		labels[k] = v
	}
	md["LABELS"] = labels
	md["NAMESPACE"] = p.Namespace
	md["INSTANCE_IPS"] = p.Status.PodIP
	md["SERVICE_ACCOUNT"] = p.Spec.ServiceAccountName
	md["ISTIO_VERSION"] = "1.31.0"
	return fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", typ, p.Status.PodIP, p.Name, p.Namespace, p.Namespace), md
}

// startIstiod builds (once per machine) and starts pilot-discovery as
// cluster-eks's control plane with cluster-aks as its remote, read-only in
// both (test/istiod/launch), and returns its plaintext xDS address.
func startIstiod(t *testing.T, e *sandboxEnv) string {
	t.Helper()
	ctx := context.Background()
	bin, err := launch.Binary(ctx, "../..")
	if err != nil {
		t.Fatal(err)
	}
	// The mesh configuration isthmus's installer wrote, so both read the same.
	cm, err := e.clients["cluster-eks"].CoreV1().ConfigMaps("istio-system").Get(ctx, "istio", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	o := &launch.Istiod{Binary: bin, Dir: dir, AdminKubeconfig: e.kubeconfig,
		Name: "istiod-diff", Role: "istiod-diff-read", CAName: "istiod-diff",
		Mesh: cm.Data["mesh"], MeshNetworks: cm.Data["meshNetworks"]}
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		o.Clusters = append(o.Clusters, launch.Cluster{ID: c, Client: e.clients[c]})
	}
	t.Cleanup(func() {
		if err := o.RemoveReaders(context.Background()); err != nil {
			t.Logf("remove istiod's accounts: %v", err)
		}
	})
	if err := o.Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if err := o.CheckReadOnly(ctx); err != nil {
		t.Fatal(err)
	}
	// Gateways known by a hostname are resolved by istiod itself, through
	// the resolver of /etc/resolv.conf: the sandbox's DNS.
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+sandbox.DNSAddr.Addr().String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// It listens on the internet namespace's address, reachable from here.
	host := network.RouterAddr.String()
	addr := func() string { return fmt.Sprintf("%s:%d", host, inetPort(t)) }
	o.Addrs = launch.Addrs{GRPC: addr(), HTTP: addr(), SecureGRPC: addr(), HTTPS: addr(), Monitoring: addr()}
	// ip netns exec gives the command a mount namespace of its own, where
	// the sandbox's resolv.conf is bound over the host's.
	p := &launch.Process{Dir: dir, Log: filepath.Join(dir, "istiod.log"), Ready: o.ReadyURL(), Env: o.Env(),
		Argv: append([]string{"ip", "netns", "exec", network.InternetNS, "sh", "-c", `mount --bind "$0" /etc/resolv.conf && exec "$@"`, resolv},
			o.Argv()...)}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(15 * time.Second)
		b, _ := os.ReadFile(p.Log)
		// What istiod tried to write and was refused, once each.
		seen := map[string]bool{}
		for _, l := range strings.Split(string(b), "\n") {
			// Lines are "TIME\tLEVEL\tSCOPE\tMESSAGE".
			if f := strings.SplitN(l, "\t", 4); len(f) == 4 && strings.Contains(f[3], "is forbidden") && !seen[f[3]] && len(seen) < 20 {
				seen[f[3]] = true
				t.Logf("istiod was refused: %s", f[3])
			}
		}
		if t.Failed() {
			t.Logf("istiod's log (%s), last lines:\n%s", p.Log, tail(string(b), 80))
		}
	})
	if err := p.WaitReady(3 * time.Minute); err != nil {
		t.Fatalf("istiod %v", err)
	}
	return o.Addrs.GRPC
}

// inetPort picks a port free on the internet namespace's address.
func inetPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := freePort(t)
		l, err := network.Listen(network.InternetNS, "tcp", fmt.Sprintf("%s:%d", network.RouterAddr, port))
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port in the internet namespace")
	return 0
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// forwardPort forwards a loopback port to a pod's port for the rest of
// the test, as kubectl port-forward does, and returns the local address.
func forwardPort(t *testing.T, e *sandboxEnv, c string, pod corev1.Pod, port int) string {
	t.Helper()
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: e.kubeconfig},
		&clientcmd.ConfigOverrides{CurrentContext: c}).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	req := e.clients[c].CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("portforward")
	transport, upgrader, err := spdy.RoundTripperFor(rc)
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL())
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	t.Cleanup(func() { close(stop) })
	select {
	case <-ready:
	case err := <-failed:
		t.Fatalf("port-forward to %s/%s:%d: %v", pod.Namespace, pod.Name, port, err)
	case <-time.After(30 * time.Second):
		t.Fatalf("port-forward to %s/%s:%d: not ready", pod.Namespace, pod.Name, port)
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		t.Fatalf("port-forward opened no port: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
}

// meshFingerprint is what istiod would change were it allowed to write:
// the root certificate and webhook CA bundles isthmus keeps, and the
// ConfigMaps and Leases of istio-system (istiod's leader-election locks).
func meshFingerprint(t *testing.T, e *sandboxEnv) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		cs := e.clients[c]
		if cm, err := cs.CoreV1().ConfigMaps("multicluster").Get(ctx, "istio-ca-root-cert", metav1.GetOptions{}); err == nil {
			fmt.Fprintf(&b, "%s multicluster/istio-ca-root-cert %x\n", c, cm.Data["root-cert.pem"])
		}
		if mw, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "istio-sidecar-injector", metav1.GetOptions{}); err == nil {
			for _, wh := range mw.Webhooks {
				fmt.Fprintf(&b, "%s istio-sidecar-injector %s %x\n", c, wh.Name, wh.ClientConfig.CABundle)
			}
		}
		if vws, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().List(ctx, metav1.ListOptions{}); err == nil {
			for _, vw := range vws.Items {
				for _, wh := range vw.Webhooks {
					fmt.Fprintf(&b, "%s %s %s %x\n", c, vw.Name, wh.Name, wh.ClientConfig.CABundle)
				}
			}
		}
		if cms, err := cs.CoreV1().ConfigMaps("istio-system").List(ctx, metav1.ListOptions{}); err == nil {
			for _, cm := range cms.Items {
				fmt.Fprintf(&b, "%s configmap istio-system/%s\n", c, cm.Name)
			}
		}
		if ls, err := cs.CoordinationV1().Leases("istio-system").List(ctx, metav1.ListOptions{}); err == nil {
			for _, l := range ls.Items {
				fmt.Fprintf(&b, "%s lease istio-system/%s\n", c, l.Name)
			}
		}
		if ss, err := cs.CoreV1().Secrets("istio-system").List(ctx, metav1.ListOptions{}); err == nil {
			for _, s := range ss.Items {
				fmt.Fprintf(&b, "%s secret istio-system/%s\n", c, s.Name)
			}
		}
	}
	return b.String()
}
