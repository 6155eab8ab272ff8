package ca

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Store keeps the current Authority of the control plane's namespace and
// reloads it when the plug-in Secret changes, so that a root rotation
// (new bundle, new intermediate, old root dropped) needs no restart.
type Store struct {
	Client      kubernetes.Interface
	Namespace   string
	TrustDomain string
	Log         *slog.Logger

	cur  atomic.Pointer[Authority]
	mu   sync.Mutex
	subs []func(*Authority)
}

// Current is the authority in force.
func (s *Store) Current() *Authority { return s.cur.Load() }

// Subscribe calls fn with every new authority (after a reload).
func (s *Store) Subscribe(fn func(*Authority)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, fn)
}

// Load reads (or creates) the CA material once. A present but broken
// plug-in Secret is an error: signing with another key would split the mesh.
func (s *Store) Load(ctx context.Context) error {
	secrets := s.Client.CoreV1().Secrets(s.Namespace)
	plug, err := secrets.Get(ctx, PluginSecret, metav1.GetOptions{})
	switch {
	case err == nil:
		a, err := fromPlugin(plug)
		if err != nil {
			return fmt.Errorf("plug-in CA in Secret %s/%s: %w; fix it or delete it to use a self-signed root", s.Namespace, PluginSecret, err)
		}
		s.set(a)
		return nil
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("read Secret %s/%s: %w", s.Namespace, PluginSecret, err)
	}
	for range 3 {
		own, err := secrets.Get(ctx, SelfSignedSecret, metav1.GetOptions{})
		if err == nil {
			d := own.Data
			root := d[RootCertKey]
			if len(root) == 0 {
				root = d[CACertKey]
			}
			a, err := New(d[CACertKey], d[CAKeyKey], d[CertChainKey], root)
			if err != nil {
				return fmt.Errorf("self-signed CA in Secret %s/%s: %w; delete the Secret to make a new root (every workload then needs new certificates)", s.Namespace, SelfSignedSecret, err)
			}
			a.Source = SelfSignedSecret
			s.set(a)
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("read Secret %s/%s: %w", s.Namespace, SelfSignedSecret, err)
		}
		a, certPEM, keyPEM, err := NewSelfSigned(s.TrustDomain)
		if err != nil {
			return err
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: SelfSignedSecret, Namespace: s.Namespace},
			Type:       SelfSignedSecretType,
			Data:       map[string][]byte{CACertKey: certPEM, CAKeyKey: keyPEM, CertChainKey: {}, RootCertKey: {}},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue // another replica won the race; use its root
		}
		if apierrors.IsNotFound(err) {
			return fmt.Errorf("namespace %s does not exist; create it (kubectl create namespace %s) or pass --namespace", s.Namespace, s.Namespace)
		}
		if err != nil {
			return fmt.Errorf("create Secret %s/%s: %w", s.Namespace, SelfSignedSecret, err)
		}
		s.Log.Info("created a self-signed root CA", "secret", s.Namespace+"/"+SelfSignedSecret, "expires", a.RootExpiry())
		s.set(a)
		return nil
	}
	return fmt.Errorf("the Secret %s/%s keeps changing; cannot settle on a root", s.Namespace, SelfSignedSecret)
}

// Run reloads the plug-in CA when its Secret is created or changes.
func (s *Store) Run(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(s.Client, 0, informers.WithNamespace(s.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", PluginSecret).String()
		}))
	inf := f.Core().V1().Secrets().Informer()
	reload := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok {
			return
		}
		a, err := fromPlugin(sec)
		if err != nil {
			s.Log.Error("plug-in CA Secret is invalid; still signing with the previous CA", "secret", s.Namespace+"/"+PluginSecret, "err", err)
			return
		}
		if old := s.Current(); old != nil && old.cert.Equal(a.cert) && string(old.rootPEM) == string(a.rootPEM) {
			return
		}
		s.Log.Info("CA reloaded from the plug-in Secret", "signer", a.cert.Subject.String(), "roots", len(a.rootCerts))
		s.set(a)
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    reload,
		UpdateFunc: func(_, o any) { reload(o) },
		DeleteFunc: func(any) {
			s.Log.Warn("plug-in CA Secret deleted; still signing with it until restart", "secret", s.Namespace+"/"+PluginSecret)
		},
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
	return nil
}

func (s *Store) set(a *Authority) {
	s.cur.Store(a)
	s.mu.Lock()
	subs := append([]func(*Authority){}, s.subs...)
	s.mu.Unlock()
	for _, fn := range subs {
		fn(a)
	}
}

func fromPlugin(sec *corev1.Secret) (*Authority, error) {
	d := sec.Data
	for _, k := range []string{CACertKey, CAKeyKey, RootCertKey} {
		if len(d[k]) == 0 {
			return nil, fmt.Errorf("key %s is missing (need %s, %s, %s and optionally %s)", k, CACertKey, CAKeyKey, RootCertKey, CertChainKey)
		}
	}
	return New(d[CACertKey], d[CAKeyKey], d[CertChainKey], d[RootCertKey])
}
