// Package remoteistiod keeps a remote cluster's way to its control plane
// pointed at the right addresses. A remote has no istiod pods: its istiod
// Service is selector-less and its EndpointSlice names the primary's
// east-west gateway (values.global.remotePilotAddress). When that address
// is a DNS name, as EKS's load balancers have, the addresses behind it
// change over time, and an EndpointSlice holds IPs only. Istio renders an
// ExternalName Service instead, which the API server cannot call webhooks
// through; isthmus keeps the slice and lets the control plane, which
// already watches the remote through its remote secret, re-resolve the
// name and rewrite the slice's endpoints.
package remoteistiod

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

const (
	// AnnotationAddress on the remote's istiod EndpointSlice is the DNS
	// name the slice follows (the installer writes it).
	AnnotationAddress = "isthmus.io/remote-pilot-address"
	// Name of the remote's istiod Service and EndpointSlice.
	Name = "istiod"
	// ManagedBy is the slice's endpointslice.kubernetes.io/managed-by.
	ManagedBy = "control-plane.isthmus.io"
	// RoleName names the Role that lets the reader account rewrite the
	// slice (and nothing else).
	RoleName = "istio-reader-istiod-endpoints"
	// Every is how often the name is resolved again: DNS answers of cloud
	// load balancers live for about a minute.
	Every = 30 * time.Second
)

// Resolver is what Follower needs of net.Resolver.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Follower rewrites one remote's istiod endpoints.
type Follower struct {
	Client  kubernetes.Interface
	Cluster string
	// Namespace is the remote's system namespace (istio-system).
	Namespace string
	// Managed reports whether this control plane may write to the remote
	// (its system namespace names it in topology.istio.io/controlPlaneClusters,
	// and this replica is the leader).
	Managed func(ns *corev1.Namespace) bool
	// Known says whether the name is one this control plane may resolve
	// for the remote (nil error): the remote's admin writes the name, and
	// must not make the primary resolve its internal names for them.
	Known    func(ctx context.Context, name string) error
	Resolver Resolver
	Log      *slog.Logger

	last string // the last problem logged, so a persisting one is said once
}

// Run follows the slice until ctx ends. A slice without AnnotationAddress
// (remotePilotAddress is an IP) is left alone.
func (f *Follower) Run(ctx context.Context) error {
	if f.Resolver == nil {
		f.Resolver = net.DefaultResolver
	}
	factory := informers.NewSharedInformerFactoryWithOptions(f.Client, 0, informers.WithNamespace(f.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", Name).String()
		}))
	inf := factory.Discovery().V1().EndpointSlices()
	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	lister := inf.Lister().EndpointSlices(f.Namespace)
	wait := Every
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(wait):
		}
		wait = Every
		slice, err := lister.Get(Name)
		if err != nil || slice.Annotations[AnnotationAddress] == "" {
			continue
		}
		if err := f.follow(ctx, slice); err != nil {
			f.say(err.Error())
			wait = 2 * time.Second
		}
	}
}

// follow resolves the slice's name and rewrites its endpoints when the
// answer differs. A failed or empty answer keeps the endpoints there are:
// a DNS hiccup must not cut the remote off its control plane.
func (f *Follower) follow(ctx context.Context, slice *discoveryv1.EndpointSlice) error {
	host := slice.Annotations[AnnotationAddress]
	ns, err := f.Client.CoreV1().Namespaces().Get(ctx, f.Namespace, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read namespace %s of cluster %s: %w", f.Namespace, f.Cluster, err)
	}
	if f.Managed != nil && !f.Managed(ns) {
		f.say("") // the root certificate publisher says why it does not manage the cluster
		return nil
	}
	if f.Known != nil {
		if err := f.Known(ctx, host); err != nil {
			return fmt.Errorf("cluster %s: remotePilotAddress %s is not followed: %w", f.Cluster, host, err)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	family := "ip4"
	if slice.AddressType == discoveryv1.AddressTypeIPv6 {
		family = "ip6"
	}
	addrs, err := f.Resolver.LookupNetIP(rctx, family, host)
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("no %s address", family)
	}
	if err != nil {
		return fmt.Errorf("cluster %s: cannot resolve remotePilotAddress %s (%v); its istiod endpoints stay %s", f.Cluster, host, err, strings.Join(addresses(slice), ","))
	}
	want := make([]string, 0, len(addrs))
	for _, a := range addrs {
		want = append(want, a.Unmap().String())
	}
	slices.Sort(want)
	want = slices.Compact(want)
	have := addresses(slice)
	if slices.Equal(have, want) {
		f.say("")
		return nil
	}
	next := slice.DeepCopy()
	next.Endpoints = nil
	for _, a := range want {
		// One endpoint per address: consumers such as kube-proxy use only
		// the first address of an endpoint.
		next.Endpoints = append(next.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	if _, err := f.Client.DiscoveryV1().EndpointSlices(f.Namespace).Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("cluster %s: may not update EndpointSlice %s/%s to follow %s (re-run `isthmus install` of the remote profile: it grants the reader account the Role %s): %v",
				f.Cluster, f.Namespace, Name, host, RoleName, err)
		}
		return fmt.Errorf("cluster %s: update EndpointSlice %s/%s: %w", f.Cluster, f.Namespace, Name, err)
	}
	f.say("")
	f.Log.Info("remote istiod endpoints follow remotePilotAddress", "cluster", f.Cluster, "address", host, "was", strings.Join(have, ","), "now", strings.Join(want, ","))
	return nil
}

// say logs a problem once, until it changes.
func (f *Follower) say(problem string) {
	if problem != f.last && problem != "" {
		f.Log.Warn(problem)
	}
	f.last = problem
}

// addresses of a slice, sorted.
func addresses(s *discoveryv1.EndpointSlice) []string {
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.Addresses...)
	}
	slices.Sort(out)
	return out
}

// Role lets the reader account (the remote secret's) update the istiod
// EndpointSlice of the remote's system namespace and no other object;
// Policy narrows that to the slice's endpoints. It widens what the holder
// of the remote secret may do to the remote, consciously: that holder can
// already rewrite the injector's webhook configuration, so pointing the
// remote's control-plane address elsewhere adds no new power, while
// relabelling the slice (to serve another Service) or changing its ports
// would, and the policy refuses it.
func Role(ns, serviceAccount string) (*rbacv1.Role, *rbacv1.RoleBinding) {
	meta := metav1.ObjectMeta{Name: RoleName, Namespace: ns}
	return &rbacv1.Role{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"}, ObjectMeta: meta,
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, ResourceNames: []string{Name}, Verbs: []string{"update", "patch"}}}},
		&rbacv1.RoleBinding{TypeMeta: metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"}, ObjectMeta: meta,
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: RoleName},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: serviceAccount, Namespace: ns}}}
}

// Policy is the ValidatingAdmissionPolicy (and its binding) that lets the
// reader account change nothing of the slice but its endpoints: not its
// labels (kubernetes.io/service-name would make its addresses another
// Service's), annotations (the name followed), ports or address type.
func Policy(ns, serviceAccount string) (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding) {
	same := func(field string) admissionv1.Validation {
		return admissionv1.Validation{Expression: "object." + field + " == oldObject." + field,
			Message: "the remote secret's account may change only the endpoints of EndpointSlice " + ns + "/" + Name + " (" + field + " is fixed)"}
	}
	return &admissionv1.ValidatingAdmissionPolicy{TypeMeta: metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicy"},
			ObjectMeta: metav1.ObjectMeta{Name: RoleName + "-" + ns},
			Spec: admissionv1.ValidatingAdmissionPolicySpec{
				FailurePolicy: ptr.To(admissionv1.Fail),
				MatchConstraints: &admissionv1.MatchResources{ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Update, admissionv1.Create, admissionv1.Delete},
					Rule:       admissionv1.Rule{APIGroups: []string{"discovery.k8s.io"}, APIVersions: []string{"*"}, Resources: []string{"endpointslices"}}}}}},
				MatchConditions: []admissionv1.MatchCondition{{Name: "the-reader-account",
					Expression: "request.userInfo.username == 'system:serviceaccount:" + ns + ":" + serviceAccount + "'"}},
				Validations: []admissionv1.Validation{
					{Expression: "request.operation == 'UPDATE' && request.namespace == '" + ns + "' && request.name == '" + Name + "'",
						Message: "the remote secret's account may only update EndpointSlice " + ns + "/" + Name},
					same("metadata.labels"), same("metadata.annotations"), same("ports"), same("addressType"),
				},
			}},
		&admissionv1.ValidatingAdmissionPolicyBinding{TypeMeta: metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicyBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: RoleName + "-" + ns},
			Spec:       admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: RoleName + "-" + ns, ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny}}}
}
