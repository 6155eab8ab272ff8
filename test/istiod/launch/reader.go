package launch

import (
	"context"
	"errors"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// tokenLifetime outlasts the longest run (the benchmark's 40 minutes).
const tokenLifetime = 3600

// reader gives istiod an account in cluster c that may read anything and
// write nothing, so whatever istiod would write (root certificate
// ConfigMaps, webhook CA bundles, leader-election locks, its CA Secret) is
// refused by the API server, and writes its kubeconfig to path. Applied,
// not created, so a run on clusters a previous one left it in takes
// today's rules.
func (o *Istiod) reader(ctx context.Context, admin *clientcmdapi.Config, c Cluster, path string) error {
	apply := metav1.ApplyOptions{FieldManager: "istiod-launch", Force: true}
	if _, err := c.Client.CoreV1().ServiceAccounts("default").Apply(ctx, corev1ac.ServiceAccount(o.Name, "default"), apply); err != nil {
		return err
	}
	role := rbacv1ac.ClusterRole(o.Role).WithRules(rbacv1ac.PolicyRule().
		WithAPIGroups("*").WithResources("*").WithVerbs("get", "list", "watch"))
	if _, err := c.Client.RbacV1().ClusterRoles().Apply(ctx, role, apply); err != nil {
		return err
	}
	binding := rbacv1ac.ClusterRoleBinding(o.Role).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("ClusterRole").WithName(o.Role)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(o.Name).WithNamespace("default"))
	if _, err := c.Client.RbacV1().ClusterRoleBindings().Apply(ctx, binding, apply); err != nil {
		return err
	}
	tr, err := c.Client.CoreV1().ServiceAccounts("default").CreateToken(ctx, o.Name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](tokenLifetime)}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	cfg, err := readerKubeconfig(admin, c.ID, o.Name, tr.Status.Token)
	if err != nil {
		return err
	}
	return clientcmd.WriteToFile(*cfg, path)
}

// readerKubeconfig is the kubeconfig of user's token for cluster id, its
// cluster entry named id: Istio takes a remote's cluster ID from it.
func readerKubeconfig(admin *clientcmdapi.Config, id, user, token string) (*clientcmdapi.Config, error) {
	ac, ok := admin.Contexts[id]
	if !ok {
		return nil, fmt.Errorf("admin kubeconfig: no context %s", id)
	}
	server, ok := admin.Clusters[ac.Cluster]
	if !ok {
		return nil, fmt.Errorf("admin kubeconfig: context %s names no cluster", id)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[id] = &clientcmdapi.Cluster{Server: server.Server, CertificateAuthorityData: server.CertificateAuthorityData}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[id] = &clientcmdapi.Context{Cluster: id, AuthInfo: user}
	cfg.CurrentContext = id
	return cfg, nil
}

// CheckReadOnly asks each cluster's API server, as the reader, whether it
// may read pods and write none of what istiod would write: a test that
// istiod changed nothing means nothing if it could have.
func (o *Istiod) CheckReadOnly(ctx context.Context) error {
	for i, path := range o.Kubeconfigs() {
		id := o.Clusters[i].ID
		rc, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			return err
		}
		reader, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return err
		}
		can := func(verb, group, resource string) (bool, error) {
			r, err := reader.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: "istio-system", Verb: verb, Group: group, Resource: resource}}}, metav1.CreateOptions{})
			if err != nil {
				return false, fmt.Errorf("%s: access review: %w", id, err)
			}
			return r.Status.Allowed, nil
		}
		if ok, err := can("list", "", "pods"); err != nil || !ok {
			return errors.Join(err, fmt.Errorf("%s: istiod's account cannot list pods", id))
		}
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			for _, r := range [][2]string{{"", "configmaps"}, {"", "secrets"}, {"coordination.k8s.io", "leases"},
				{"admissionregistration.k8s.io", "mutatingwebhookconfigurations"}, {"admissionregistration.k8s.io", "validatingwebhookconfigurations"}} {
				ok, err := can(verb, r[0], r[1])
				if err != nil {
					return err
				}
				if ok {
					return fmt.Errorf("%s: istiod's account may %s %s: it must only read", id, verb, r[1])
				}
			}
		}
	}
	return nil
}

// RemoveReaders deletes the reader account and its RBAC from every
// cluster, for a run that leaves the clusters as it found them.
func (o *Istiod) RemoveReaders(ctx context.Context) error {
	var errs []error
	gone := func(err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	for _, c := range o.Clusters {
		gone(c.Client.RbacV1().ClusterRoleBindings().Delete(ctx, o.Role, metav1.DeleteOptions{}))
		gone(c.Client.RbacV1().ClusterRoles().Delete(ctx, o.Role, metav1.DeleteOptions{}))
		gone(c.Client.CoreV1().ServiceAccounts("default").Delete(ctx, o.Name, metav1.DeleteOptions{}))
	}
	return errors.Join(errs...)
}
