// Package remotesecret turns Istio remote secrets into watched clusters:
// every Secret labelled istio/multiCluster=true in the control plane's
// namespace maps cluster IDs (its data keys) to kubeconfigs. Clusters are
// added, rotated (make-before-break) and removed live; a broken or
// unreachable one is reported and retried without touching the others.
package remotesecret

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Label and annotation of remote secrets, Istio's names.
const (
	LabelMultiCluster   = "istio/multiCluster"
	AnnotationClusterID = "networking.istio.io/cluster"
)

// Cluster is what the controller runs per remote cluster.
type Cluster interface {
	Run(ctx context.Context) error
	Synced() bool
	// Resync asks for a full recomputation (after a rotation).
	Resync()
}

// Factory builds a Cluster for an ID from the remote secret's client
// configuration (the factory makes its clients: it knows what each is for).
type Factory func(id string, rc *rest.Config) (Cluster, error)

// Status is one remote cluster as the controller sees it.
type Status struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
	// State is syncing, synced, timeout (not synced within SyncTimeout:
	// served with what it has), stale (its API server stopped answering:
	// served with the last-known endpoints) or error.
	State string `json:"state"`
	Error string `json:"error,omitempty"`
	// StaleSince is when its API server stopped answering.
	StaleSince *time.Time `json:"staleSince,omitempty"`
}

// ProbeEvery is how often each remote's API server is asked whether it
// answers (its /readyz, which every account may read): a watch on a
// frozen or unreachable API server does not fail, it only goes quiet.
const ProbeEvery = 5 * time.Second

// Controller watches remote secrets.
type Controller struct {
	Client       kubernetes.Interface // the config cluster
	Namespace    string
	LocalCluster string
	NewCluster   Factory
	// Remove drops a cluster from the registry once it is stopped.
	Remove      func(id string)
	SyncTimeout time.Duration
	// ProbeEvery is how often each remote's API server is asked whether
	// it answers (0: ProbeEvery).
	ProbeEvery time.Duration
	Log        *slog.Logger
	Metrics    prometheus.Registerer

	lister corelisters.SecretLister
	queue  workqueue.TypedRateLimitingInterface[string]
	// listed is set once the secrets there at start-up were applied: till
	// then the control plane does not know which remotes it waits for.
	listed atomic.Bool

	mu       sync.Mutex // guards clusters
	clusters map[string]*remote

	syncStatus *prometheus.GaugeVec
	events     *prometheus.CounterVec
}

type remote struct {
	id, secret string
	hash       [32]byte
	cancel     context.CancelFunc
	cluster    Cluster
	started    time.Time
	err        string
	// staleSince is when the API server stopped answering (zero: it answers).
	staleSince time.Time
	// refused is why the API server refuses the secret's credentials
	// ("": it accepts them).
	refused string
	// done is closed when the remote is stopped.
	done <-chan struct{}
	// previous is the client of the secret's last version, still running
	// until this one has synced (make before break; guarded by mu).
	previous *remote
}

// Run watches secrets until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.clusters = map[string]*remote{}
	c.syncStatus = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "istiod_remote_cluster_sync_status", Help: "1 for the current state of each remote cluster."}, []string{"cluster", "status"})
	c.events = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "remote_cluster_secret_events_total", Help: "Remote secret events."}, []string{"event"})
	managed := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "istiod_managed_clusters", Help: "Clusters this control plane watches.", ConstLabels: prometheus.Labels{"cluster_type": "remote"}},
		func() float64 { c.mu.Lock(); defer c.mu.Unlock(); return float64(len(c.clusters)) })
	if c.Metrics != nil {
		for _, m := range []prometheus.Collector{c.syncStatus, c.events, managed} {
			if err := c.Metrics.Register(m); err != nil {
				return fmt.Errorf("register metrics: %w", err)
			}
		}
	}
	if c.SyncTimeout == 0 {
		c.SyncTimeout = 30 * time.Second
	}
	c.queue = workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Second, 2*time.Minute))
	f := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(c.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelMultiCluster + "=true" }))
	inf := f.Core().V1().Secrets()
	c.lister = inf.Lister()
	enqueue := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return ctx.Err()
	}
	// The secrets there at start-up, which the informer has queued: the
	// controller is listed once the loop below has applied each of them
	// once (a failed one counts: its status says so, and it is retried).
	secrets, err := c.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	startup := map[string]bool{}
	for _, sec := range secrets {
		if key, err := cache.MetaNamespaceKeyFunc(sec); err == nil {
			startup[key] = true
		}
	}
	c.listed.Store(len(startup) == 0)
	go c.watchSync(ctx)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for {
		key, quit := c.queue.Get()
		if quit {
			c.stopAll()
			return nil
		}
		if err := c.reconcile(ctx, key); err != nil {
			c.queue.AddRateLimited(key)
		} else {
			c.queue.Forget(key)
		}
		c.queue.Done(key)
		if startup[key] {
			delete(startup, key)
			c.listed.Store(len(startup) == 0)
		}
	}
}

// reconcile brings the clusters owned by one secret in line with it.
func (c *Controller) reconcile(ctx context.Context, key string) error {
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	sec, err := c.lister.Secrets(ns).Get(name)
	wanted := map[string][]byte{}
	if err == nil {
		for id, kc := range sec.Data {
			wanted[id] = kc
		}
		for id, kc := range sec.StringData {
			wanted[id] = []byte(kc)
		}
	}
	c.mu.Lock()
	var stale []*remote
	for id, r := range c.clusters {
		if _, ok := wanted[id]; r.secret == key && !ok {
			stale = append(stale, r)
			delete(c.clusters, id)
		}
	}
	c.mu.Unlock()
	for _, r := range stale {
		c.stop(r, true)
		c.events.WithLabelValues("delete").Inc()
		c.Log.Info("remote cluster removed", "cluster", r.id, "secret", key)
	}
	var failed bool
	ids := make([]string, 0, len(wanted))
	for id := range wanted {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if err := c.apply(ctx, key, id, wanted[id]); err != nil {
			failed = true
		}
	}
	if failed {
		return fmt.Errorf("secret %s has clusters that failed", key)
	}
	return nil
}

func (c *Controller) apply(ctx context.Context, secret, id string, kubeconfig []byte) error {
	if id == c.LocalCluster {
		c.Log.Warn("remote secret names the control plane's own cluster; ignored", "secret", secret, "cluster", id)
		return nil
	}
	h := sha256.Sum256(kubeconfig)
	c.mu.Lock()
	old := c.clusters[id]
	c.mu.Unlock()
	if old != nil && old.secret != secret {
		c.Log.Warn("cluster already registered by another secret; ignored", "secret", secret, "cluster", id, "owner", old.secret)
		return nil
	}
	if old != nil && old.hash == h && old.err == "" {
		return nil
	}
	rc, err := RESTConfig(kubeconfig)
	if err == nil {
		var cluster Cluster
		cluster, err = c.NewCluster(id, rc)
		if err == nil {
			r := &remote{id: id, secret: secret, hash: h, started: time.Now(), cluster: cluster}
			rctx, cancel := context.WithCancel(ctx)
			r.cancel, r.done = cancel, rctx.Done()
			go func() {
				if err := r.cluster.Run(rctx); err != nil && rctx.Err() == nil {
					c.Log.Warn("remote cluster stopped", "cluster", id, "err", err)
				}
			}()
			go c.probe(rctx, r, rc)
			c.mu.Lock()
			c.clusters[id] = r
			c.mu.Unlock()
			event := "add"
			if old != nil {
				event = "update"
				// Make before break: the old client serves until the new one synced.
				go c.replace(ctx, old, r)
			}
			c.events.WithLabelValues(event).Inc()
			c.Log.Info("remote cluster "+event, "cluster", id, "secret", secret, "server", rc.Host)
			return nil
		}
	}
	c.Log.Error("remote cluster not added; fix the secret (it is retried with backoff)", "secret", secret, "cluster", id, "err", err)
	c.mu.Lock()
	if old == nil {
		c.clusters[id] = &remote{id: id, secret: secret, hash: h, err: err.Error(), cancel: func() {}}
	} else {
		old.err = err.Error()
	}
	c.mu.Unlock()
	c.events.WithLabelValues("error").Inc()
	return err
}

// replace stops the old client of a cluster once the new one has synced:
// a new secret whose credentials do not work (a revoked token, a wrong
// CA) leaves the old client watching, however long, and the status says
// why the new one fails.
func (c *Controller) replace(ctx context.Context, old, nu *remote) {
	c.mu.Lock()
	nu.previous = old
	c.mu.Unlock()
	start, warned := time.Now(), false
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for !nu.cluster.Synced() {
		select {
		case <-ctx.Done():
			return
		case <-nu.done:
			return // stopped (deleted or replaced again): its previous went with it
		case <-t.C:
		}
		if !warned && time.Since(start) > c.SyncTimeout {
			warned = true
			c.Log.Warn("the remote secret's new credentials have not synced the cluster; the previous ones keep watching it", "cluster", nu.id, "secret", nu.secret, "after", c.SyncTimeout)
		}
	}
	c.mu.Lock()
	prev := nu.previous
	nu.previous = nil
	c.mu.Unlock()
	if prev != nil {
		c.stop(prev, false)
	}
	nu.cluster.Resync()
}

// stop stops a remote's client and those of its earlier versions still
// running; drop also takes the cluster out of the registry.
func (c *Controller) stop(r *remote, drop bool) {
	for cur := r; cur != nil; {
		cur.cancel()
		c.mu.Lock()
		next := cur.previous
		cur.previous = nil
		c.mu.Unlock()
		cur = next
	}
	if drop && c.Remove != nil {
		c.Remove(r.id)
	}
	c.syncStatus.DeletePartialMatch(prometheus.Labels{"cluster": r.id})
}

func (c *Controller) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.clusters {
		for p := r.previous; p != nil; p = p.previous {
			p.cancel()
		}
		r.cancel()
	}
}

// probe marks r stale while its API server does not answer, until ctx
// ends.
func (c *Controller) probe(ctx context.Context, r *remote, rc *rest.Config) {
	cfg := rest.CopyConfig(rc)
	every := c.ProbeEvery
	if every == 0 {
		every = ProbeEvery
	}
	cfg.Timeout = every
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		err := client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
		if ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		since, refused := r.staleSince, r.refused
		switch {
		case apierrors.IsUnauthorized(err) || apierrors.IsForbidden(err):
			// It answers, and refuses the token: a revoked or expired
			// token, or a secret for another cluster.
			r.staleSince, r.refused = time.Time{}, fmt.Sprintf("the API server refuses the secret's credentials (%v): the token is revoked, expired or not of this cluster; the previous secret's client, if any, keeps watching the cluster, else its last-known endpoints are served, until a good remote secret (isthmus create-remote-secret) replaces it", err)
			if refused == "" {
				c.Log.Error("remote cluster refuses the remote secret's credentials; serving its last-known endpoints", "cluster", r.id, "secret", r.secret, "err", err)
			}
		case err != nil && since.IsZero():
			r.staleSince, r.refused = time.Now(), ""
			c.Log.Warn("remote cluster's API server does not answer; serving its last-known endpoints", "cluster", r.id, "err", err)
		case err == nil && (!since.IsZero() || refused != ""):
			r.staleSince, r.refused = time.Time{}, ""
			if since.IsZero() {
				c.Log.Info("remote cluster accepts the secret's credentials again", "cluster", r.id)
			} else {
				c.Log.Info("remote cluster's API server answers again", "cluster", r.id, "stale", time.Since(since).Round(time.Second))
			}
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Listed says whether the remote secrets present at start-up have been
// read and their clusters added (their watches may still be syncing:
// Statuses says).
func (c *Controller) Listed() bool { return c.listed.Load() }

// Statuses lists every remote cluster and its state.
func (c *Controller) Statuses() []Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Status, 0, len(c.clusters))
	for _, r := range c.clusters {
		st := Status{ID: r.id, Secret: r.secret, State: state(r, c.SyncTimeout), Error: r.err}
		if st.Error == "" {
			st.Error = r.refused
		}
		if !r.staleSince.IsZero() {
			since := r.staleSince
			st.StaleSince = &since
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func state(r *remote, timeout time.Duration) string {
	switch {
	case r.err != "" || r.refused != "":
		return "error"
	case !r.staleSince.IsZero():
		return "stale"
	case r.cluster.Synced():
		return "synced"
	case time.Since(r.started) > timeout:
		return "timeout"
	}
	return "syncing"
}

// watchSync keeps the sync-status gauge current.
func (c *Controller) watchSync(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for _, s := range c.Statuses() {
			for _, st := range []string{"syncing", "synced", "timeout", "stale", "error"} {
				v := 0.0
				if st == s.State {
					v = 1
				}
				c.syncStatus.WithLabelValues(s.ID, st).Set(v)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
