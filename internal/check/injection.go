package check

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/inject"
)

// InjectionLabel selects namespaces for injection, Istio's label.
const InjectionLabel = "istio-injection"

// injection asks each cluster's API server to create (server-side dry
// run) a pod in a namespace labelled for injection: the API server calls
// the injection webhook as for a real pod (it declares sideEffects None),
// so this shows whether it reaches the webhook and the pod gets a proxy.
func (r *run) injection(ctx context.Context, image string) {
	if image == "" {
		image = "isthmus/isthmus" // any image: a dry run pulls nothing
	}
	for _, c := range r.mesh.clusters() {
		if c.Client == nil || !r.reachable[c] {
			r.row(CheckInjection, c, StatusSkipped, "%s", skipWhy(c, r.reachable[c]))
			continue
		}
		nss, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: InjectionLabel + "=enabled"})
		if err != nil {
			r.checkFailed(CheckInjection, c, err)
			continue
		}
		var names []string
		for _, ns := range nss.Items {
			if ns.Name != ProbeNamespace && ns.DeletionTimestamp == nil && ns.Status.Phase != corev1.NamespaceTerminating {
				names = append(names, ns.Name)
			}
		}
		if len(names) == 0 {
			r.row(CheckInjection, c, StatusSkipped, "no namespace labelled %s=enabled", InjectionLabel)
			continue
		}
		sort.Strings(names)
		ns := names[0]
		r.say("dry-run pod in %s/%s (the API server calls the injection webhook)", c.Name(), ns)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "isthmus-check-", Namespace: ns, Labels: map[string]string{"app": "isthmus-check"}},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{
				Name: "check", Image: image, Args: []string{"version"},
				SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](probeUID), RunAsGroup: ptr.To[int64](probeUID), RunAsNonRoot: ptr.To(true)},
			}}},
		}
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			r.find(Finding{Code: CodeInjectionUnavailable, Severity: SeverityError, Cluster: c.Name(), Subject: "namespace " + ns,
				Message: fmt.Sprintf("the API server of cluster %s refused a dry-run pod in namespace %s: %s; with the webhook's failurePolicy Fail, every new pod of the namespaces labelled for injection is refused", c.Name(), ns, oneLine(err)),
				Fix:     fmt.Sprintf("the API server must reach the webhook: the istiod Service in %s (in a remote cluster its endpoints are the primary's east-west gateway, port 15017) and the caBundle of MutatingWebhookConfiguration istio-sidecar-injector: kubectl --context %s get endpointslices -n %s -l kubernetes.io/service-name=istiod", r.mesh.Namespace, ctxName(c), r.mesh.Namespace)})
			r.row(CheckInjection, c, StatusError, "dry-run pod in %s refused", ns)
			continue
		}
		injected := false
		for _, ctr := range got.Spec.Containers {
			injected = injected || ctr.Name == inject.ProxyName
		}
		if !injected {
			r.find(Finding{Code: CodeInjectionNotApplied, Severity: SeverityError, Cluster: c.Name(), Subject: "namespace " + ns,
				Message: fmt.Sprintf("a dry-run pod in namespace %s of cluster %s came back without the %s container: pods there start without a proxy (the webhook was not called, or failed with failurePolicy Ignore)", ns, c.Name(), inject.ProxyName),
				Fix:     fmt.Sprintf("kubectl --context %s get mutatingwebhookconfiguration istio-sidecar-injector -o yaml: its namespaceSelector must select %s=enabled, and its service must answer (see the API server's log for webhook errors)", ctxName(c), InjectionLabel)})
			r.row(CheckInjection, c, StatusError, "dry-run pod in %s not injected", ns)
			continue
		}
		r.row(CheckInjection, c, StatusOK, "dry-run pod in %s injected", ns)
	}
}
