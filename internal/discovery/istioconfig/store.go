// Package istioconfig is the control plane's store of Istio configuration
// (Gateway, VirtualService, DestinationRule, ServiceEntry, WorkloadEntry, Sidecar,
// PeerAuthentication, AuthorizationPolicy) and the Secrets that gateways
// name for TLS, read from the config cluster
// with istio.io/client-go informers. When the CRDs are not installed yet it
// waits for them instead of failing.
package istioconfig

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Store holds the mesh's Istio configuration objects.
type Store struct {
	Client    istioclient.Interface
	Discovery discovery.DiscoveryInterface
	// Kube reads the Secrets that Gateway servers name (credentialName);
	// nil leaves HTTPS servers without certificates.
	Kube kubernetes.Interface
	Log  *slog.Logger

	factory istioinformers.SharedInformerFactory
	secrets corelisters.SecretLister
	synced  atomic.Bool

	mu        sync.Mutex // guards listeners
	listeners []func()
}

// Subscribe calls fn after every configuration change.
func (s *Store) Subscribe(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, fn)
}

func (s *Store) notify() {
	s.mu.Lock()
	ls := slices.Clone(s.listeners)
	s.mu.Unlock()
	for _, fn := range ls {
		fn()
	}
}

// Synced reports whether the informers have their first full view.
func (s *Store) Synced() bool { return s.synced.Load() }

// Run waits for the Istio CRDs, then watches until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	for warned := false; !s.crdsPresent(); warned = true {
		if !warned {
			s.Log.Warn("Istio CRDs (networking.istio.io/v1, security.istio.io/v1) are not installed; Gateway, VirtualService and policies are ignored until they are")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	s.factory = istioinformers.NewSharedInformerFactory(s.Client, 0)
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
	var synced []cache.InformerSynced
	for _, inf := range []cache.SharedIndexInformer{
		s.factory.Networking().V1().Gateways().Informer(),
		s.factory.Networking().V1().VirtualServices().Informer(),
		s.factory.Networking().V1().DestinationRules().Informer(),
		s.factory.Networking().V1().ServiceEntries().Informer(),
		s.factory.Networking().V1().WorkloadEntries().Informer(),
		s.factory.Networking().V1().Sidecars().Informer(),
		s.factory.Security().V1().PeerAuthentications().Informer(),
		s.factory.Security().V1().AuthorizationPolicies().Informer(),
		s.factory.Security().V1().RequestAuthentications().Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return err
		}
		synced = append(synced, inf.HasSynced)
	}
	if s.Kube != nil {
		// Service account tokens and Helm releases never hold gateway credentials.
		kf := informers.NewSharedInformerFactoryWithOptions(s.Kube, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1"
		}))
		inf := kf.Core().V1().Secrets()
		if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { s.secretChanged(o) },
			UpdateFunc: func(_, o any) { s.secretChanged(o) },
			DeleteFunc: func(o any) { s.secretChanged(o) },
		}); err != nil {
			return err
		}
		s.secrets = inf.Lister()
		synced = append(synced, inf.Informer().HasSynced)
		kf.Start(ctx.Done())
		defer kf.Shutdown()
	}
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	s.synced.Store(true)
	s.Log.Info("Istio configuration synced")
	s.notify()
	<-ctx.Done()
	return nil
}

func (s *Store) changed() {
	if s.synced.Load() {
		s.notify()
	}
}

// secretChanged pushes when a Secret that can hold a gateway credential
// changes (a renewed certificate is served without restarting anything).
func (s *Store) secretChanged(o any) {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = t.Obj
	}
	sec, ok := o.(*corev1.Secret)
	if !ok {
		return
	}
	for _, k := range []string{"tls.crt", "cert", "ca.crt", "cacert"} {
		if _, ok := sec.Data[k]; ok {
			s.changed()
			return
		}
	}
}

// Secret returns a Secret of the config cluster, or nil.
func (s *Store) Secret(namespace, name string) *corev1.Secret {
	if !s.synced.Load() || s.secrets == nil {
		return nil
	}
	sec, err := s.secrets.Secrets(namespace).Get(name)
	if err != nil {
		return nil
	}
	return sec
}

func (s *Store) crdsPresent() bool {
	for _, gv := range []string{"networking.istio.io/v1", "security.istio.io/v1"} {
		if _, err := s.Discovery.ServerResourcesForGroupVersion(gv); err != nil {
			return false
		}
	}
	return true
}

// Gateways lists every Gateway; nil before sync.
func (s *Store) Gateways() []*networkingv1.Gateway {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().Gateways().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// VirtualServices lists every VirtualService; nil before sync.
func (s *Store) VirtualServices() []*networkingv1.VirtualService {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().VirtualServices().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// ServiceEntries lists every ServiceEntry; nil before sync.
func (s *Store) ServiceEntries() []*networkingv1.ServiceEntry {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().ServiceEntries().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// WorkloadEntries lists every WorkloadEntry; nil before sync.
func (s *Store) WorkloadEntries() []*networkingv1.WorkloadEntry {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().WorkloadEntries().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// Sidecars lists every Sidecar; nil before sync.
func (s *Store) Sidecars() []*networkingv1.Sidecar {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().Sidecars().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// DestinationRules lists every DestinationRule; nil before sync.
func (s *Store) DestinationRules() []*networkingv1.DestinationRule {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Networking().V1().DestinationRules().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// PeerAuthentications lists every PeerAuthentication; nil before sync.
func (s *Store) PeerAuthentications() []*securityv1.PeerAuthentication {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Security().V1().PeerAuthentications().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// AuthorizationPolicies lists every AuthorizationPolicy; nil before sync.
func (s *Store) AuthorizationPolicies() []*securityv1.AuthorizationPolicy {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Security().V1().AuthorizationPolicies().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

// RequestAuthentications lists every RequestAuthentication; nil before sync.
func (s *Store) RequestAuthentications() []*securityv1.RequestAuthentication {
	if !s.synced.Load() {
		return nil
	}
	out, _ := s.factory.Security().V1().RequestAuthentications().Lister().List(labels.Everything())
	sortByName(out)
	return out
}

type named interface {
	GetNamespace() string
	GetName() string
}

// sortByName orders objects by namespace/name, so generation is stable.
func sortByName[T named](objs []T) {
	slices.SortFunc(objs, func(a, b T) int {
		if c := compare(a.GetNamespace(), b.GetNamespace()); c != 0 {
			return c
		}
		return compare(a.GetName(), b.GetName())
	})
}

func compare(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
