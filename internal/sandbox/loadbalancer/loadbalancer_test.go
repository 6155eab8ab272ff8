package loadbalancer

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

const domain = "cluster-eks.elb.isthmus.test"

var pool = netip.MustParsePrefix("198.18.1.0/24")

func service(name, uid string, typ corev1.ServiceType) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", UID: types.UID(uid)},
		Spec:       corev1.ServiceSpec{Type: typ, Ports: []corev1.ServicePort{{Name: "http", Port: 80, NodePort: 30080}}},
	}
}

// controller starts a hostname-mode controller (or an IP one with an
// empty domain) on a fake API server holding objs.
func controller(t *testing.T, cs *fake.Clientset, domain string) *Controller {
	t.Helper()
	c := &Controller{Pool: pool, Domain: domain, Client: cs, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	factory := informers.NewSharedInformerFactory(cs, 0)
	if err := c.Watch(factory); err != nil {
		t.Fatal(err)
	}
	factory.Start(t.Context().Done())
	factory.WaitForCacheSync(t.Context().Done())
	return c
}

// reconcile runs the controller on one Service once its informer has seen
// what the API server holds, as the work queue would.
func reconcile(t *testing.T, c *Controller, cs *fake.Clientset, name string) error {
	t.Helper()
	want := get(t, cs, name)
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, err := c.lister.Services("demo").Get(name)
		if err == nil && equality.Semantic.DeepEqual(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the informer never saw %s as the API server has it", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return c.reconcile(context.Background(), "demo/"+name)
}

func get(t *testing.T, cs *fake.Clientset, name string) *corev1.Service {
	t.Helper()
	svc, err := cs.CoreV1().Services("demo").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func update(t *testing.T, cs *fake.Clientset, svc *corev1.Service) {
	t.Helper()
	if _, err := cs.CoreV1().Services("demo").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// published checks the Service's status names only its hostname and
// returns the address behind it.
func published(t *testing.T, cs *fake.Clientset, name string) netip.Addr {
	t.Helper()
	svc := get(t, cs, name)
	want := []corev1.LoadBalancerIngress{{Hostname: Hostname(svc, domain)}}
	if !equality.Semantic.DeepEqual(svc.Status.LoadBalancer.Ingress, want) {
		t.Fatalf("%s: status %+v, want only the hostname %+v", name, svc.Status.LoadBalancer.Ingress, want)
	}
	ip, ok := Address(svc)
	if !ok {
		t.Fatalf("%s: no address annotation: %v", name, svc.Annotations)
	}
	return ip
}

func TestHostname(t *testing.T) {
	svc := service("istio-eastwestgateway", "3f2a91c0-77d4-4b8e-9a10-5c6d7e8f9a0b", corev1.ServiceTypeLoadBalancer)
	svc.Namespace = "istio-system"
	if got, want := Hostname(svc, domain), "istio-eastwestgateway-istio-system-3f2a91c0.cluster-eks.elb.isthmus.test"; got != want {
		t.Fatalf("hostname %q, want %q", got, want)
	}
	long := strings.Repeat("a", 60)
	a := service(long, "11111111-0000-0000-0000-000000000000", corev1.ServiceTypeLoadBalancer)
	b := service(long, "22222222-0000-0000-0000-000000000000", corev1.ServiceTypeLoadBalancer)
	ha, hb := Hostname(a, domain), Hostname(b, domain)
	label, _, _ := strings.Cut(ha, ".")
	if len(label) != 63 || !strings.HasSuffix(label, "-11111111") || !strings.HasPrefix(label, long[:20]) {
		t.Fatalf("a long name's label %q (%d characters) must be cut to 63 and keep the UID part", label, len(label))
	}
	if ha == hb {
		t.Fatalf("two Services with one long name share the hostname %s", ha)
	}
}

func TestHostnameLoadBalancers(t *testing.T) {
	// An IP load balancer of another controller holds .10, and a hostname
	// one .11, recorded just before a crash left its status empty.
	ipSvc := service("old-ip", "00000000-aaaa-0000-0000-000000000001", corev1.ServiceTypeLoadBalancer)
	ipSvc.Spec.LoadBalancerClass = ptr.To("example.com/other")
	ipSvc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.18.1.10"}}
	held := service("held", "00000000-aaaa-0000-0000-000000000002", corev1.ServiceTypeLoadBalancer)
	held.Annotations = map[string]string{AddressAnnotation: "198.18.1.11"}
	web := service("web", "9c1e5b7a-aaaa-0000-0000-000000000003", corev1.ServiceTypeLoadBalancer)
	internal := service("internal", "00000000-aaaa-0000-0000-000000000004", corev1.ServiceTypeClusterIP)
	cs := fake.NewClientset(ipSvc, held, web, internal)
	c := controller(t, cs, domain)
	for _, name := range []string{"old-ip", "held", "web", "internal"} {
		if err := reconcile(t, c, cs, name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}

	t.Run("a new load balancer gets a name and the lowest free address, no IP in status", func(t *testing.T) {
		if got := published(t, cs, "web"); got != netip.MustParseAddr("198.18.1.12") {
			t.Fatalf("web at %s, want 198.18.1.12 (.10 and .11 are taken)", got)
		}
		if h := get(t, cs, "web").Status.LoadBalancer.Ingress[0].Hostname; h != "web-demo-9c1e5b7a.cluster-eks.elb.isthmus.test" {
			t.Fatalf("hostname %q", h)
		}
	})
	t.Run("a recorded address is kept and published", func(t *testing.T) {
		if got := published(t, cs, "held"); got != netip.MustParseAddr("198.18.1.11") {
			t.Fatalf("held moved to %s", got)
		}
	})
	t.Run("other Services are left alone", func(t *testing.T) {
		if got := get(t, cs, "old-ip"); len(got.Status.LoadBalancer.Ingress) != 1 || got.Status.LoadBalancer.Ingress[0].IP != "198.18.1.10" || got.Annotations != nil {
			t.Fatalf("the IP load balancer was rewritten: %+v %v", got.Status.LoadBalancer, got.Annotations)
		}
		if got := get(t, cs, "internal"); len(got.Status.LoadBalancer.Ingress) != 0 || got.Annotations != nil {
			t.Fatalf("a ClusterIP Service got a load balancer: %+v %v", got.Status.LoadBalancer, got.Annotations)
		}
	})

	host := get(t, cs, "web").Status.LoadBalancer.Ingress[0].Hostname
	t.Run("spec.loadBalancerIP moves the load balancer; the name stays", func(t *testing.T) {
		svc := get(t, cs, "web")
		svc.Spec.LoadBalancerIP = "198.18.1.50"
		update(t, cs, svc)
		if err := reconcile(t, c, cs, "web"); err != nil {
			t.Fatal(err)
		}
		if got := published(t, cs, "web"); got != netip.MustParseAddr("198.18.1.50") {
			t.Fatalf("web at %s after asking for .50", got)
		}
		if h := get(t, cs, "web").Status.LoadBalancer.Ingress[0].Hostname; h != host {
			t.Fatalf("the name changed from %s to %s", host, h)
		}
	})
	t.Run("an address taken or outside the pool is refused and the load balancer stays", func(t *testing.T) {
		for _, req := range []string{"198.18.1.11", "198.18.2.20", "198.18.1.1", "not-an-ip"} {
			svc := get(t, cs, "web")
			svc.Spec.LoadBalancerIP = req
			update(t, cs, svc)
			err := reconcile(t, c, cs, "web")
			if err == nil || !strings.Contains(err.Error(), "not a free address of 198.18.1.0/24") {
				t.Fatalf("asking for %s: %v", req, err)
			}
			if got := published(t, cs, "web"); got != netip.MustParseAddr("198.18.1.50") {
				t.Fatalf("asking for %s moved web to %s", req, got)
			}
		}
		svc := get(t, cs, "web")
		svc.Spec.LoadBalancerIP = "198.18.1.50"
		update(t, cs, svc)
	})

	t.Run("a restarted controller keeps every address and reuses the freed one", func(t *testing.T) {
		c2 := controller(t, cs, domain)
		if _, err := cs.CoreV1().Services("demo").Create(context.Background(), service("late", "00000000-aaaa-0000-0000-000000000005", corev1.ServiceTypeLoadBalancer), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"web", "held", "late"} {
			if err := reconcile(t, c2, cs, name); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		for name, want := range map[string]string{"web": "198.18.1.50", "held": "198.18.1.11", "late": "198.18.1.12"} {
			if got := published(t, cs, name); got != netip.MustParseAddr(want) {
				t.Errorf("%s at %s after the restart, want %s", name, got, want)
			}
		}
		if h := get(t, cs, "web").Status.LoadBalancer.Ingress[0].Hostname; h != host {
			t.Fatalf("the name changed over a restart: %s, was %s", h, host)
		}
	})

	t.Run("an IP controller of the same pool does not take a hostname load balancer's address", func(t *testing.T) {
		ipc := controller(t, cs, "")
		if _, err := cs.CoreV1().Services("demo").Create(context.Background(), service("ip2", "00000000-aaaa-0000-0000-000000000006", corev1.ServiceTypeLoadBalancer), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := reconcile(t, ipc, cs, "ip2"); err != nil {
			t.Fatal(err)
		}
		if got := get(t, cs, "ip2").Status.LoadBalancer.Ingress; len(got) != 1 || got[0].IP != "198.18.1.13" {
			t.Fatalf("ip2 got %+v, want 198.18.1.13 (.10 to .12 are taken)", got)
		}
	})

	t.Run("a Service that is no longer a LoadBalancer gives its address back", func(t *testing.T) {
		svc := get(t, cs, "held")
		svc.Spec.Type = corev1.ServiceTypeClusterIP
		update(t, cs, svc)
		if err := reconcile(t, c, cs, "held"); err != nil {
			t.Fatal(err)
		}
		got := get(t, cs, "held")
		if _, ok := got.Annotations[AddressAnnotation]; ok || len(got.Status.LoadBalancer.Ingress) != 0 {
			t.Fatalf("held keeps %v %+v", got.Annotations, got.Status.LoadBalancer)
		}
	})
}
