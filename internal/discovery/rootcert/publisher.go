// Package rootcert keeps the mesh's trust bundle where one cluster needs
// it, as istiod does: the ConfigMap istio-ca-root-cert of every namespace
// (pods mount it to verify the control plane), and the caBundle of the
// sidecar injector's webhook configurations (the API server verifies the
// control plane's webhook with it).
package rootcert

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	admissionlisters "k8s.io/client-go/listers/admissionregistration/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// Istio's names.
const (
	ConfigMapName = "istio-ca-root-cert"
	Key           = "root-cert.pem"
	label         = "istio.io/config"
	// WebhookPrefix names the injector's configurations (istio-sidecar-injector[-<rev>]).
	WebhookPrefix = "istio-sidecar-injector"
	// ValidatorPrefix names the validating configurations (istio-validator-<ns>).
	ValidatorPrefix = "istio-validator"
	webhookKey      = "webhook:"
	validatorKey    = "validator:"
)

// skipped namespaces hold no workloads, as in istiod.
var skipped = map[string]bool{"kube-public": true, "kube-node-lease": true, "local-path-storage": true}

// Publisher writes the bundle into one cluster.
type Publisher struct {
	Client  kubernetes.Interface
	Cluster string
	// Root returns the current trust bundle.
	Root func() []byte
	Log  *slog.Logger
	// Lead, for a remote cluster, is the control plane's own cluster: the
	// publisher writes there only while the remote's SystemNamespace
	// names it (or "*") in topology.istio.io/controlPlaneClusters, as
	// istiod decides which remotes it manages. Empty: the control plane's
	// own cluster, always written.
	Lead            string
	SystemNamespace string
	// Leading says whether this control plane replica is the one that
	// writes (nil: always). A follower keeps its caches warm and writes
	// nothing; Resync when it becomes the leader.
	Leading func() bool

	managedMu  sync.Mutex
	wasManaged *bool // the last decision, logged when it changes

	queue      workqueue.TypedRateLimitingInterface[string]
	namespaces corelisters.NamespaceLister
	configMaps corelisters.ConfigMapLister
	webhooks   admissionlisters.MutatingWebhookConfigurationLister
	validators admissionlisters.ValidatingWebhookConfigurationLister
	ready      chan struct{}
}

// New makes a publisher; Run starts it.
func New(client kubernetes.Interface, cluster string, root func() []byte, log *slog.Logger) *Publisher {
	return &Publisher{Client: client, Cluster: cluster, Root: root, Log: log, ready: make(chan struct{})}
}

// Run keeps every namespace's ConfigMap current until ctx ends: created
// in new namespaces, rewritten when edited or when the bundle changes,
// recreated when deleted.
func (p *Publisher) Run(ctx context.Context) error {
	p.queue = workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, time.Minute))
	all := informers.NewSharedInformerFactory(p.Client, 0)
	byName := informers.NewSharedInformerFactoryWithOptions(p.Client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", ConfigMapName).String()
	}))
	nsInf := all.Core().V1().Namespaces()
	cmInf := byName.Core().V1().ConfigMaps()
	p.namespaces, p.configMaps = nsInf.Lister(), cmInf.Lister()
	enqueueNS := func(obj any) {
		if m, err := meta(obj); err == nil {
			p.queue.Add(m.GetName())
			if p.Lead != "" && m.GetName() == p.SystemNamespace {
				p.Resync() // whether we manage the cluster may have changed
			}
		}
	}
	enqueueCM := func(obj any) {
		if m, err := meta(obj); err == nil {
			p.queue.Add(m.GetNamespace())
		}
	}
	for inf, fn := range map[cache.SharedIndexInformer]func(any){nsInf.Informer(): enqueueNS, cmInf.Informer(): enqueueCM} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: fn, UpdateFunc: func(_, o any) { fn(o) }, DeleteFunc: fn}); err != nil {
			return err
		}
	}
	// Webhook configurations on their own: a cluster where we may not read
	// them (RBAC) still gets its ConfigMaps.
	hooks := informers.NewSharedInformerFactory(p.Client, 0)
	mutating, validating := hooks.Admissionregistration().V1().MutatingWebhookConfigurations(), hooks.Admissionregistration().V1().ValidatingWebhookConfigurations()
	for inf, fn := range map[cache.SharedIndexInformer]func(any){
		mutating.Informer(): p.enqueueHook(WebhookPrefix, webhookKey), validating.Informer(): p.enqueueHook(ValidatorPrefix, validatorKey),
	} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: fn, UpdateFunc: func(_, o any) { fn(o) }}); err != nil {
			return err
		}
	}
	p.webhooks, p.validators = mutating.Lister(), validating.Lister()
	all.Start(ctx.Done())
	byName.Start(ctx.Done())
	hooks.Start(ctx.Done())
	defer all.Shutdown()
	defer byName.Shutdown()
	defer hooks.Shutdown()
	go func() {
		<-ctx.Done()
		p.queue.ShutDown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), nsInf.Informer().HasSynced, cmInf.Informer().HasSynced) {
		return ctx.Err()
	}
	close(p.ready)
	for {
		ns, quit := p.queue.Get()
		if quit {
			return nil
		}
		reconcile := p.reconcile
		switch {
		case p.Leading != nil && !p.Leading(), !p.managed():
			reconcile = func(context.Context, string) error { return nil }
		case strings.HasPrefix(ns, webhookKey):
			reconcile = p.reconcileWebhook
		case strings.HasPrefix(ns, validatorKey):
			reconcile = p.reconcileValidator
		}
		if err := reconcile(ctx, ns); err != nil {
			p.Log.Warn("root certificate not published; retrying", "cluster", p.Cluster, "namespace", ns, "err", err)
			p.queue.AddRateLimited(ns)
		} else {
			p.queue.Forget(ns)
		}
		p.queue.Done(ns)
	}
}

// Resync rewrites every namespace (the bundle changed).
func (p *Publisher) Resync() {
	select {
	case <-p.ready:
	default:
		return // the first sync will see the new bundle anyway
	}
	list, err := p.namespaces.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ns := range list {
		p.queue.Add(ns.Name)
	}
	if hooks, err := p.webhooks.List(labels.Everything()); err == nil {
		enqueue := p.enqueueHook(WebhookPrefix, webhookKey)
		for _, h := range hooks {
			enqueue(h)
		}
	}
	if hooks, err := p.validators.List(labels.Everything()); err == nil {
		enqueue := p.enqueueHook(ValidatorPrefix, validatorKey)
		for _, h := range hooks {
			enqueue(h)
		}
	}
}

// AnnotationControlPlaneClusters on a remote's system namespace names the
// clusters whose control planes manage it (Istio's annotation).
const AnnotationControlPlaneClusters = "topology.istio.io/controlPlaneClusters"

// Manages reports whether a remote's system namespace names the cluster
// lead (or "*") in AnnotationControlPlaneClusters: only then does lead's
// control plane write to the remote.
func Manages(systemNamespace *corev1.Namespace, lead string) bool {
	for _, c := range strings.Split(systemNamespace.Annotations[AnnotationControlPlaneClusters], ",") {
		if c = strings.TrimSpace(c); c == "*" || c == lead {
			return true
		}
	}
	return false
}

// managed tells whether this control plane may write to the cluster.
func (p *Publisher) managed() bool {
	if p.Lead == "" {
		return true
	}
	ns, err := p.namespaces.Get(p.SystemNamespace)
	ok := err == nil && Manages(ns, p.Lead)
	p.managedMu.Lock()
	defer p.managedMu.Unlock()
	if p.wasManaged == nil || *p.wasManaged != ok {
		p.wasManaged = &ok
		if ok {
			p.Log.Info("managing remote cluster: writing root certificates and webhook bundles", "cluster", p.Cluster)
		} else {
			p.Log.Warn("not writing root certificates or webhook bundles to this remote cluster: its namespace "+p.SystemNamespace+
				" does not name this control plane's cluster in "+AnnotationControlPlaneClusters+"; annotate it to let this control plane manage it",
				"cluster", p.Cluster, "controlPlane", p.Lead)
		}
	}
	return ok
}

// enqueueHook queues the webhook configurations named with prefix (ours),
// under key.
func (p *Publisher) enqueueHook(prefix, key string) func(any) {
	return func(obj any) {
		if m, err := meta(obj); err == nil && strings.HasPrefix(m.GetName(), prefix) {
			p.queue.Add(key + m.GetName())
		}
	}
}

// reconcileWebhook sets the bundle as the caBundle of every webhook of one
// injector configuration.
func (p *Publisher) reconcileWebhook(ctx context.Context, key string) error {
	cfg, err := p.webhooks.Get(strings.TrimPrefix(key, webhookKey))
	if err != nil {
		return ignoreNotFound(err)
	}
	cfg = cfg.DeepCopy()
	changed := false
	for i := range cfg.Webhooks {
		changed = setBundle(&cfg.Webhooks[i].ClientConfig, p.Root()) || changed
	}
	return p.updated(changed, "injection", cfg.Name, func() error {
		_, err := p.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, cfg, metav1.UpdateOptions{})
		return err
	})
}

// reconcileValidator sets the bundle of a validating configuration and
// turns its failurePolicy to Fail: refuse when the control plane cannot be
// asked only once it can be.
func (p *Publisher) reconcileValidator(ctx context.Context, key string) error {
	cfg, err := p.validators.Get(strings.TrimPrefix(key, validatorKey))
	if err != nil {
		return ignoreNotFound(err)
	}
	cfg = cfg.DeepCopy()
	changed := false
	for i := range cfg.Webhooks {
		changed = setBundle(&cfg.Webhooks[i].ClientConfig, p.Root()) || changed
		if ptr.Deref(cfg.Webhooks[i].FailurePolicy, "") != admissionv1.Fail {
			cfg.Webhooks[i].FailurePolicy, changed = ptr.To(admissionv1.Fail), true
		}
	}
	return p.updated(changed, "validation", cfg.Name, func() error {
		_, err := p.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Update(ctx, cfg, metav1.UpdateOptions{})
		return err
	})
}

// setBundle points a webhook at root; it reports whether that changed it.
func setBundle(cc *admissionv1.WebhookClientConfig, root []byte) bool {
	if bytes.Equal(cc.CABundle, root) {
		return false
	}
	cc.CABundle = root
	return true
}

// updated runs update if something changed, and logs it.
func (p *Publisher) updated(changed bool, kind, name string, update func() error) error {
	if !changed {
		return nil
	}
	err := update()
	if err == nil {
		p.Log.Info(kind+" webhook caBundle set", "cluster", p.Cluster, "webhook", name)
	}
	return err
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (p *Publisher) reconcile(ctx context.Context, name string) error {
	if skipped[name] {
		return nil
	}
	ns, err := p.namespaces.Get(name)
	if apierrors.IsNotFound(err) || (err == nil && ns.Status.Phase == corev1.NamespaceTerminating) {
		return nil
	}
	if err != nil {
		return err
	}
	root := p.Root()
	cms := p.Client.CoreV1().ConfigMaps(name)
	cm, err := p.configMaps.ConfigMaps(name).Get(ConfigMapName)
	if apierrors.IsNotFound(err) {
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: ConfigMapName, Namespace: name, Labels: map[string]string{label: "true"}},
			Data:       map[string]string{Key: string(root)},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the informer will bring it; reconciled then
		}
		return err
	}
	if err != nil {
		return err
	}
	if bytes.Equal([]byte(cm.Data[Key]), root) && cm.Labels[label] == "true" {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	if cm.Labels == nil {
		cm.Labels = map[string]string{}
	}
	cm.Data[Key] = string(root)
	cm.Labels[label] = "true"
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

func meta(obj any) (metav1.Object, error) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	return apimeta.Accessor(obj)
}
