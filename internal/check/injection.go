package check

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/inject"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
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
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, AutomountServiceAccountToken: ptr.To(false), Containers: []corev1.Container{{
				Name: "check", Image: image, Args: []string{"version"}, SecurityContext: securityContext(),
			}}},
		}
		got, err := c.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if _, denied := forbidden(err); denied {
			r.checkFailed(CheckInjection, c, fmt.Errorf("a dry-run pod in namespace %s: %w", ns, err))
			continue
		}
		if err != nil && !r.injectorRefused(ctx, c, err) {
			// Refused, but not by (or for want of) the injection webhook: a
			// ResourceQuota, Pod Security admission, another policy webhook.
			r.find(Finding{Code: CodeCheckFailed, Severity: SeverityWarning, Cluster: c.Name(), Subject: "namespace " + ns,
				Message: fmt.Sprintf("the API server of cluster %s refused the injection check's dry-run pod in namespace %s, not for the injection webhook: %s; this says nothing of injection, which was not checked", c.Name(), ns, oneLine(err)),
				Fix:     fmt.Sprintf("the refusal is the cluster's own (a ResourceQuota, Pod Security admission, another admission webhook or policy), as the message says; pods of %s meet it too. To check injection, label for injection a namespace that admits pods (kubectl --context %s label namespace NS %s=enabled)", ns, ctxName(c), InjectionLabel)})
			r.row(CheckInjection, c, StatusWarning, "dry-run pod in %s refused, not by the injection webhook: not checked", ns)
			continue
		}
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

// webhookNamed are the webhooks an API server's admission error names:
// `failed calling webhook "NAME"` (it could not call it, or timed out) or
// `admission webhook "NAME" denied the request`.
var webhookNamed = regexp.MustCompile(`(?:failed calling webhook|admission webhook) "([^"]+)"`)

// injectorRefused says whether a refusal of the dry-run pod is about the
// injection webhook: the error names one of the injector's webhooks (Istio's
// *sidecar-injector.istio.io, or a webhook of a MutatingWebhookConfiguration
// istio-sidecar-injector*), or names no webhook but says calling one
// failed.
func (r *run) injectorRefused(ctx context.Context, c *Cluster, err error) bool {
	msg := err.Error()
	names := webhookNamed.FindAllStringSubmatch(msg, -1)
	if len(names) == 0 {
		m := strings.ToLower(msg)
		return strings.Contains(m, "failed calling webhook") || strings.Contains(m, "failed to call webhook") || strings.Contains(m, "sidecar-injector")
	}
	var own map[string]bool
	for _, n := range names {
		if strings.HasSuffix(n[1], "sidecar-injector.istio.io") {
			return true
		}
		if own == nil {
			own = injectorWebhooks(ctx, c)
		}
		if own[n[1]] {
			return true
		}
	}
	return false
}

// injectorWebhooks are the webhooks of a cluster's
// MutatingWebhookConfigurations named istio-sidecar-injector (or
// istio-sidecar-injector-REVISION); none when they cannot be read.
func injectorWebhooks(ctx context.Context, c *Cluster) map[string]bool {
	out := map[string]bool{}
	list, err := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
	if err != nil {
		return out
	}
	for _, cfg := range list.Items {
		if cfg.Name != rootcert.WebhookPrefix && !strings.HasPrefix(cfg.Name, rootcert.WebhookPrefix+"-") {
			continue
		}
		for _, h := range cfg.Webhooks {
			out[h.Name] = true
		}
	}
	return out
}
