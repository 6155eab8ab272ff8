// Package loadbalancer gives `type: LoadBalancer` Services of a sandbox
// cluster an address on the internet segment, from the cluster's own /24,
// as a cloud's load-balancer controller would. kube-proxy in the cluster's
// node namespace then forwards that address to the Service's pods.
package loadbalancer

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// Controller assigns LoadBalancer addresses.
type Controller struct {
	// Pool is the cluster's /24; addresses .10 to .250 are handed out.
	Pool   netip.Prefix
	Client kubernetes.Interface
	Log    *slog.Logger

	lister corelisters.ServiceLister
	queue  workqueue.TypedRateLimitingInterface[string]
	mu     sync.Mutex // serializes allocation
}

// Watch registers the controller's informer; call it before factory.Start.
func (c *Controller) Watch(factory informers.SharedInformerFactory) error {
	inf := factory.Core().V1().Services()
	c.lister = inf.Lister()
	c.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	_, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	return err
}

// Run reconciles Services until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		key, quit := c.queue.Get()
		if quit {
			return nil
		}
		if err := c.reconcile(ctx, key); err != nil {
			c.Log.Warn("load balancer", "service", key, "err", err)
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
	}
}

func (c *Controller) reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	svc, err := c.lister.Services(ns).Get(name)
	if err != nil {
		return nil // deleted: its address is free again, as nothing claims it
	}
	if svc.Spec.LoadBalancerClass != nil {
		return nil // another controller's Service
	}
	want := svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	has := len(svc.Status.LoadBalancer.Ingress) > 0
	switch {
	case want && has && c.owned(svc):
		return nil
	case !want && !has:
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := svc.DeepCopy()
	if want {
		ip, err := c.allocate(svc)
		if err != nil {
			return err
		}
		st.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: ip.String(), IPMode: ptr.To(corev1.LoadBalancerIPModeVIP)}}
	} else {
		st.Status.LoadBalancer = corev1.LoadBalancerStatus{}
	}
	if _, err := c.Client.CoreV1().Services(ns).UpdateStatus(ctx, st, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	if want {
		c.Log.Info("assigned load balancer address", "service", key, "ip", st.Status.LoadBalancer.Ingress[0].IP)
	}
	return nil
}

// owned reports whether every ingress address of svc is in the pool.
func (c *Controller) owned(svc *corev1.Service) bool {
	for _, in := range svc.Status.LoadBalancer.Ingress {
		ip, err := netip.ParseAddr(in.IP)
		if err != nil || !c.Pool.Contains(ip) {
			return false
		}
	}
	return true
}

// allocate picks spec.loadBalancerIP when it is free and in the pool, else
// the lowest free address.
func (c *Controller) allocate(svc *corev1.Service) (netip.Addr, error) {
	all, err := c.lister.List(labels.Everything())
	if err != nil {
		return netip.Addr{}, err
	}
	used := map[netip.Addr]bool{}
	for _, o := range all {
		if o.UID == svc.UID {
			continue
		}
		for _, in := range o.Status.LoadBalancer.Ingress {
			if ip, err := netip.ParseAddr(in.IP); err == nil {
				used[ip] = true
			}
		}
	}
	base := c.Pool.Masked().Addr().As4()
	if req := svc.Spec.LoadBalancerIP; req != "" {
		ip, err := netip.ParseAddr(req)
		if err != nil || !c.Pool.Contains(ip) || used[ip] {
			return netip.Addr{}, fmt.Errorf("spec.loadBalancerIP %s is not a free address of %s", req, c.Pool)
		}
		return ip, nil
	}
	for last := 10; last <= 250; last++ {
		b := base
		b[3] = byte(last)
		ip := netip.AddrFrom4(b)
		if !used[ip] {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("load balancer pool %s is exhausted", c.Pool)
}
