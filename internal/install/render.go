package install

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remoteistiod"
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/istiocrd"
	"github.com/isthmus-mesh/isthmus/internal/version"
)

// Istio's labels on installed objects; uninstall --purge finds them by these.
const (
	LabelComponent = "operator.istio.io/component"
	LabelOwner     = "install.operator.istio.io/owning-resource"
)

// AnnotationMeshConfig on the control plane's pods is a digest of the
// mesh config it was started with.
const AnnotationMeshConfig = "isthmus.io/mesh-config"

// Components in install order, under Istio's names.
const (
	ComponentBase     = "Base"
	ComponentPilot    = "Pilot"
	ComponentRemote   = "IstiodRemote"
	ComponentGateways = "IngressGateways"
	// ComponentEgressGateways: what calls out of the mesh may be sent
	// through (a ClusterIP Service by default).
	ComponentEgressGateways = "EgressGateways"
)

// Part is one component's objects, applied and awaited together.
type Part struct {
	Component string
	Objects   []*unstructured.Unstructured
	// Absent are objects an earlier file may have made that this one does
	// not (the autoscaler after autoscaleEnabled: false): install deletes
	// them, so they cannot go on acting.
	Absent []*unstructured.Unstructured
}

// Render returns the objects of an install, component by component, in
// the order they must be applied.
func Render(l *Loaded) ([]Part, error) {
	r := renderer{l: l, ns: l.Namespace(), owner: l.Metadata.Name}
	if r.owner == "" {
		r.owner = "unknown"
	}
	return r.render()
}

type renderer struct {
	l     *Loaded
	ns    string
	owner string
	err   error
}

func (r *renderer) render() ([]Part, error) {
	var parts []Part
	add := func(component string, objs []runtime.Object) {
		if len(objs) == 0 {
			return
		}
		p := Part{Component: component}
		for _, o := range objs {
			u := r.unstructured(o)
			labels := u.GetLabels()
			if labels == nil {
				labels = map[string]string{}
			}
			labels[LabelComponent], labels[LabelOwner] = component, r.owner
			u.SetLabels(labels)
			p.Objects = append(p.Objects, u)
		}
		parts = append(parts, p)
	}
	if r.l.enabled("base") {
		objs, err := r.base()
		if err != nil {
			return nil, err
		}
		add(ComponentBase, objs)
	}
	if r.l.enabled("pilot") {
		add(ComponentPilot, r.pilot())
		p := &parts[len(parts)-1]
		for _, gvk := range []metav1.TypeMeta{typeMeta("HorizontalPodAutoscaler", "autoscaling/v2"), typeMeta("PodDisruptionBudget", "policy/v1")} {
			if !slices.ContainsFunc(p.Objects, func(o *unstructured.Unstructured) bool { return o.GetKind() == gvk.Kind }) {
				u := &unstructured.Unstructured{}
				u.SetAPIVersion(gvk.APIVersion)
				u.SetKind(gvk.Kind)
				u.SetName("istiod")
				u.SetNamespace(r.ns)
				p.Absent = append(p.Absent, u)
			}
		}
	}
	if r.l.enabled("istiodRemote") {
		add(ComponentRemote, r.remote())
	}
	var gws, egws []runtime.Object
	for _, g := range r.l.gateways() {
		gws = append(gws, r.gateway(g, false)...)
	}
	add(ComponentGateways, gws)
	for _, g := range r.l.egressGateways() {
		egws = append(egws, r.gateway(g, true)...)
	}
	add(ComponentEgressGateways, egws)
	return parts, r.err
}

func (r *renderer) unstructured(o runtime.Object) *unstructured.Unstructured {
	if u, ok := o.(*unstructured.Unstructured); ok {
		return u
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil && r.err == nil {
		r.err = err
	}
	u := &unstructured.Unstructured{Object: m}
	unstructured.RemoveNestedField(u.Object, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u.Object, "status")
	if v, ok := u.Object["endpoints"]; ok && v == nil {
		// An EndpointSlice whose endpoints someone else writes: applying
		// null would claim the field and clear it on every install.
		delete(u.Object, "endpoints")
	}
	if spec, ok := u.Object["spec"].(map[string]any); ok {
		if tmpl, ok := spec["template"].(map[string]any); ok {
			unstructured.RemoveNestedField(tmpl, "metadata", "creationTimestamp")
		}
	}
	return u
}

// Image is the isthmus image every component runs.
func (l *Loaded) Image() string {
	hub := first(l.Spec.Hub, l.Spec.Values.Global.Hub, "isthmus")
	tag := first(l.Spec.Tag, l.Spec.Values.Global.Tag, version.String())
	return hub + "/isthmus:" + tag
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func typeMeta(kind, apiVersion string) metav1.TypeMeta {
	return metav1.TypeMeta{Kind: kind, APIVersion: apiVersion}
}

// base: Istio's CRDs and the reader account a primary uses to read this
// cluster (create-remote-secret makes a token for it).
func (r *renderer) base() ([]runtime.Object, error) {
	var out []runtime.Object
	for _, doc := range bytes.Split(istiocrd.YAML, []byte("\n---")) {
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("embedded Istio CRDs: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	out = append(out, &corev1.Namespace{TypeMeta: typeMeta("Namespace", "v1"), ObjectMeta: metav1.ObjectMeta{Name: r.ns}})
	sa, role, binding := remotesecret.ReaderObjects(r.ns, remotesecret.ReaderServiceAccount)
	return append(out, sa, role, binding), nil
}

// IstiodLabels select the control plane's pods.
var IstiodLabels = map[string]string{"app": "istiod", "istio": "pilot"}

// pilot: the control plane (istiod's Deployment, Service, RBAC and mesh
// config) and the injection webhook of its own cluster.
func (r *renderer) pilot() []runtime.Object {
	l, ns := r.l, r.ns
	g := l.Spec.Values.Global
	name := "istiod"
	role := "istiod-clusterrole-" + ns
	objs := []runtime.Object{
		&corev1.ServiceAccount{TypeMeta: typeMeta("ServiceAccount", "v1"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}},
		&rbacv1.ClusterRole{TypeMeta: typeMeta("ClusterRole", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: append(remotesecret.ReaderRules(ns),
			// Gateways' credentials (credentialName) may live in any namespace, as istiod reads them.
			rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch"}})},
		&rbacv1.ClusterRoleBinding{TypeMeta: typeMeta("ClusterRoleBinding", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}},
		// The CA keeps its root in istio-ca-secret; the replicas elect the
		// one that writes with a Lease.
		&rbacv1.Role{TypeMeta: typeMeta("Role", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"create", "get", "watch", "list", "update", "delete"}},
				{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"get", "create", "update"}}}},
		&rbacv1.RoleBinding{TypeMeta: typeMeta("RoleBinding", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}},
		&corev1.ConfigMap{TypeMeta: typeMeta("ConfigMap", "v1"), ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: ns},
			Data: map[string]string{"mesh": r.meshConfigYAML(), "meshNetworks": r.meshNetworksYAML()}},
	}
	// The control plane reads the mesh config when it starts: a changed one
	// rolls it, so an install that changes meshConfig takes effect.
	meshSum := sha256.Sum256([]byte(r.meshConfigYAML() + "\x00" + r.meshNetworksYAML()))
	field := func(n, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: n, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
	}
	env := []corev1.EnvVar{field("POD_NAME", "metadata.name"), field("POD_NAMESPACE", "metadata.namespace"),
		{Name: "CLUSTER_ID", Value: first(g.MultiCluster.ClusterName, "Kubernetes")}}
	if g.Network != "" {
		env = append(env, corev1.EnvVar{Name: "NETWORK", Value: g.Network})
	}
	if c := l.Spec.Components.Pilot; c != nil && c.K8s != nil {
		env = append(env, c.K8s.Env...)
	}
	args := []string{"discovery", "--proxy-image", l.Image()}
	if g.Proxy.Privileged != nil && *g.Proxy.Privileged {
		args = append(args, "--proxy-privileged")
	}
	ports := []corev1.ContainerPort{{Name: "grpc-xds", ContainerPort: 15010}, {Name: "tls-istiod", ContainerPort: 15012},
		{Name: "http-monitoring", ContainerPort: 15014}, {Name: "https-webhook", ContainerPort: 15017}}
	for i := range ports {
		ports[i].Protocol = corev1.ProtocolTCP
	}
	replicas, lo, hi := l.replicas()
	// Istio's default requests: an autoscaler's CPU utilization is of them.
	resources := corev1.ResourceRequirements{Requests: corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("2048Mi")}}
	if res := l.Spec.Values.Pilot.Resources; res != nil {
		resources = *res
	}
	podLabels := maps.Clone(IstiodLabels)
	podLabels["sidecar.istio.io/inject"] = "false"
	// Istio's chart labels istiod's pods with their revision; istioctl
	// (version, proxy-status) finds the control plane by it.
	podLabels["istio.io/rev"] = "default"
	objs = append(objs,
		&appsv1.Deployment{TypeMeta: typeMeta("Deployment", "apps/v1"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: IstiodLabels},
			Spec: appsv1.DeploymentSpec{
				Replicas: replicas,
				Selector: &metav1.LabelSelector{MatchLabels: IstiodLabels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: map[string]string{AnnotationMeshConfig: hex.EncodeToString(meshSum[:8])}},
					Spec: corev1.PodSpec{
						ServiceAccountName: name,
						Containers: []corev1.Container{{
							Name: "discovery", Image: l.Image(), Args: args, Env: env, Ports: ports, Resources: resources,
							ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(15014)}},
								PeriodSeconds: 2, TimeoutSeconds: 5, FailureThreshold: 30},
							SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337), RunAsNonRoot: ptr.To(true)},
						}},
					},
				},
			}},
		&corev1.Service{TypeMeta: typeMeta("Service", "v1"), ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: IstiodLabels},
			Spec: corev1.ServiceSpec{Selector: IstiodLabels, Ports: []corev1.ServicePort{
				{Name: "grpc-xds", Port: 15010, TargetPort: intstr.FromInt32(15010), Protocol: corev1.ProtocolTCP},
				{Name: "https-dns", Port: 15012, TargetPort: intstr.FromInt32(15012), Protocol: corev1.ProtocolTCP},
				{Name: "https-webhook", Port: 443, TargetPort: intstr.FromInt32(15017), Protocol: corev1.ProtocolTCP},
				{Name: "http-monitoring", Port: 15014, TargetPort: intstr.FromInt32(15014), Protocol: corev1.ProtocolTCP},
			}}},
		r.injector(admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Name: name, Namespace: ns, Port: ptr.To[int32](443), Path: ptr.To("/inject")}}),
		validator(ns, admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Name: name, Namespace: ns, Port: ptr.To[int32](443), Path: ptr.To("/validate")}}),
	)
	if l.autoscaled() {
		target := ptr.To[int32](80)
		if u := l.Spec.Values.Pilot.CPU.TargetAverageUtilization; u != nil {
			target = u
		}
		objs = append(objs, &autoscalingv2.HorizontalPodAutoscaler{TypeMeta: typeMeta("HorizontalPodAutoscaler", "autoscaling/v2"),
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: IstiodLabels},
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{MinReplicas: &lo, MaxReplicas: hi,
				ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: name},
				Metrics: []autoscalingv2.MetricSpec{{Type: autoscalingv2.ResourceMetricSourceType, Resource: &autoscalingv2.ResourceMetricSource{
					Name: corev1.ResourceCPU, Target: autoscalingv2.MetricTarget{Type: autoscalingv2.UtilizationMetricType, AverageUtilization: target}}}},
			}})
	}
	// A floor of more than one replica keeps one through a node drain, as
	// Istio's chart (its PodDisruptionBudget allows no fewer than one).
	if l.autoscaled() && lo > 1 || !l.autoscaled() && *replicas > 1 {
		objs = append(objs, &policyv1.PodDisruptionBudget{TypeMeta: typeMeta("PodDisruptionBudget", "policy/v1"),
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: IstiodLabels},
			Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: ptr.To(intstr.FromInt32(1)), Selector: &metav1.LabelSelector{MatchLabels: IstiodLabels}}})
	}
	return objs
}

// validator is Istio's istio-validator-<ns>: creates and updates of
// Istio's configuration (every group, kinds isthmus does not act on too,
// so they are warned about) go to the control plane's /validate;
// nothing else does, so a down control plane blocks no other object. It
// starts with failurePolicy Ignore; the control plane sets Fail together
// with the caBundle, once it can be called (as istiod does).
func validator(ns string, cc admissionv1.WebhookClientConfig) *admissionv1.ValidatingWebhookConfiguration {
	return &admissionv1.ValidatingWebhookConfiguration{
		TypeMeta:   typeMeta("ValidatingWebhookConfiguration", "admissionregistration.k8s.io/v1"),
		ObjectMeta: metav1.ObjectMeta{Name: "istio-validator-" + ns, Labels: map[string]string{"app": "istiod", "istio": "istiod", "istio.io/rev": "default"}},
		Webhooks: []admissionv1.ValidatingWebhook{{
			Name: "rev.validation.istio.io", ClientConfig: cc,
			Rules: []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
				Rule: admissionv1.Rule{APIGroups: []string{"networking.istio.io", "security.istio.io", "telemetry.istio.io", "extensions.istio.io"}, APIVersions: []string{"*"}, Resources: []string{"*"}}}},
			FailurePolicy: ptr.To(admissionv1.Ignore), SideEffects: ptr.To(admissionv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"}, TimeoutSeconds: ptr.To[int32](10),
		}},
	}
}

// meshConfigYAML is the file's whole meshConfig with the mesh ID and trust
// domain defaults filled in.
func (r *renderer) meshConfigYAML() string {
	m := map[string]any{}
	if spec, ok := r.l.raw["spec"].(map[string]any); ok {
		if mc, ok := spec["meshConfig"].(map[string]any); ok {
			m = mc
		}
	}
	m = merge(map[string]any{"trustDomain": "cluster.local", "rootNamespace": r.ns,
		"defaultConfig": map[string]any{"discoveryAddress": "istiod." + r.ns + ".svc:15012"}}, m)
	if id := r.l.Spec.Values.Global.MeshID; id != "" && r.l.Spec.MeshConfig.DefaultConfig.MeshID == "" {
		m = merge(m, map[string]any{"defaultConfig": map[string]any{"meshId": id}})
	}
	b, err := yaml.Marshal(m)
	if err != nil && r.err == nil {
		r.err = err
	}
	return string(b)
}

func (r *renderer) meshNetworksYAML() string {
	n := r.l.Spec.Values.Global.MeshNetworks
	if n == nil {
		n = map[string]any{}
	}
	b, err := yaml.Marshal(map[string]any{"networks": n})
	if err != nil && r.err == nil {
		r.err = err
	}
	return string(b)
}

// injector is Istio's istio-sidecar-injector configuration: pods in
// namespaces labelled istio-injection=enabled or istio.io/rev=default, and
// pods labelled sidecar.istio.io/inject=true elsewhere (gateways), except
// those that opt out. Other namespaces never call the webhook, so a down
// control plane cannot block them; the control plane fills in caBundle.
func (r *renderer) injector(cc admissionv1.WebhookClientConfig) *admissionv1.MutatingWebhookConfiguration {
	optOut := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "sidecar.istio.io/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"false"}}}}
	hook := func(name string, ns, obj *metav1.LabelSelector) admissionv1.MutatingWebhook {
		return admissionv1.MutatingWebhook{
			Name: name, ClientConfig: cc,
			Rules: []admissionv1.RuleWithOperations{{Operations: []admissionv1.OperationType{admissionv1.Create},
				Rule: admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}},
			FailurePolicy: ptr.To(admissionv1.Fail), SideEffects: ptr.To(admissionv1.SideEffectClassNone),
			AdmissionReviewVersions: []string{"v1"}, ReinvocationPolicy: ptr.To(admissionv1.NeverReinvocationPolicy),
			TimeoutSeconds: ptr.To[int32](10), NamespaceSelector: ns, ObjectSelector: obj,
		}
	}
	return &admissionv1.MutatingWebhookConfiguration{
		TypeMeta: typeMeta("MutatingWebhookConfiguration", "admissionregistration.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector"},
		Webhooks: []admissionv1.MutatingWebhook{
			hook("rev.namespace.sidecar-injector.istio.io", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "istio.io/rev", Operator: metav1.LabelSelectorOpIn, Values: []string{"default"}},
				{Key: "istio-injection", Operator: metav1.LabelSelectorOpDoesNotExist}}}, optOut),
			hook("namespace.sidecar-injector.istio.io", &metav1.LabelSelector{MatchLabels: map[string]string{"istio-injection": "enabled"}}, optOut),
			hook("object.sidecar-injector.istio.io", &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "istio-injection", Operator: metav1.LabelSelectorOpDoesNotExist},
				{Key: "istio.io/rev", Operator: metav1.LabelSelectorOpDoesNotExist}}},
				&metav1.LabelSelector{MatchLabels: map[string]string{"sidecar.istio.io/inject": "true"}}),
		},
	}
}

// remote: a cluster whose control plane is elsewhere. Its istiod Service
// has no pods: the EndpointSlice points at remotePilotAddress (the
// primary's east-west gateway), so sidecars reach istiod.istio-system.svc
// and the API server reaches the webhook through it, as in Istio. A DNS
// name is followed by the primary's control plane (package remoteistiod)
// where Istio would render an ExternalName Service, which the API server
// cannot call the webhook through.
func (r *renderer) remote() []runtime.Object {
	l, ns := r.l, r.ns
	g := l.Spec.Values.Global
	var objs []runtime.Object
	cc := admissionv1.WebhookClientConfig{URL: ptr.To(l.Spec.Values.IstiodRemote.InjectionURL)}
	if l.Spec.Values.IstiodRemote.InjectionURL == "" {
		path := l.Spec.Values.IstiodRemote.InjectionPath
		if path == "" {
			path = "/inject"
			if g.MultiCluster.ClusterName != "" {
				path += "/cluster/" + g.MultiCluster.ClusterName + "/net/" + g.Network
			}
		}
		cc = admissionv1.WebhookClientConfig{Service: &admissionv1.ServiceReference{Name: "istiod", Namespace: ns, Port: ptr.To[int32](443), Path: ptr.To(path)}}
		slice := &discoveryv1.EndpointSlice{TypeMeta: typeMeta("EndpointSlice", "discovery.k8s.io/v1"),
			ObjectMeta:  metav1.ObjectMeta{Name: "istiod", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: "istiod"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports: []discoveryv1.EndpointPort{{Name: ptr.To("tcp-istiod"), Port: ptr.To[int32](15012), Protocol: ptr.To(corev1.ProtocolTCP)},
				{Name: ptr.To("tcp-webhook"), Port: ptr.To[int32](15017), Protocol: ptr.To(corev1.ProtocolTCP)}}}
		var follow []runtime.Object
		if ip := net.ParseIP(g.RemotePilotAddress); ip != nil {
			if ip.To4() == nil {
				slice.AddressType = discoveryv1.AddressTypeIPv6
			}
			slice.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{g.RemotePilotAddress}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}}
		} else {
			// A DNS name: the primary's control plane writes the endpoints
			// (remoteistiod), so the installer leaves them out of what it
			// applies and owns.
			slice.Annotations = map[string]string{remoteistiod.AnnotationAddress: g.RemotePilotAddress}
			slice.Labels[discoveryv1.LabelManagedBy] = remoteistiod.ManagedBy
			role, binding := remoteistiod.Role(ns, remotesecret.ReaderServiceAccount)
			policy, pbinding := remoteistiod.Policy(ns, remotesecret.ReaderServiceAccount)
			follow = append(follow, role, binding, policy, pbinding)
		}
		objs = append(objs,
			&corev1.Service{TypeMeta: typeMeta("Service", "v1"), ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: ns, Labels: map[string]string{"app": "istiod", "istio": "pilot"}},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
					{Name: "tcp-istiod", Port: 15012, TargetPort: intstr.FromInt32(15012), Protocol: corev1.ProtocolTCP},
					{Name: "tcp-webhook", Port: 443, TargetPort: intstr.FromInt32(15017), Protocol: corev1.ProtocolTCP},
				}}},
			slice,
		)
		objs = append(objs, follow...)
	}
	return append(objs, r.injector(cc))
}

// gateway: a Deployment whose istio-proxy container the injection webhook
// replaces with `isthmus-proxy proxy router` (Istio's gateway injection
// template; the container here is only image "auto", env and ports),
// its Service (LoadBalancer for ingress, ClusterIP for egress, as Istio's
// defaults), account and SDS role.
func (r *renderer) gateway(gw Gateway, egress bool) []runtime.Object {
	l := r.l
	ns := first(gw.Namespace, r.ns)
	labels := gw.Label
	if len(labels) == 0 {
		labels = map[string]string{"app": gw.Name, "istio": strings.TrimPrefix(gw.Name, "istio-")}
	}
	k8s := gw.K8s
	if k8s == nil {
		k8s = &K8s{}
	}
	vals := l.Spec.Values.Gateways.IngressGateway
	svcType, defaults := corev1.ServiceTypeLoadBalancer, ingressGateway.K8s.Service.Ports
	if egress {
		vals, svcType, defaults = GatewayValues{}, corev1.ServiceTypeClusterIP, egressGateway.K8s.Service.Ports
	}
	var ports []corev1.ServicePort
	var spec corev1.ServiceSpec
	if k8s.Service != nil {
		ports = k8s.Service.Ports
		if k8s.Service.Type != "" {
			svcType = k8s.Service.Type
		}
		spec.LoadBalancerSourceRanges, spec.ExternalTrafficPolicy = k8s.Service.LoadBalancerSourceRanges, k8s.Service.ExternalTrafficPolicy
	}
	if len(ports) == 0 {
		ports = defaults
	}
	if vals.Type != "" && (k8s.Service == nil || k8s.Service.Type == "") {
		svcType = vals.Type
	}
	ports = slices.Clone(ports)
	var cports []corev1.ContainerPort
	for i := range ports {
		if ports[i].Protocol == "" {
			ports[i].Protocol = corev1.ProtocolTCP
		}
		if ports[i].TargetPort.IntVal == 0 && ports[i].TargetPort.StrVal == "" {
			ports[i].TargetPort = intstr.FromInt32(ports[i].Port)
		}
		if ports[i].TargetPort.Type == intstr.Int {
			cports = append(cports, corev1.ContainerPort{ContainerPort: ports[i].TargetPort.IntVal, Protocol: ports[i].Protocol})
		}
	}
	annotations := maps.Clone(vals.ServiceAnnotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	maps.Copy(annotations, k8s.ServiceAnnotations)
	podLabels := maps.Clone(labels)
	podLabels["sidecar.istio.io/inject"] = "true"
	podAnnotations := map[string]string{"inject.istio.io/templates": "gateway"}
	maps.Copy(podAnnotations, k8s.PodAnnotations)
	sa := gw.Name + "-service-account"
	replicas := int32(1)
	if k8s.ReplicaCount != nil {
		replicas = *k8s.ReplicaCount
	}
	return []runtime.Object{
		&corev1.ServiceAccount{TypeMeta: typeMeta("ServiceAccount", "v1"), ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: ns, Labels: labels}},
		// Gateways read TLS credentials (credentialName) from Secrets.
		&rbacv1.Role{TypeMeta: typeMeta("Role", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: gw.Name + "-sds", Namespace: ns},
			Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "watch", "list"}}}},
		&rbacv1.RoleBinding{TypeMeta: typeMeta("RoleBinding", "rbac.authorization.k8s.io/v1"), ObjectMeta: metav1.ObjectMeta{Name: gw.Name + "-sds", Namespace: ns},
			RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: gw.Name + "-sds"},
			Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: ns}}},
		&appsv1.Deployment{TypeMeta: typeMeta("Deployment", "apps/v1"), ObjectMeta: metav1.ObjectMeta{Name: gw.Name, Namespace: ns, Labels: labels},
			Spec: appsv1.DeploymentSpec{
				Replicas: &replicas,
				Selector: &metav1.LabelSelector{MatchLabels: labels},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: podLabels, Annotations: podAnnotations},
					Spec: corev1.PodSpec{
						ServiceAccountName: sa,
						// No Kubernetes API token in an internet-facing pod: the
						// gateway's credentials come only over SDS from the control
						// plane (its istio-token, audience istio-ca, is injected).
						AutomountServiceAccountToken: ptr.To(false),
						Containers:                   []corev1.Container{{Name: "istio-proxy", Image: "auto", Env: k8s.Env, Ports: cports}},
					},
				},
			}},
		&corev1.Service{TypeMeta: typeMeta("Service", "v1"), ObjectMeta: metav1.ObjectMeta{Name: gw.Name, Namespace: ns, Labels: labels, Annotations: annotations},
			Spec: corev1.ServiceSpec{Type: svcType, Selector: labels, Ports: ports,
				LoadBalancerSourceRanges: spec.LoadBalancerSourceRanges, ExternalTrafficPolicy: spec.ExternalTrafficPolicy}},
	}
}

// YAML prints parts as one multi-document manifest.
func YAML(parts []Part) ([]byte, error) {
	var buf bytes.Buffer
	for _, p := range parts {
		for _, o := range p.Objects {
			b, err := yaml.Marshal(o.Object)
			if err != nil {
				return nil, err
			}
			buf.WriteString("---\n")
			buf.Write(b)
		}
	}
	return buf.Bytes(), nil
}
