// Package node is the sandbox's node agent, the kubelet's role: it registers
// a Node, keeps its Lease, and runs the pods bound to it as processes, each
// pod in its own network namespace wired into the cluster's node namespace.
// It also serves the kubelet API (logs, exec, port-forward) so kubectl works.
package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/images"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// Config is what one node agent needs to know.
type Config struct {
	NodeName   string
	Kubeconfig string // node credentials (system:node:<name>)
	// Dir holds pods/<uid>/ (volumes, logs, container specs).
	Dir string
	// NodeNS is the node's network namespace, where the agent itself runs.
	NodeNS  string
	Address netip.Addr // InternalIP
	// Kubelet API serving certificate and the CA of its clients.
	ServingCert, ServingKey, ClientCA string
	// Labels are added to the Node (region, zone).
	Labels map[string]string
	// DNSServer and ClusterDomain go into pods' resolv.conf.
	DNSServer     string
	ClusterDomain string
	// APIServiceIP is the `kubernetes` Service address for pods' environment.
	APIServiceIP string
	// KubeletVersion is reported in the Node's status.
	KubeletVersion string
	// Self is the isthmus binary, which starts each container
	// (`sandbox container-run`).
	Self string
	// ImageDir is the node's image store; empty runs every container as a
	// host program (no registry).
	ImageDir string
	// Mirrors maps a registry (docker.io) to the plain-HTTP registry that
	// serves it, as containerd's hosts.toml mirrors.
	Mirrors map[string]string
}

// Agent runs the pods of one node.
type Agent struct {
	cfg Config
	cs  kubernetes.Interface
	log *slog.Logger

	ipam     *ipam
	images   *images.Store
	recorder record.EventRecorder

	mu      sync.Mutex // guards workers
	workers map[types.UID]*podWorker

	ready atomic.Bool // registered and watching pods
}

// New connects to the API server with the node's credentials.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("node credentials: %w", err)
	}
	// A node starting many pods at once makes a burst of token, config and
	// status calls; client-go's default 5 QPS would serialize pod starts.
	rest.QPS, rest.Burst = 100, 200
	cs, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, cs: cs, log: log, workers: map[types.UID]*podWorker{}}
	if cfg.ImageDir != "" {
		a.images = &images.Store{Dir: cfg.ImageDir, Mirrors: cfg.Mirrors}
	}
	return a, nil
}

// event records an event on the pod, from the kubelet as Kubernetes names it.
func (a *Agent) event(p *corev1.Pod, kind, reason, msg string) {
	if a.recorder != nil && p != nil {
		a.recorder.Event(p, kind, reason, msg)
	}
}

// Run registers the node and runs pods until ctx ends. Pods keep running
// while the agent is gone only until the next agent start cleans them up.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cleanStale(); err != nil {
		a.log.Warn("cleaning pods of an earlier agent", "err", err)
	}
	cidr, err := a.register(ctx)
	if err != nil {
		return err
	}
	a.ipam = newIPAM(cidr)
	if err := network.ConfigureNode(a.cfg.NodeNS, 6443); err != nil {
		return fmt.Errorf("node firewall: %w", err)
	}
	go a.heartbeat(ctx)
	events := record.NewBroadcaster(record.WithContext(ctx))
	events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.cs.CoreV1().Events("")})
	defer events.Shutdown()
	a.recorder = events.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: a.cfg.NodeName})

	factory := informers.NewSharedInformerFactoryWithOptions(a.cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	}))
	inf := factory.Core().V1().Pods().Informer()
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { a.observe(ctx, obj) },
		UpdateFunc: func(_, obj any) { a.observe(ctx, obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				a.gone(p.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	srv := &server{agent: a}
	errc := make(chan error, 2)
	go func() { errc <- srv.serve(ctx) }()
	go func() { errc <- a.serveHealth(ctx) }()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return ctx.Err()
	}
	a.ready.Store(true)
	a.log.Info("node agent running", "node", a.cfg.NodeName, "podCIDR", cidr)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil {
			return err
		}
	}
	a.stopAll()
	return nil
}

func (a *Agent) podsDir() string { return filepath.Join(a.cfg.Dir, "pods") }

// observe routes a pod event to its worker, creating it on first sight.
func (a *Agent) observe(ctx context.Context, obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	a.mu.Lock()
	w, ok := a.workers[p.UID]
	if !ok {
		if p.DeletionTimestamp != nil && p.Status.Phase == "" {
			a.mu.Unlock()
			return
		}
		w = newPodWorker(a, p)
		a.workers[p.UID] = w
		go w.run(ctx)
	}
	a.mu.Unlock()
	w.update(p)
}

// gone is called when the pod object no longer exists in the API.
func (a *Agent) gone(uid types.UID) {
	a.mu.Lock()
	w := a.workers[uid]
	a.mu.Unlock()
	if w != nil {
		w.remove()
	}
}

func (a *Agent) forget(uid types.UID) {
	a.mu.Lock()
	delete(a.workers, uid)
	a.mu.Unlock()
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	ws := make([]*podWorker, 0, len(a.workers))
	for _, w := range a.workers {
		ws = append(ws, w)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(w.shutdown)
	}
	wg.Wait()
}

// cleanStale stops the processes and removes the networks of pods an earlier
// agent left; their pods are started afresh from the API.
func (a *Agent) cleanStale() error {
	entries, err := os.ReadDir(a.podsDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		uid := e.Name()
		pn := network.PodNetwork(uid, netip.Addr{})
		if network.Exists(pn.NS) {
			killNS(pn.NS)
			errs = append(errs, network.TeardownPod(a.cfg.NodeNS, pn))
		}
		errs = append(errs, os.RemoveAll(filepath.Join(a.podsDir(), uid)))
	}
	return errors.Join(errs...)
}

// register creates or refreshes the Node and waits for the controller
// manager to assign its pod CIDR.
func (a *Agent) register(ctx context.Context) (netip.Prefix, error) {
	nodes := a.cs.CoreV1().Nodes()
	labels := map[string]string{
		corev1.LabelHostname:      a.cfg.NodeName,
		corev1.LabelOSStable:      "linux",
		corev1.LabelArchStable:    runtime.GOARCH,
		"node.isthmus.io/sandbox": "true",
	}
	for k, v := range a.cfg.Labels {
		labels[k] = v
	}
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: labels}}
	if _, err := nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return netip.Prefix{}, fmt.Errorf("register node %s: %w", a.cfg.NodeName, err)
	}
	if err := a.updateStatus(ctx); err != nil {
		return netip.Prefix{}, err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if err == nil && got.Spec.PodCIDR != "" {
			return netip.ParsePrefix(got.Spec.PodCIDR)
		}
		if time.Now().After(deadline) {
			return netip.Prefix{}, fmt.Errorf("node %s got no pod CIDR from the controller manager in 2m (last error: %v)", a.cfg.NodeName, err)
		}
		select {
		case <-ctx.Done():
			return netip.Prefix{}, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// updateStatus writes addresses, capacity and a fresh Ready condition.
func (a *Agent) updateStatus(ctx context.Context) error {
	nodes := a.cs.CoreV1().Nodes()
	n, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node: %w", err)
	}
	now := metav1.Now()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(memTotal(), resource.BinarySI),
		corev1.ResourcePods:   *resource.NewQuantity(110, resource.DecimalSI),
	}
	n.Status.Capacity = capacity
	n.Status.Allocatable = capacity
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: a.cfg.Address.String()},
		{Type: corev1.NodeHostName, Address: a.cfg.NodeName},
	}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
	n.Status.NodeInfo = corev1.NodeSystemInfo{
		KubeletVersion:          a.cfg.KubeletVersion,
		OperatingSystem:         "linux",
		Architecture:            runtime.GOARCH,
		OSImage:                 "isthmus sandbox",
		ContainerRuntimeVersion: "isthmus://sandbox",
	}
	ready := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "isthmus node agent is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
	}
	found := false
	for i, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				ready.LastTransitionTime = c.LastTransitionTime
			}
			n.Status.Conditions[i] = ready
			found = true
		}
	}
	if !found {
		n.Status.Conditions = append(n.Status.Conditions, ready)
	}
	if _, err := nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update node status: %w", err)
	}
	return nil
}

// heartbeat renews the node Lease every 10 s, and the Ready condition
// every minute or, as the kubelet does, at once when the API's is not
// True: after the API server was away longer than the Lease, the node
// lifecycle controller marks the node Unknown and its pods not Ready
// (again on every pod write) until the node says it is Ready.
func (a *Agent) heartbeat(ctx context.Context) {
	leases := a.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	lastStatus := time.Now()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		now := metav1.NewMicroTime(time.Now())
		l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			l = &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Namespace: corev1.NamespaceNodeLease},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity: ptr.To(a.cfg.NodeName), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: &now,
				},
			}
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		case err == nil:
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			a.log.Warn("renew node lease", "err", err)
		}
		if time.Since(lastStatus) > time.Minute || (err == nil && !a.readyInAPI(ctx)) {
			if err := a.updateStatus(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("node status", "err", err)
			}
			lastStatus = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// readyInAPI reports whether the API server's Node says Ready=True (true
// when it cannot be read: the next tick asks again).
func (a *Agent) readyInAPI(ctx context.Context) bool {
	n, err := a.cs.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return true
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// serveHealth answers /healthz on 127.0.0.1:10248, the kubelet's healthz port.
func (a *Agent) serveHealth(ctx context.Context) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "node agent starting", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok")
	})
	srv := &http.Server{Addr: "127.0.0.1:10248", Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("healthz: %w", err)
	}
	return nil
}

func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 8 << 30
	}
	var kb int64
	fmt.Sscanf(string(b), "MemTotal: %d kB", &kb)
	return kb * 1024
}
