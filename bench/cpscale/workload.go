package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// workloadPod is the one pod every endpoint of a cluster names as its
// target: both control planes read an endpoint's mTLS mode from its pod's
// labels, and only mTLS endpoints cross a network (through its gateway).
// It never runs: its node selector matches no node.
const workloadPod = "scale-workload"

// cluster is one of the sandbox's clusters as the bench fills it.
type cluster struct {
	name    string
	network string
	index   int
	cs      *kubernetes.Clientset
}

// populate gives a cluster its network (the system namespace's label, which
// both control planes read), its east-west gateway (a Service labelled with
// the network, exposing 15443 at an external IP nothing is sent to), the
// workload pod, and services Services with an EndpointSlice of endpoints
// addresses each.
func populate(ctx context.Context, c cluster, services, endpoints int) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Labels: map[string]string{"topology.istio.io/network": c.network}}}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	gw := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "eastwest-scale", Namespace: "istio-system", Labels: map[string]string{"topology.istio.io/network": c.network}},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "tls", Port: 15443}},
			ExternalIPs: []string{fmt.Sprintf("203.0.113.%d", c.index+1)}},
	}
	if _, err := c.cs.CoreV1().Services("istio-system").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "scale"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: workloadPod, Namespace: "scale", Labels: map[string]string{"security.istio.io/tlsMode": "istio", "app": "scale"}},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"isthmus.dev/bench": "no-such-node"},
			Containers:   []corev1.Container{{Name: "app", Image: "isthmus/none"}},
		},
	}
	if _, err := c.cs.CoreV1().Pods("scale").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range services {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			name := serviceName(c.index, i)
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "scale"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
			if _, err := c.cs.CoreV1().Services("scale").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			if _, err := c.cs.DiscoveryV1().EndpointSlices("scale").Create(ctx, slice(name, c.index, i, endpoints), metav1.CreateOptions{}); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

func serviceName(cluster, i int) string { return fmt.Sprintf("svc-c%d-%d", cluster, i) }

// target is the load assignment a client watches for the change.
func target(cluster, i int) string {
	return "outbound|8080||" + serviceName(cluster, i) + ".scale.svc.cluster.local"
}

func slice(name string, cluster, i, n int) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "scale", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for e := range n {
		s.Endpoints = append(s.Endpoints, endpointAt(fmt.Sprintf("100.%d.%d.%d", 64+cluster, i/25, (i%25)*10+e+1)))
	}
	return s
}

func endpointAt(addr string) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{
		Addresses:  []string{addr},
		Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "scale", Name: workloadPod},
	}
}

// addEndpoint is the change measured: one more endpoint in one
// EndpointSlice of a remote cluster.
func addEndpoint(ctx context.Context, c cluster, name, addr string) error {
	sl, err := c.cs.DiscoveryV1().EndpointSlices("scale").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	sl.Endpoints = append(sl.Endpoints, endpointAt(addr))
	_, err = c.cs.DiscoveryV1().EndpointSlices("scale").Update(ctx, sl, metav1.UpdateOptions{})
	return err
}
