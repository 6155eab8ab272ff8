package remoteistiod

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// dnsAnswers is a resolver whose answer the test changes.
type dnsAnswers struct {
	mu    sync.Mutex
	addrs []string
	err   error
	asked []string
}

func (d *dnsAnswers) set(err error, addrs ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs, d.err = addrs, err
}

func (d *dnsAnswers) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, network+" "+host)
	var out []netip.Addr
	for _, a := range d.addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, d.err
}

func remote(managedBy string, slice *discoveryv1.EndpointSlice) *fake.Clientset {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Annotations: map[string]string{"topology.istio.io/controlPlaneClusters": managedBy}}}
	return fake.NewClientset(ns, slice)
}

func named(host string, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: Name, Namespace: "istio-system", Annotations: map[string]string{AnnotationAddress: host}},
		AddressType: discoveryv1.AddressTypeIPv4}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

func follower(c *fake.Clientset, dns *dnsAnswers) *Follower {
	return &Follower{Client: c, Cluster: "cluster-aks", Namespace: "istio-system", Resolver: dns,
		Managed: func(ns *corev1.Namespace) bool {
			return ns.Annotations["topology.istio.io/controlPlaneClusters"] == "cluster-eks"
		},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func endpointsOf(t *testing.T, c *fake.Clientset) string {
	t.Helper()
	s, err := c.DiscoveryV1().EndpointSlices("istio-system").Get(context.Background(), Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range s.Endpoints {
		ready := e.Conditions.Ready != nil && *e.Conditions.Ready
		out = append(out, strings.Join(e.Addresses, "+")+map[bool]string{true: "", false: "(not ready)"}[ready])
	}
	return strings.Join(out, ",")
}

func TestFollowsTheName(t *testing.T) {
	ctx := context.Background()
	slice := named("gw.elb.example.test")
	c := remote("cluster-eks", slice)
	dns := &dnsAnswers{}
	f := follower(c, dns)

	dns.set(nil, "198.18.1.20", "198.18.1.10", "198.18.1.20")
	if err := f.follow(ctx, slice); err != nil {
		t.Fatal(err)
	}
	// One ready endpoint per address, sorted, no duplicates: kube-proxy
	// uses only an endpoint's first address.
	if got := endpointsOf(t, c); got != "198.18.1.10,198.18.1.20" {
		t.Fatalf("endpoints %q", got)
	}
	if dns.asked[0] != "ip4 gw.elb.example.test" {
		t.Errorf("asked %v", dns.asked)
	}

	// The load balancer moved.
	cur, _ := c.DiscoveryV1().EndpointSlices("istio-system").Get(ctx, Name, metav1.GetOptions{})
	dns.set(nil, "198.18.1.77")
	if err := f.follow(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if got := endpointsOf(t, c); got != "198.18.1.77" {
		t.Fatalf("after the address changed: endpoints %q", got)
	}

	// DNS fails or answers nothing: the endpoints stay, and the error says so.
	cur, _ = c.DiscoveryV1().EndpointSlices("istio-system").Get(ctx, Name, metav1.GetOptions{})
	for _, err := range []error{errors.New("i/o timeout"), nil} {
		dns.set(err)
		if err := f.follow(ctx, cur); err == nil || !strings.Contains(err.Error(), "endpoints stay 198.18.1.77") {
			t.Errorf("a failed lookup: %v", err)
		}
		if got := endpointsOf(t, c); got != "198.18.1.77" {
			t.Errorf("a failed lookup changed the endpoints to %q", got)
		}
	}
}

func TestLeavesAloneWhatItDoesNotManage(t *testing.T) {
	ctx := context.Background()
	slice := named("gw.elb.example.test", "198.18.1.10")
	c := remote("cluster-other", slice)
	dns := &dnsAnswers{}
	dns.set(nil, "198.18.1.99")
	if err := follower(c, dns).follow(ctx, slice); err != nil {
		t.Fatal(err)
	}
	if got := endpointsOf(t, c); got != "198.18.1.10" {
		t.Errorf("a remote that names another control plane was rewritten: %q", got)
	}
}

func TestForbiddenSaysWhatToDo(t *testing.T) {
	slice := named("gw.elb.example.test")
	c := remote("cluster-eks", slice)
	c.PrependReactor("update", "endpointslices", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "discovery.k8s.io", Resource: "endpointslices"}, Name, errors.New("RBAC"))
	})
	dns := &dnsAnswers{}
	dns.set(nil, "198.18.1.10")
	err := follower(c, dns).follow(context.Background(), slice)
	if err == nil || !strings.Contains(err.Error(), "re-run `isthmus install`") || !strings.Contains(err.Error(), RoleName) {
		t.Errorf("got %v", err)
	}
}

// Run reacts to the slice itself: one created after the start (the
// installer runs after the remote secret) is filled without waiting for
// the next resolution period; a slice with an IP is never touched.
func TestRunFillsANewSlice(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Annotations: map[string]string{"topology.istio.io/controlPlaneClusters": "cluster-eks"}}}
	c := fake.NewClientset(ns)
	dns := &dnsAnswers{}
	dns.set(nil, "198.18.1.10")
	done := make(chan error, 1)
	go func() { done <- follower(c, dns).Run(ctx) }()
	time.Sleep(200 * time.Millisecond)
	if _, err := c.DiscoveryV1().EndpointSlices("istio-system").Create(ctx, named("gw.elb.example.test"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for endpointsOf(t, c) != "198.18.1.10" {
		if time.Now().After(deadline) {
			t.Fatalf("endpoints %q after 5 s", endpointsOf(t, c))
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}

// A name the primary does not know as its own load balancer's is not
// resolved: the remote's admin writes the annotation.
func TestFollowsOnlyKnownNames(t *testing.T) {
	slice := named("postgres.prod.svc.cluster.local")
	c := remote("cluster-eks", slice)
	dns := &dnsAnswers{}
	dns.set(nil, "10.0.0.5")
	f := follower(c, dns)
	f.Known = func(_ context.Context, name string) error {
		if name != "gw.elb.example.test" {
			return errors.New("not ours")
		}
		return nil
	}
	if err := f.follow(context.Background(), slice); err == nil || !strings.Contains(err.Error(), "not followed: not ours") {
		t.Errorf("got %v", err)
	}
	if len(dns.asked) > 0 || endpointsOf(t, c) != "" {
		t.Errorf("resolved %v, endpoints %q", dns.asked, endpointsOf(t, c))
	}
}
