package analyze

import (
	"strings"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/validation"
)

func obj[T any](t *testing.T, y string) T {
	t.Helper()
	var o T
	if err := yaml.UnmarshalStrict([]byte(y), &o); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestAnalyze(t *testing.T) {
	pod := func(ns, name string, labels map[string]string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
	}
	svc := func(ns, name string) corev1.Service {
		return corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	}
	clusters := []Cluster{
		{Name: "cluster-eks", Services: []corev1.Service{svc("mc", "profile"), svc("mc", "accounts")},
			Pods: []corev1.Pod{pod("mc", "profile-1", map[string]string{"app": "profile", "version": "v1"}), pod("istio-system", "gw", map[string]string{"istio": "eastwestgateway"})}},
		// v2 lives only in the remote cluster: not a finding.
		{Name: "cluster-aks", Services: []corev1.Service{svc("mc", "profile")},
			Pods: []corev1.Pod{pod("mc", "profile-2", map[string]string{"app": "profile", "version": "v2"})}},
	}
	cfg := Config{
		VirtualServices: []*networkingv1.VirtualService{ptr(obj[networkingv1.VirtualService](t, `
metadata: {name: profile, namespace: mc}
spec:
  hosts: [profile]
  gateways: [mesh, nope]
  http:
  - route: [{destination: {host: profile, subset: v2}}, {destination: {host: profile, subset: v3}}, {destination: {host: profiles}}]`))},
		DestinationRules: []*networkingv1.DestinationRule{ptr(obj[networkingv1.DestinationRule](t, `
metadata: {name: profile, namespace: mc}
spec:
  host: profile
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v9, labels: {version: v9}}]`)),
			ptr(obj[networkingv1.DestinationRule](t, `
metadata: {name: ghost, namespace: mc}
spec: {host: ghost}`))},
		Gateways: []*networkingv1.Gateway{ptr(obj[networkingv1.Gateway](t, `
metadata: {name: ew, namespace: istio-system}
spec: {selector: {istio: eastwestgateway}}`)), ptr(obj[networkingv1.Gateway](t, `
metadata: {name: ingress, namespace: istio-system}
spec: {selector: {istio: ingressgateway}}`))},
		AuthorizationPolicies: []*securityv1.AuthorizationPolicy{ptr(obj[securityv1.AuthorizationPolicy](t, `
metadata: {name: orphan, namespace: mc}
spec: {selector: {matchLabels: {app: nobody}}}`)), ptr(obj[securityv1.AuthorizationPolicy](t, `
metadata: {name: jwt, namespace: mc}
spec:
  rules:
  - when: [{key: connection.sni, values: [a.example]}]`))},
	}
	var got []string
	for _, m := range Run(cfg, Options{Clusters: clusters}) {
		got = append(got, m.String())
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{
		`Error [IST0101] (VirtualService profile.mc) Referenced gateway not found: "nope"`,
		`Error [IST0101] (VirtualService profile.mc) Referenced host+subset in destinationrule not found: "profile+v3"`,
		`Error [IST0101] (VirtualService profile.mc) Referenced host not found: "profiles"`,
		`Warning [IST0127] (DestinationRule profile.mc) Subset "v9" matches no pod`,
		`Warning [IST0101] (DestinationRule ghost.mc) Referenced host not found: "ghost"`,
		`Error [IST0101] (Gateway ingress.istio-system) Referenced selector not found: "istio=ingressgateway"`,
		`Warning [IST0127] (AuthorizationPolicy orphan.mc) No matching workloads`,
		`Warning [ISM0001] (AuthorizationPolicy jwt.mc) rule 0: when connection.sni not enforced by isthmus; the rule allows nothing (fails closed)`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in:\n%s", want, all)
		}
	}
	if len(got) != 8 {
		t.Errorf("%d findings, want 8 (v1 and v2 subsets, the ew gateway and profile+v2 are fine):\n%s", len(got), all)
	}
	// Offline: only what the files say about each other.
	off := Run(cfg, Options{})
	if len(off) != 3 {
		t.Errorf("offline findings %v, want the gateway and the subset references and the policy not enforced", off)
	}
}

func ptr[T any](v T) *T { return &v }

// TestValidated: what the webhook says becomes findings; rules that fail
// closed are Run's to report (ISM0001), not twice.
func TestValidated(t *testing.T) {
	var got []string
	for _, doc := range []string{
		"apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: f, namespace: mc}\nspec: {}\n",
		"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\nspec:\n  hosts: [a]\n  http:\n  - delegate: {name: d}\n",
		"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: w}\nspec:\n  hosts: [a]\n  http:\n  - route: [{destination: {host: a}}]\n    timeout: 5s0\n",
		"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: mc}\nspec:\n  rules:\n  - when: [{key: connection.sni, values: [a]}]\n",
	} {
		j, _ := yaml.YAMLToJSON([]byte(doc))
		res, ok, err := validation.Object(j)
		if !ok || err != nil {
			t.Fatalf("%v %v", ok, err)
		}
		for _, m := range Validated(res) {
			got = append(got, m.String())
		}
	}
	want := []string{
		"Warning [ISM0002] (EnvoyFilter f.mc) isthmus's proxy is not Envoy and applies no EnvoyFilter patches",
		"Warning [ISM0002] (VirtualService v.default) spec.http[0].delegate: not supported by isthmus; ignored",
		`Error [IST0106] (VirtualService w.default) Schema validation error: spec.http[0].timeout: bad Duration: time: missing unit in duration "5s0"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
