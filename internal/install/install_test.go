package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/validation"
)

const examples = "../../examples/primary-remote-multinetwork"

func load(t *testing.T, sets []string, files ...string) *Loaded {
	t.Helper()
	for i, f := range files {
		files[i] = filepath.Join(examples, f)
	}
	l, err := Load(files, sets)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// objects indexes rendered objects by "Kind namespace/name".
func objects(t *testing.T, l *Loaded) map[string]*unstructured.Unstructured {
	t.Helper()
	parts, err := Render(l)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*unstructured.Unstructured{}
	for _, p := range parts {
		for _, o := range p.Objects {
			out[describeObj(o)] = o
		}
	}
	return out
}

func has(t *testing.T, objs map[string]*unstructured.Unstructured, names ...string) {
	t.Helper()
	for _, n := range names {
		if objs[n] == nil {
			keys := make([]string, 0, len(objs))
			for k := range objs {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			t.Errorf("no %s among %s", n, strings.Join(keys, ", "))
		}
	}
}

func TestSeedFilesRender(t *testing.T) {
	primary := load(t, nil, "cluster-eks-primary.yaml")
	if len(primary.Warnings) > 0 {
		t.Errorf("warnings for the seed's primary file: %v", primary.Warnings)
	}
	objs := objects(t, primary)
	has(t, objs, "Deployment istio-system/istiod", "Service istio-system/istiod", "ServiceAccount istio-system/istiod",
		"ConfigMap istio-system/istio", "ClusterRole istiod-clusterrole-istio-system", "Role istio-system/istiod",
		"MutatingWebhookConfiguration istio-sidecar-injector", "ServiceAccount istio-system/istio-reader-service-account",
		"ClusterRole istio-reader-clusterrole-istio-system", "Deployment istio-system/istio-ingressgateway",
		"Service istio-system/istio-ingressgateway", "Role istio-system/istio-ingressgateway-sds",
		"CustomResourceDefinition gateways.networking.istio.io", "CustomResourceDefinition virtualservices.networking.istio.io")
	env, _, _ := unstructured.NestedSlice(objs["Deployment istio-system/istiod"].Object, "spec", "template", "spec", "containers")
	s := toString(env)
	for _, want := range []string{"CLUSTER_ID", "cluster-eks", "NETWORK", "network1"} {
		if !strings.Contains(s, want) {
			t.Errorf("istiod container lacks %s: %s", want, s)
		}
	}
	mesh, _, _ := unstructured.NestedString(objs["ConfigMap istio-system/istio"].Object, "data", "mesh")
	if !strings.Contains(mesh, "meshId: mesh1") || !strings.Contains(mesh, "trustDomain: cluster.local") {
		t.Errorf("mesh config:\n%s", mesh)
	}

	ew := load(t, nil, "east-west-gateway-cluster-eks.yaml")
	if len(ew.Warnings) > 0 {
		t.Errorf("warnings for the seed's east-west file: %v", ew.Warnings)
	}
	objs = objects(t, ew)
	if len(objs) != 5 {
		t.Errorf("profile empty with one gateway: %d objects, want 5 (no CRDs, no control plane)", len(objs))
	}
	svc := objs["Service istio-system/istio-eastwestgateway"]
	if svc == nil {
		t.Fatal("no east-west Service")
	}
	if a := svc.GetAnnotations()["service.beta.kubernetes.io/aws-load-balancer-type"]; a != "“nlb”" {
		t.Errorf("service annotation %q", a)
	}
	if typ, _, _ := unstructured.NestedString(svc.Object, "spec", "type"); typ != "LoadBalancer" {
		t.Errorf("service type %s", typ)
	}
	if _, has := svc.Object["spec"].(map[string]any)["loadBalancerSourceRanges"]; has {
		t.Errorf("source ranges nobody asked for: %v", svc.Object["spec"])
	}
	// Who may reach the gateway: the cloud turns the ranges into firewall rules.
	seed, err := os.ReadFile(filepath.Join(examples, "east-west-gateway-cluster-eks.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	fenced, err := Load([]string{writeFile(t, strings.Replace(string(seed), "          service:\n",
		"          service:\n            loadBalancerSourceRanges: [198.18.2.1/32]\n            externalTrafficPolicy: Local\n", 1))}, nil)
	if err != nil || len(fenced.Warnings) > 0 {
		t.Fatalf("%v %v", err, fenced.Warnings)
	}
	spec := objects(t, fenced)["Service istio-system/istio-eastwestgateway"].Object["spec"].(map[string]any)
	if s := toString(spec); !strings.Contains(s, `"loadBalancerSourceRanges":["198.18.2.1/32"]`) || !strings.Contains(s, `"externalTrafficPolicy":"Local"`) || !strings.Contains(s, "15443") {
		t.Errorf("gateway Service spec: %s", s)
	}
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(ports) != 4 || !strings.Contains(toString(ports), "15443") {
		t.Errorf("ports %v", ports)
	}
	if svc.GetLabels()["topology.istio.io/network"] != "network1" {
		t.Errorf("labels %v", svc.GetLabels())
	}
	dep := objs["Deployment istio-system/istio-eastwestgateway"]
	tmpl, _, _ := unstructured.NestedMap(dep.Object, "spec", "template")
	if s := toString(tmpl); !strings.Contains(s, `"inject.istio.io/templates":"gateway"`) || !strings.Contains(s, "ISTIO_META_REQUESTED_NETWORK_VIEW") {
		t.Errorf("gateway pod template: %s", s)
	}

	remote := load(t, []string{"values.global.remotePilotAddress=198.18.1.10"}, "cluster-aks-remote.yaml")
	objs = objects(t, remote)
	has(t, objs, "Service istio-system/istiod", "EndpointSlice istio-system/istiod", "MutatingWebhookConfiguration istio-sidecar-injector",
		"ServiceAccount istio-system/istio-reader-service-account", "ClusterRoleBinding istio-reader-clusterrole-istio-system",
		"CustomResourceDefinition gateways.networking.istio.io")
	if objs["Deployment istio-system/istiod"] != nil {
		t.Error("the remote profile runs no control plane")
	}
	if s := toString(objs["EndpointSlice istio-system/istiod"].Object); !strings.Contains(s, "198.18.1.10") || !strings.Contains(s, "15017") {
		t.Errorf("istiod endpoints: %s", s)
	}
	if objs["Role istio-system/istio-reader-istiod-endpoints"] != nil {
		t.Error("with an IP remotePilotAddress the primary needs no right to rewrite the remote's istiod endpoints")
	}

	// A load balancer's DNS name (EKS): the slice carries the name and no
	// endpoints (the primary's control plane writes them), and the reader
	// account may update that one slice.
	byName := objects(t, load(t, []string{"values.global.remotePilotAddress=a1b2-eks.elb.example.com"}, "cluster-aks-remote.yaml"))
	slice := byName["EndpointSlice istio-system/istiod"]
	if _, has := slice.Object["endpoints"]; has || slice.GetAnnotations()["isthmus.io/remote-pilot-address"] != "a1b2-eks.elb.example.com" {
		t.Errorf("istiod endpoints for a DNS name: %s", toString(slice.Object))
	}
	for k, v := range slice.GetLabels() {
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			t.Errorf("label %s=%s: %v", k, v, errs)
		}
	}
	role := byName["Role istio-system/istio-reader-istiod-endpoints"]
	binding := byName["RoleBinding istio-system/istio-reader-istiod-endpoints"]
	if role == nil || binding == nil {
		t.Fatalf("no Role and RoleBinding letting the primary follow the name: %v", byName)
	}
	if s := toString(role.Object["rules"]); s != `[{"apiGroups":["discovery.k8s.io"],"resourceNames":["istiod"],"resources":["endpointslices"],"verbs":["update","patch"]}]` {
		t.Errorf("the Role grants %s", s)
	}
	if s := toString(binding.Object["subjects"]); !strings.Contains(s, "istio-reader-service-account") {
		t.Errorf("the RoleBinding binds %s", s)
	}
	// The Role's update is narrowed to the endpoints: relabelling the
	// slice would make its addresses another Service's.
	vap := byName["ValidatingAdmissionPolicy istio-reader-istiod-endpoints-istio-system"]
	if vap == nil || byName["ValidatingAdmissionPolicyBinding istio-reader-istiod-endpoints-istio-system"] == nil {
		t.Fatalf("no admission policy narrowing the Role: %v", byName)
	}
	if s := toString(vap.Object["spec"]); !strings.Contains(s, "system:serviceaccount:istio-system:istio-reader-service-account") ||
		!strings.Contains(s, "object.metadata.labels == oldObject.metadata.labels") || !strings.Contains(s, `"failurePolicy":"Fail"`) {
		t.Errorf("policy %s", s)
	}
	hooks, _, _ := unstructured.NestedSlice(objs["MutatingWebhookConfiguration istio-sidecar-injector"].Object, "webhooks")
	if s := toString(hooks); !strings.Contains(s, `"path":"/inject/cluster/cluster-aks/net/network2"`) || !strings.Contains(s, `"name":"istiod"`) || strings.Contains(s, "caBundle") {
		t.Errorf("remote webhook: %s", s)
	}
}

// toString is v as compact JSON, to look for fields in.
func toString(v any) string { b, _ := json.Marshal(v); return string(b) }

// writeFile puts an IstioOperator file in t's temporary directory.
func writeFile(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "op.yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadInput(t *testing.T) {
	write := func(s string) string { return writeFile(t, s) }
	head := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"

	l, err := Load([]string{write(head + "spec:\n  profile: minimal\n  meshConfig:\n    enableStatusMessage: true\n  values:\n    global:\n      network: n1\n      logging: {level: debug}\n    pilot:\n      traceSampling: 100\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"spec.meshConfig.enableStatusMessage", "spec.values.global.logging", "spec.values.pilot.traceSampling"} {
		if !slices.ContainsFunc(l.Warnings, func(w string) bool { return strings.HasPrefix(w, want+":") }) {
			t.Errorf("no warning naming %s in %q", want, l.Warnings)
		}
	}
	mesh := objects(t, l)["ConfigMap istio-system/istio"]
	if s, _, _ := unstructured.NestedString(mesh.Object, "data", "mesh"); !strings.Contains(s, "enableStatusMessage: true") {
		t.Errorf("unsupported meshConfig fields must still reach the ConfigMap:\n%s", s)
	}

	for _, tc := range []struct{ doc, says string }{
		{head + "spec:\n  components:\n    ingressGateways:\n    - name: gw\n      enabled: maybe\n", "spec.components.ingressGateways[0].enabled: want true or false"},
		{head + "spec:\n  values:\n    global:\n      meshID: [a]\n", "spec.values.global.meshID: want a string"},
		{head + "spec:\n  profile: remote\n", "needs spec.values.global.remotePilotAddress"},
		{head + "spec:\n  profile: remote\n  values:\n    global:\n      remotePilotAddress: https://gw.example.com:15012\n", "want an IP address or a DNS name"},
		{head + "spec:\n  profile: demo\n", `spec.profile "demo": isthmus knows the profiles default, empty, minimal, remote`},
		{"apiVersion: v1\nkind: ConfigMap\n", "want install.istio.io/v1alpha1"},
		{head + "spec:\n  components:\n    ingressGateways:\n    - name: gw\n      k8s: {service: {loadBalancerSourceRanges: [10.1.2.3]}}\n", `loadBalancerSourceRanges: "10.1.2.3" is not a CIDR`},
		{head + "spec:\n  components:\n    ingressGateways:\n    - name: gw\n      k8s: {service: {externalTrafficPolicy: local}}\n", `externalTrafficPolicy "local": want Cluster or Local`},
		{head + "spec:\n  values:\n    global:\n      multiCluster: {clusterName: Cluster_EKS}\n", "clusterName \"Cluster_EKS\""},
		{head + "spec:\n  meshConfig:\n    accessLogEncoding: YAML\n", `accessLogEncoding "YAML": want TEXT or JSON`},
		{head + "spec:\n  meshConfig:\n    outboundTrafficPolicy: {mode: DENY}\n", `outboundTrafficPolicy.mode "DENY"`},
	} {
		_, err := Load([]string{write(tc.doc)}, nil)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%q: got %v, want an error saying %q", tc.doc, err, tc.says)
		}
	}
}

func TestOverlaysAndSet(t *testing.T) {
	l := load(t, []string{"values.global.network=network9", "components.ingressGateways[0].enabled=false"},
		"cluster-eks-primary.yaml", "east-west-gateway-cluster-eks.yaml")
	if l.Spec.Values.Global.Network != "network9" || l.Spec.Values.Global.MultiCluster.ClusterName != "cluster-eks" {
		t.Errorf("merged values %+v", l.Spec.Values.Global)
	}
	if l.ProfileName() != "empty" {
		t.Errorf("profile %s: the later file wins", l.ProfileName())
	}
	if gws := l.gateways(); len(gws) != 0 {
		t.Errorf("gateway disabled by --set still rendered: %v", gws)
	}
	if _, err := Load([]string{filepath.Join(examples, "cluster-eks-primary.yaml")}, []string{"components.ingressGateways[3].enabled=false"}); err == nil {
		t.Error("--set of a list element that does not exist must fail")
	}
	// One past the end appends, as in Helm: the guide opens a gateway to
	// another cluster's egress ranges this way.
	fenced := load(t, []string{"components.ingressGateways[0].k8s.service.loadBalancerSourceRanges[0]=198.18.2.0/24",
		"components.ingressGateways[0].k8s.service.loadBalancerSourceRanges[1]=203.0.113.7/32"}, "east-west-gateway-cluster-eks.yaml")
	if svc := fenced.gateways()[0].K8s.Service; !slices.Equal(svc.LoadBalancerSourceRanges, []string{"198.18.2.0/24", "203.0.113.7/32"}) || len(svc.Ports) != 4 {
		t.Errorf("--set appended %+v", svc)
	}
	if _, err := Load([]string{filepath.Join(examples, "east-west-gateway-cluster-eks.yaml")}, []string{"components.ingressGateways[0].k8s.service.loadBalancerSourceRanges[1]=198.18.2.0/24"}); err == nil {
		t.Error("--set two past the end must fail")
	}
}

// The control plane reads the mesh config when it starts: its pods carry
// a digest of it, so an install that changes meshConfig rolls them and
// one that changes nothing does not.
func TestMeshConfigChangeRollsTheControlPlane(t *testing.T) {
	digest := func(sets ...string) string {
		d := objects(t, load(t, sets, "cluster-eks-primary.yaml"))["Deployment istio-system/istiod"]
		if d == nil {
			t.Fatal("no istiod Deployment")
		}
		v, _, _ := unstructured.NestedString(d.Object, "spec", "template", "metadata", "annotations", AnnotationMeshConfig)
		return v
	}
	a, b := digest(), digest()
	c := digest("meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY")
	if a == "" || a != b || a == c {
		t.Errorf("mesh config digests: %q, again %q, REGISTRY_ONLY %q", a, b, c)
	}
}

// An egress gateway, as Istio's egress-gateway task installs it: a
// ClusterIP Service on Istio's ports, labels istio=egressgateway, the
// gateway template; a bad name refused under its own field.
func TestEgressGateway(t *testing.T) {
	head := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: empty\n  components:\n    egressGateways:\n"
	l, err := Load([]string{writeFile(t, head+"    - name: istio-egressgateway\n      enabled: true\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) > 0 {
		t.Errorf("warnings for an egress gateway: %q", l.Warnings)
	}
	objs := objects(t, l)
	has(t, objs, "Deployment istio-system/istio-egressgateway", "Service istio-system/istio-egressgateway", "ServiceAccount istio-system/istio-egressgateway-service-account")
	svc := objs["Service istio-system/istio-egressgateway"]
	if typ, _, _ := unstructured.NestedString(svc.Object, "spec", "type"); typ != "ClusterIP" {
		t.Errorf("egress gateway Service type %q, want ClusterIP", typ)
	}
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(ports) != 2 || ports[0].(map[string]any)["name"] != "http2" || ports[1].(map[string]any)["targetPort"] != int64(8443) {
		t.Errorf("egress gateway ports %v", ports)
	}
	if sel, _, _ := unstructured.NestedStringMap(svc.Object, "spec", "selector"); sel["istio"] != "egressgateway" {
		t.Errorf("egress gateway selector %v", sel)
	}
	if _, err := Load([]string{writeFile(t, head+"    - name: Egress_GW\n")}, nil); err == nil || !strings.Contains(err.Error(), "spec.components.egressGateways[0].name") {
		t.Errorf("a bad egress gateway name: %v", err)
	}
	both := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: empty\n  components:\n    ingressGateways: [{name: gw}]\n    egressGateways: [{name: gw}]\n"
	if _, err := Load([]string{writeFile(t, both)}, nil); err == nil || !strings.Contains(err.Error(), "an ingress gateway has that name") {
		t.Errorf("an egress gateway named as an ingress gateway: %v", err)
	}
}

// The meshConfig fields the control plane acts on are not warned about.
func TestMeshConfigActedOn(t *testing.T) {
	l, err := Load([]string{writeFile(t, "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  meshConfig:\n"+
		"    outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n    accessLogFile: /dev/stdout\n    accessLogEncoding: JSON\n"+
		"    defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}, gatewayTopology: {numTrustedProxies: 1}}\n")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Warnings) > 0 {
		t.Errorf("warnings for fields the control plane reads: %q", l.Warnings)
	}
}

// A tracing provider isthmus's proxies can export to is taken; one they
// cannot is warned about, and naming it as the default is refused.
func TestTracingProviders(t *testing.T) {
	head := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: minimal\n  values: {global: {network: n1}}\n  meshConfig:\n"
	l, err := Load([]string{writeFile(t, head+`    defaultConfig: {tracing: {sampling: 100}}
    extensionProviders:
    - {name: otel, opentelemetry: {service: collector.observability.svc.cluster.local, port: 4317, grpc: {timeout: 3s}}}
    - {name: zipkin, zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}}
    defaultProviders: {tracing: [otel]}
`)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(l.Warnings, func(w string) bool { return strings.HasPrefix(w, "spec.meshConfig.extensionProviders[1].zipkin:") }) || len(l.Warnings) != 1 {
		t.Errorf("warnings %q: want the zipkin provider named, alone", l.Warnings)
	}
	for doc, want := range map[string]string{
		"    extensionProviders: [{name: z, zipkin: {service: z, port: 9411}}]\n    defaultProviders: {tracing: [z]}\n": `defaultProviders.tracing[0] "z": no opentelemetry extension provider`,
		"    extensionProviders: [{name: o, opentelemetry: {service: c}}]\n":                                            "opentelemetry needs a service and a port",
		"    defaultConfig: {tracing: {sampling: 150}}\n":                                                               "sampling 150: want a percentage",
	} {
		if _, err := Load([]string{writeFile(t, head+doc)}, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", doc, err, want)
		}
	}
}

// The control plane scales as Istio's chart scales istiod: an autoscaler
// from 1 to 5 by default (the Deployment's replicas its own), a floor of
// replicas kept through disruptions, fixed replicas without autoscaling
// (and the autoscaler of an earlier install removed).
func TestControlPlaneReplicas(t *testing.T) {
	head := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: minimal\n"
	render := func(spec string) (*Loaded, map[string]*unstructured.Unstructured, []string) {
		t.Helper()
		l, err := Load([]string{writeFile(t, head+spec)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		parts, err := Render(l)
		if err != nil {
			t.Fatal(err)
		}
		var absent []string
		for _, p := range parts {
			for _, o := range p.Absent {
				absent = append(absent, describeObj(o))
			}
		}
		return l, objects(t, l), absent
	}
	const hpa, pdb, deploy = "HorizontalPodAutoscaler istio-system/istiod", "PodDisruptionBudget istio-system/istiod", "Deployment istio-system/istiod"
	nested := func(o *unstructured.Unstructured, path ...string) any {
		v, _, _ := unstructured.NestedFieldNoCopy(o.Object, path...)
		return v
	}

	_, objs, absent := render("")
	if _, set := objs[deploy].Object["spec"].(map[string]any)["replicas"]; set {
		t.Error("with an autoscaler the Deployment must leave replicas to it")
	}
	if objs[hpa] == nil || nested(objs[hpa], "spec", "minReplicas") != int64(1) || nested(objs[hpa], "spec", "maxReplicas") != int64(5) ||
		nested(objs[hpa], "spec", "metrics") == nil || objs[pdb] != nil || !slices.Equal(absent, []string{pdb}) {
		t.Errorf("default: autoscaler %v, disruption budget %v, absent %v", objs[hpa], objs[pdb], absent)
	}
	containers, _, _ := unstructured.NestedSlice(objs[deploy].Object, "spec", "template", "spec", "containers")
	if cpu, _, _ := unstructured.NestedString(containers[0].(map[string]any), "resources", "requests", "cpu"); cpu != "500m" {
		t.Errorf("discovery's CPU request %q, want Istio's 500m (the autoscaler's utilization is of it)", cpu)
	}
	role := objs["Role istio-system/istiod"]
	if rules, _ := json.Marshal(nested(role, "rules")); !strings.Contains(string(rules), `"coordination.k8s.io"`) {
		t.Errorf("istiod's Role cannot hold the leader Lease: %s", rules)
	}

	_, objs, _ = render("  values:\n    pilot: {autoscaleMin: 2, autoscaleMax: 4, cpu: {targetAverageUtilization: 60}}\n")
	if nested(objs[hpa], "spec", "minReplicas") != int64(2) || objs[pdb] == nil || nested(objs[pdb], "spec", "minAvailable") != int64(1) {
		t.Errorf("autoscaleMin 2: autoscaler %v, disruption budget %v", objs[hpa], objs[pdb])
	}

	_, objs, absent = render("  values:\n    pilot: {autoscaleEnabled: false}\n  components:\n    pilot:\n      k8s: {replicaCount: 3}\n")
	if nested(objs[deploy], "spec", "replicas") != int64(3) || objs[hpa] != nil || objs[pdb] == nil || !slices.Equal(absent, []string{hpa}) {
		t.Errorf("3 fixed replicas: replicas %v, autoscaler %v, disruption budget %v, absent %v", nested(objs[deploy], "spec", "replicas"), objs[hpa], objs[pdb], absent)
	}

	l, objs, _ := render("  components:\n    pilot:\n      k8s: {replicaCount: 2}\n")
	if nested(objs[deploy], "spec", "replicas") != int64(2) || !slices.ContainsFunc(l.Warnings, func(w string) bool {
		return strings.Contains(w, "components.pilot.k8s.replicaCount 2") && strings.Contains(w, "autoscaleMin")
	}) {
		t.Errorf("replicaCount under an autoscaler: replicas %v, warnings %q", nested(objs[deploy], "spec", "replicas"), l.Warnings)
	}

	for spec, want := range map[string]string{
		"  values:\n    pilot: {autoscaleMin: 3, autoscaleMax: 2}\n":                                          "want 1 <= autoscaleMin <= autoscaleMax",
		"  values:\n    pilot: {autoscaleEnabled: false, replicaCount: 0}\n":                                  "want at least 1",
		"  values:\n    pilot: {cpu: {targetAverageUtilization: 150}}\n":                                      "1 to 100",
		"  values:\n    pilot: {autoscaleEnabled: false}\n  components: {pilot: {k8s: {replicaCount: -1}}}\n": "want at least 1",
	} {
		if _, err := Load([]string{writeFile(t, head+spec)}, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
}
