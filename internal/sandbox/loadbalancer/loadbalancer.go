// Package loadbalancer gives `type: LoadBalancer` Services of a sandbox
// cluster an address on the internet segment, from the cluster's own /24
// (.10 to .250), as a cloud's load-balancer controller would. Clouds
// publish them in two ways, and the controller plays either:
//
//   - IP (AKS, GKE): status.loadBalancer.ingress[].ip is the address, and
//     kube-proxy in the cluster's node namespace forwards it to the pods.
//   - Hostname (EKS's load balancers): status holds only a DNS name,
//     <name>-<namespace>-<8 hex of the UID>.<domain>, stable for the
//     Service's life. The address behind it is kept in the annotation
//     sandbox.isthmus.io/load-balancer-ip (read back after restarts), and
//     the sandbox's cloud answers the name and forwards the address, since
//     kube-proxy programs only addresses that status names. Setting
//     spec.loadBalancerIP to another free address of the pool plays "the
//     load balancer's address changed": the name stays, it resolves to the
//     new address, and the old address stops answering.
package loadbalancer

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// AddressAnnotation records where a hostname load balancer is: the
// allocation itself, so it survives restarts of the controller and is what
// the cloud's forwarding and DNS follow.
const AddressAnnotation = "sandbox.isthmus.io/load-balancer-ip"

// The part of the pool handed out: below is the node and room for more
// infrastructure, above the broadcast end.
const firstHost, lastHost = 10, 250

// Controller assigns LoadBalancer addresses.
type Controller struct {
	// Pool is the cluster's /24; addresses .10 to .250 are handed out.
	Pool netip.Prefix
	// Domain, when set, makes the load balancers hostname ones, named
	// under it (for example cluster-eks.elb.isthmus.test).
	Domain string
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
	if c.Domain != "" {
		return c.reconcileHostname(ctx, svc)
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
		used, err := c.used(svc)
		if err != nil {
			return err
		}
		ip, err := c.pick(svc, used)
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

// reconcileHostname keeps a hostname load balancer's address (annotation)
// and name (status) in place, and moves it where spec.loadBalancerIP says.
// The annotation is written first: it is the allocation, and status only
// names the load balancer.
func (c *Controller) reconcileHostname(ctx context.Context, svc *corev1.Service) error {
	key := svc.Namespace + "/" + svc.Name
	services := c.Client.CoreV1().Services(svc.Namespace)
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		if _, ok := svc.Annotations[AddressAnnotation]; ok {
			var err error
			if svc, err = c.annotate(ctx, svc, nil); err != nil {
				return err
			}
		}
		if len(svc.Status.LoadBalancer.Ingress) > 0 {
			st := svc.DeepCopy()
			st.Status.LoadBalancer = corev1.LoadBalancerStatus{}
			if _, err := services.UpdateStatus(ctx, st, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("update status: %w", err)
			}
		}
		return nil
	}
	host := Hostname(svc, c.Domain)
	cur, _ := Address(svc)
	if c.inRange(cur) && c.hostnameOwned(svc, host) && (svc.Spec.LoadBalancerIP == "" || svc.Spec.LoadBalancerIP == cur.String()) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	used, err := c.used(svc)
	if err != nil {
		return err
	}
	addr, moveErr := c.place(svc, used)
	if !addr.IsValid() {
		return moveErr
	}
	if addr != cur {
		if svc, err = c.annotate(ctx, svc, &addr); err != nil {
			return err
		}
		if cur.IsValid() {
			c.Log.Info("moved load balancer", "service", key, "hostname", host, "from", cur, "to", addr)
		} else {
			c.Log.Info("assigned load balancer", "service", key, "hostname", host, "ip", addr)
		}
	}
	if !c.hostnameOwned(svc, host) {
		st := svc.DeepCopy()
		st.Status.LoadBalancer = corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{Hostname: host}}}
		if _, err := services.UpdateStatus(ctx, st, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update status: %w", err)
		}
	}
	return moveErr
}

// place is where svc's hostname load balancer belongs: spec.loadBalancerIP
// when it is free, else where it is now, else the lowest free address. A
// requested address that cannot be had is returned as an error, with the
// address the load balancer keeps meanwhile.
func (c *Controller) place(svc *corev1.Service, used map[netip.Addr]bool) (netip.Addr, error) {
	cur, ok := Address(svc)
	ok = ok && c.inRange(cur) && !used[cur]
	if req := svc.Spec.LoadBalancerIP; req != "" && (!ok || req != cur.String()) {
		ip, err := c.requested(req, used)
		if err == nil {
			return ip, nil
		}
		if ok {
			return cur, err
		}
		return netip.Addr{}, err
	}
	if ok {
		return cur, nil
	}
	return c.lowestFree(used)
}

// annotate sets (or with nil removes) the address annotation, by a merge
// patch so that nothing else of the Service is written, and returns the
// Service as it now is.
func (c *Controller) annotate(ctx context.Context, svc *corev1.Service, addr *netip.Addr) (*corev1.Service, error) {
	var value any // JSON null removes the key
	if addr != nil {
		value = addr.String()
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{AddressAnnotation: value}}})
	if err != nil {
		return nil, err
	}
	out, err := c.Client.CoreV1().Services(svc.Namespace).Patch(ctx, svc.Name, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return nil, fmt.Errorf("record load balancer address: %w", err)
	}
	return out, nil
}

// hostnameOwned reports whether status names exactly the hostname and nothing else.
func (c *Controller) hostnameOwned(svc *corev1.Service, host string) bool {
	in := svc.Status.LoadBalancer.Ingress
	return len(in) == 1 && in[0].Hostname == host && in[0].IP == "" && in[0].IPMode == nil && len(in[0].Ports) == 0
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

// used is every address of the pool held by another Service: in its
// status (IP load balancers) or its annotation (hostname ones).
func (c *Controller) used(svc *corev1.Service) (map[netip.Addr]bool, error) {
	all, err := c.lister.List(labels.Everything())
	if err != nil {
		return nil, err
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
		if ip, ok := Address(o); ok {
			used[ip] = true
		}
	}
	return used, nil
}

// pick picks spec.loadBalancerIP when it is free and in the pool, else
// the lowest free address.
func (c *Controller) pick(svc *corev1.Service, used map[netip.Addr]bool) (netip.Addr, error) {
	if req := svc.Spec.LoadBalancerIP; req != "" {
		return c.requested(req, used)
	}
	return c.lowestFree(used)
}

func (c *Controller) requested(req string, used map[netip.Addr]bool) (netip.Addr, error) {
	ip, err := netip.ParseAddr(req)
	if err != nil || !c.inRange(ip) || used[ip] {
		return netip.Addr{}, fmt.Errorf("spec.loadBalancerIP %s is not a free address of %s (.%d to .%d); pick another or clear it", req, c.Pool, firstHost, lastHost)
	}
	return ip, nil
}

// inRange reports whether ip is one the controller hands out.
func (c *Controller) inRange(ip netip.Addr) bool {
	if !ip.Is4() || !c.Pool.Contains(ip) {
		return false
	}
	last := ip.As4()[3]
	return last >= firstHost && last <= lastHost
}

func (c *Controller) lowestFree(used map[netip.Addr]bool) (netip.Addr, error) {
	base := c.Pool.Masked().Addr().As4()
	for last := firstHost; last <= lastHost; last++ {
		b := base
		b[3] = byte(last)
		ip := netip.AddrFrom4(b)
		if !used[ip] {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("load balancer pool %s is exhausted", c.Pool)
}

// Hostname is the name of svc's hostname load balancer under domain:
// <name>-<namespace>-<first 8 hex of the UID>. A label holds 63
// characters, so a long name-namespace is cut, never the UID part that
// keeps two long-named Services apart.
func Hostname(svc *corev1.Service, domain string) string {
	uid := strings.ReplaceAll(string(svc.UID), "-", "")
	if len(uid) > 8 {
		uid = uid[:8]
	}
	prefix := svc.Name + "-" + svc.Namespace
	if max := 63 - 1 - len(uid); len(prefix) > max {
		prefix = strings.TrimRight(prefix[:max], "-")
	}
	return prefix + "-" + uid + "." + domain
}

// Address is where svc's hostname load balancer is, from its annotation.
func Address(svc *corev1.Service) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(svc.Annotations[AddressAnnotation])
	return ip, err == nil && ip.Is4()
}
