// Package kubecluster feeds one Kubernetes cluster's Services,
// EndpointSlices, Pods, Namespaces and Nodes into the registry, tagging
// every endpoint with the cluster and network it lives in. The control plane
// runs one for its own cluster and one per remote secret.
package kubecluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Config describes one cluster to watch.
type Config struct {
	// ID is the cluster ID (CLUSTER_ID of its proxies, the remote secret's key).
	ID     string
	Client kubernetes.Interface
	// SystemNamespace is where the mesh lives (istio-system); its network
	// label is the cluster's network.
	SystemNamespace string
	// DefaultNetwork applies when neither pod nor system namespace says.
	DefaultNetwork string
	// Domain is the cluster DNS domain (cluster.local).
	Domain   string
	Registry *registry.Registry
	Log      *slog.Logger
	Resolver Resolver
}

// Controller watches one cluster.
type Controller struct {
	cfg    Config
	queue  workqueue.TypedRateLimitingInterface[string]
	synced atomic.Bool

	services  corelisters.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	pods      corelisters.PodLister
	nodes     corelisters.NodeLister
	ns        corelisters.NamespaceLister
	informers []cache.InformerSynced

	mu     sync.Mutex // guards warned
	warned map[string]string
	// hostnames is set while some gateway is known by a DNS name.
	hostnames atomic.Bool
}

// allKey asks for a recomputation of the whole cluster; gatewaysKey for
// its gateways (hostname load balancers are re-resolved every resolveEvery).
const (
	allKey       = "*"
	gatewaysKey  = "*gateways"
	resolveEvery = 30 * time.Second
)

// New prepares a controller; Run starts it.
func New(cfg Config) *Controller {
	if cfg.Resolver == nil {
		cfg.Resolver = net.DefaultResolver
	}
	return &Controller{cfg: cfg, warned: map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())}
}

// Resync queues a full recomputation of the cluster.
func (c *Controller) Resync() { c.queue.Add(allKey) }

// Synced reports whether the first full view has reached the registry.
func (c *Controller) Synced() bool { return c.synced.Load() }

// Run watches the cluster until ctx ends. It returns an error only when the
// informers could not sync before ctx ended.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	f := informers.NewSharedInformerFactory(c.cfg.Client, 0)
	svcInf := f.Core().V1().Services()
	sliceInf := f.Discovery().V1().EndpointSlices()
	podInf := f.Core().V1().Pods()
	nodeInf := f.Core().V1().Nodes()
	nsInf := f.Core().V1().Namespaces()
	c.services, c.slices, c.pods, c.nodes, c.ns = svcInf.Lister(), sliceInf.Lister(), podInf.Lister(), nodeInf.Lister(), nsInf.Lister()

	add := func(key string) { c.queue.Add(key) }
	onService := func(obj any) {
		if s, ok := unwrap(obj).(*corev1.Service); ok {
			add(s.Namespace + "/" + s.Name)
		}
	}
	onSlice := func(obj any) {
		if s, ok := unwrap(obj).(*discoveryv1.EndpointSlice); ok {
			if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
				add(s.Namespace + "/" + name)
			}
		}
	}
	onPod := func(obj any) {
		p, ok := unwrap(obj).(*corev1.Pod)
		if !ok || !c.synced.Load() {
			return
		}
		c.workload(p)
		svcs, _ := c.services.Services(p.Namespace).List(labels.Everything())
		for _, s := range svcs {
			if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(p.Labels)) {
				add(s.Namespace + "/" + s.Name)
			}
		}
	}
	onNamespace := func(obj any) {
		if n, ok := unwrap(obj).(*corev1.Namespace); ok && n.Name == c.cfg.SystemNamespace {
			add(allKey)
		}
	}
	onNode := func(any) { add(allKey) }
	for _, h := range []struct {
		inf cache.SharedIndexInformer
		fn  func(any)
		// same, when set, tells an update that changes nothing the
		// registry reads from the object.
		same func(old, cur any) bool
	}{
		{inf: svcInf.Informer(), fn: onService}, {inf: sliceInf.Informer(), fn: onSlice}, {inf: podInf.Informer(), fn: onPod},
		{inf: nsInf.Informer(), fn: onNamespace, same: sameLabels(LabelNetwork)},
		// A node's status is written every few seconds (heartbeats,
		// images, conditions); only its locality matters here, and each
		// recomputation of the whole cluster is a full push to every
		// proxy.
		{inf: nodeInf.Informer(), fn: onNode, same: sameLabels(corev1.LabelTopologyRegion, corev1.LabelTopologyZone, LabelSubzone)},
	} {
		fn, same := h.fn, h.same
		if _, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: fn, DeleteFunc: fn,
			UpdateFunc: func(old, cur any) {
				if same == nil || !same(old, cur) {
					fn(cur)
				}
			},
		}); err != nil {
			return err
		}
		c.informers = append(c.informers, h.inf.HasSynced)
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), c.informers...) {
		return fmt.Errorf("cluster %s: informers did not sync: %w", c.cfg.ID, ctx.Err())
	}
	c.full(ctx)
	c.synced.Store(true)
	c.cfg.Log.Info("cluster synced", "cluster", c.cfg.ID)
	go func() {
		t := time.NewTicker(resolveEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				c.queue.ShutDown()
				return
			case <-t.C:
				if c.hostnames.Load() {
					c.queue.Add(gatewaysKey)
				}
			}
		}
	}()
	for {
		key, quit := c.queue.Get()
		if quit {
			return nil
		}
		switch key {
		case allKey:
			c.full(ctx)
		case gatewaysKey:
			c.recomputeGateways(ctx)
		default:
			c.service(ctx, key)
		}
		c.queue.Done(key)
	}
}

// sameLabels tells whether two versions of an object carry the same
// values of the given labels.
func sameLabels(keys ...string) func(old, cur any) bool {
	return func(old, cur any) bool {
		o, ok1 := old.(metav1.Object)
		c, ok2 := cur.(metav1.Object)
		if !ok1 || !ok2 {
			return false
		}
		for _, k := range keys {
			if o.GetLabels()[k] != c.GetLabels()[k] {
				return false
			}
		}
		return true
	}
}

func unwrap(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

// full recomputes every service, endpoint and gateway of the cluster and
// replaces the cluster's shard, so nothing stale survives.
func (c *Controller) full(ctx context.Context) {
	c.hostnames.Store(false)
	svcs, _ := c.services.List(labels.Everything())
	shard := registry.Shard{Services: map[string]*registry.Service{}, Endpoints: map[string][]registry.Endpoint{}}
	var gws []registry.Gateway
	for _, s := range svcs {
		rs := ToService(s, c.cfg.Domain)
		shard.Services[rs.Hostname] = rs
		if eps := c.endpoints(rs); len(eps) > 0 {
			shard.Endpoints[rs.Hostname] = eps
		}
		gws = append(gws, c.gateways(ctx, s)...)
	}
	shard.Gateways = gws
	shard.Workloads = map[string]registry.Workload{}
	pods, _ := c.pods.List(labels.Everything())
	for _, p := range pods {
		if running(p) {
			shard.Workloads[p.Status.PodIP] = c.workloadOf(p)
		}
	}
	c.cfg.Registry.ReplaceCluster(c.cfg.ID, shard)
}

// running: a pod with an address of its own (not the node's).
func running(p *corev1.Pod) bool {
	return p.Status.PodIP != "" && !p.Spec.HostNetwork && p.DeletionTimestamp == nil &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// workload records or forgets where a pod runs; a pod the informer's
// store no longer has was deleted.
func (c *Controller) workload(p *corev1.Pod) {
	if p.Status.PodIP == "" {
		return
	}
	_, err := c.pods.Pods(p.Namespace).Get(p.Name)
	if err != nil || !running(p) {
		c.cfg.Registry.SetWorkload(c.cfg.ID, p.Status.PodIP, registry.Workload{}, false)
		return
	}
	c.cfg.Registry.SetWorkload(c.cfg.ID, p.Status.PodIP, c.workloadOf(p), true)
}

// workloadOf is what the registry keeps of a running pod.
func (c *Controller) workloadOf(p *corev1.Pod) registry.Workload {
	w := registry.Workload{Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.Spec.ServiceAccountName,
		Labels: p.Labels, Locality: c.locality(p.Spec.NodeName, p.Labels), Network: c.network(p.Labels)}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			w.Ready = cond.Status == corev1.ConditionTrue
		}
	}
	for _, ct := range p.Spec.Containers {
		if ct.Name == "istio-proxy" && len(ct.Args) > 1 && ct.Args[0] == "proxy" && ct.Args[1] == "router" {
			w.Router = true
		}
	}
	return w
}

// service recomputes one service (and the cluster's gateways if it is one).
func (c *Controller) service(ctx context.Context, key string) {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	hostname := name + "." + ns + ".svc." + c.cfg.Domain
	s, err := c.services.Services(ns).Get(name)
	if err != nil {
		c.cfg.Registry.SetService(c.cfg.ID, hostname, nil)
		c.cfg.Registry.SetEndpoints(c.cfg.ID, hostname, nil)
		c.recomputeGateways(ctx)
		return
	}
	rs := ToService(s, c.cfg.Domain)
	c.cfg.Registry.SetService(c.cfg.ID, hostname, rs)
	c.cfg.Registry.SetEndpoints(c.cfg.ID, hostname, c.endpoints(rs))
	c.recomputeGateways(ctx)
}

func (c *Controller) recomputeGateways(ctx context.Context) {
	c.hostnames.Store(false)
	svcs, _ := c.services.List(labels.Everything())
	var gws []registry.Gateway
	for _, s := range svcs {
		gws = append(gws, c.gateways(ctx, s)...)
	}
	c.cfg.Registry.SetGateways(c.cfg.ID, gws)
}

func (c *Controller) gateways(ctx context.Context, s *corev1.Service) []registry.Gateway {
	if s.Labels[LabelNetwork] == "" {
		return nil
	}
	for _, in := range s.Status.LoadBalancer.Ingress {
		if in.IP == "" && in.Hostname != "" {
			c.hostnames.Store(true)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	gws, problem := gatewaysOf(rctx, c.cfg.ID, s, c.cfg.Resolver)
	key := s.Namespace + "/" + s.Name
	c.mu.Lock()
	changed := c.warned[key] != problem
	c.warned[key] = problem
	c.mu.Unlock()
	if problem != "" && changed {
		c.cfg.Log.Warn("network gateway ignored", "cluster", c.cfg.ID, "service", key, "reason", problem)
	}
	return gws
}

func (c *Controller) endpoints(svc *registry.Service) []registry.Endpoint {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, _ := c.slices.EndpointSlices(svc.Namespace).List(sel)
	return endpointsOf(c.cfg.ID, svc, slices, func(name string) (workload, bool) {
		p, err := c.pods.Pods(svc.Namespace).Get(name)
		if err != nil {
			return workload{}, false
		}
		return workload{labels: p.Labels, serviceAccount: p.Spec.ServiceAccountName, node: p.Spec.NodeName}, true
	}, c.locality, c.network)
}

// network resolves Istio's order: pod label, system namespace label, default.
func (c *Controller) network(podLabels map[string]string) string {
	if n := podLabels[LabelNetwork]; n != "" {
		return n
	}
	if ns, err := c.ns.Get(c.cfg.SystemNamespace); err == nil {
		if n := ns.Labels[LabelNetwork]; n != "" {
			return n
		}
	}
	return c.cfg.DefaultNetwork
}

func (c *Controller) locality(node string, podLabels map[string]string) registry.Locality {
	var l registry.Locality
	if n, err := c.nodes.Get(node); err == nil {
		l.Region = n.Labels[corev1.LabelTopologyRegion]
		l.Zone = n.Labels[corev1.LabelTopologyZone]
		l.Subzone = n.Labels[LabelSubzone]
	}
	if v := podLabels[corev1.LabelTopologyRegion]; v != "" {
		l.Region = v
	}
	if v := podLabels[corev1.LabelTopologyZone]; v != "" {
		l.Zone = v
	}
	if v := podLabels[LabelSubzone]; v != "" {
		l.Subzone = v
	}
	return l
}
