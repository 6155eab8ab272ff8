package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// fenceArea: cluster-aks's east-west gateway admits only cluster-eks
// (AKS_GATEWAY_FROM: loadBalancerSourceRanges, as an NSG would). It runs
// before operationsArea, which reinstalls that gateway without the fence.
func fenceArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("cluster-aks's east-west gateway admits cluster-eks and refuses everyone else", func(t *testing.T) {
		svc, err := e.clients["cluster-aks"].CoreV1().Services("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(svc.Spec.LoadBalancerSourceRanges, []string{"198.18.1.1/32"}) {
			t.Errorf("loadBalancerSourceRanges %v, want AKS_GATEWAY_FROM's [198.18.1.1/32]", svc.Spec.LoadBalancerSourceRanges)
		}
		gwAddr := e.lbAddress(t, "cluster-aks", "istio-system", "istio-eastwestgateway")
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(gwAddr, "15443"), 3*time.Second); err == nil {
			c.Close()
			t.Errorf("the host (198.18.0.1) reached %s:15443 through the fence", gwAddr)
		}
		if by := w.servedBy(t, 20, ""); by["cluster-aks"] == 0 {
			t.Errorf("sleep in cluster-eks no longer reaches cluster-aks through the fenced gateway: %v", by)
		}
	})
}

// cloudArea: cluster-eks publishes its load balancers under DNS names, as
// EKS does, so the walkthrough put the east-west gateway's name into
// cluster-aks's remotePilotAddress; the name's address changes (an ELB's
// do) and cluster-aks must follow it to keep reaching its control plane.
// It runs last: the old address stops serving.
func cloudArea(t *testing.T, w *walkthrough) {
	e := w.e
	ctx := context.Background()
	eks, aks := e.clients["cluster-eks"], e.clients["cluster-aks"]
	gw, err := eks.CoreV1().Services("istio-system").Get(ctx, "istio-eastwestgateway", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(gw.Status.LoadBalancer.Ingress) != 1 || gw.Status.LoadBalancer.Ingress[0].Hostname == "" || gw.Status.LoadBalancer.Ingress[0].IP != "" {
		t.Fatalf("cluster-eks's east-west gateway is published as %+v, want a DNS name only (EKS)", gw.Status.LoadBalancer.Ingress)
	}
	host := gw.Status.LoadBalancer.Ingress[0].Hostname
	istiodAddresses := func() []string {
		s, err := aks.DiscoveryV1().EndpointSlices("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			return []string{err.Error()}
		}
		var out []string
		for _, ep := range s.Endpoints {
			out = append(out, ep.Addresses...)
		}
		return out
	}

	t.Run("gateway address prints the load balancer's name, and cluster-aks's istiod endpoints are what it resolves to", func(t *testing.T) {
		if r := isthmus(t, time.Minute, append([]string{"gateway", "address", "--context", "cluster-eks"}, w.kc...)...); r.err != nil || strings.TrimSpace(r.stdout) != host {
			t.Errorf("gateway address printed %q (%v), want %s", r.stdout, r.err, host)
		}
		s, err := aks.DiscoveryV1().EndpointSlices("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Annotations["isthmus.io/remote-pilot-address"]; got != host {
			t.Errorf("the slice follows %q, want %s", got, host)
		}
		addr := e.lbAddress(t, "cluster-eks", "istio-system", "istio-eastwestgateway")
		if got := istiodAddresses(); !slices.Equal(got, []string{addr}) {
			t.Errorf("cluster-aks's istiod endpoints are %v, want [%s]", got, addr)
		}
	})

	t.Run("installing the remote again leaves the endpoints to the control plane", func(t *testing.T) {
		r := isthmus(t, 5*time.Minute, append([]string{"install", "-f", filepath.Join(examples, "cluster-aks-remote.yaml"),
			"--set", "values.global.remotePilotAddress=" + host, "--context", "cluster-aks", "-y"}, w.kc...)...)
		if r.err != nil {
			t.Fatalf("%v\n%s", r.err, r.stderr)
		}
		s, err := aks.DiscoveryV1().EndpointSlices("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range s.ManagedFields {
			if mf.Manager == "isthmus-installer" && mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:endpoints"`) {
				t.Errorf("the installer owns the endpoints it would clear on the next install: %s", mf.FieldsV1.Raw)
			}
		}
		if len(istiodAddresses()) == 0 {
			t.Error("the endpoints are gone")
		}
	})

	t.Run("the remote secret's account may change the istiod slice's endpoints and nothing else of it", func(t *testing.T) {
		tr, err := aks.CoreV1().ServiceAccounts("istio-system").CreateToken(ctx, "istio-reader-service-account",
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: e.kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: "cluster-aks"}).ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		reader := rest.AnonymousClientConfig(rc)
		reader.BearerToken = tr.Status.Token
		asReader := kubernetes.NewForConfigOrDie(reader)
		slices := asReader.DiscoveryV1().EndpointSlices("istio-system")
		s, err := slices.Get(ctx, "istiod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Relabelled, the slice's addresses would serve another Service.
		hijack := s.DeepCopy()
		hijack.Labels["kubernetes.io/service-name"] = "istio-eastwestgateway"
		if _, err := slices.Update(ctx, hijack, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "may change only the endpoints") {
			t.Errorf("relabelling the istiod slice as the reader: %v", err)
		}
		ports := s.DeepCopy()
		ports.Ports[0].Port = ptr.To[int32](8443)
		if _, err := slices.Update(ctx, ports, metav1.UpdateOptions{}); err == nil {
			t.Error("the reader changed the istiod slice's ports")
		}
		// The endpoints themselves: what the control plane does.
		same := s.DeepCopy()
		if _, err := slices.Update(ctx, same, metav1.UpdateOptions{}); err != nil {
			t.Errorf("the reader may not update the endpoints it follows: %v", err)
		}
	})

	t.Run("the name's address changes: cluster-aks follows within a minute, and a new pod there is injected and gets its configuration", func(t *testing.T) {
		old := e.lbAddress(t, "cluster-eks", "istio-system", "istio-eastwestgateway")
		a := netip.MustParseAddr(old).As4()
		a[3] = 240 // high in the pool (.10-.250), free
		moved := netip.AddrFrom4(a).String()
		if _, err := eks.CoreV1().Services("istio-system").Patch(ctx, "istio-eastwestgateway", types.MergePatchType,
			[]byte(fmt.Sprintf(`{"spec":{"loadBalancerIP":%q}}`, moved)), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the name resolves to the new address", func() bool {
			return e.lbAddress(t, "cluster-eks", "istio-system", "istio-eastwestgateway") == moved
		})
		start := time.Now()
		deadline := start.Add(90 * time.Second)
		for !slices.Equal(istiodAddresses(), []string{moved}) {
			if time.Now().After(deadline) {
				t.Fatalf("cluster-aks's istiod endpoints are %v 90 s after the address moved from %s to %s", istiodAddresses(), old, moved)
			}
			time.Sleep(time.Second)
		}
		t.Logf("cluster-aks's istiod endpoints followed in %s", time.Since(start).Round(time.Second))

		// Injection (the API server calls the webhook through the slice)
		// and the sidecar's configuration (xDS through it) at the new address.
		if out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "rollout", "restart", "deployment/profile"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "rollout", "status", "deployment/profile", "--timeout", "3m"); err != nil {
			t.Fatalf("profile in cluster-aks after the move: %v\n%s", err, out)
		}
		pods := e.waitReady("cluster-aks", "multicluster", "app=profile", 1)
		if !slices.ContainsFunc(pods[0].Spec.Containers, func(c corev1.Container) bool { return c.Name == "istio-proxy" }) {
			t.Fatalf("the new profile pod in cluster-aks was not injected: %v", pods[0].Spec.Containers)
		}
		eventually(t, "sleep in cluster-eks reaches the new profile pod in cluster-aks", func() bool {
			return w.servedBy(t, 20, "")["cluster-aks"] > 0
		})
	})
}
