package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// operationsArea checks the operator's tools on the running mesh:
// analyze, the validation webhook, bad install input, uninstall and install.
func operationsArea(t *testing.T, w *walkthrough) {
	e := w.e
	kc := w.kc

	t.Run("remote-clusters: the control plane's own cluster and cluster-aks, each synced", func(t *testing.T) {
		r := isthmus(t, time.Minute, append([]string{"remote-clusters", "--context", "cluster-eks"}, kc...)...)
		if r.err != nil {
			t.Fatalf("%v\n%s", r.err, r.stderr)
		}
		rows := map[string][]string{}
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
			f := strings.Fields(l)
			rows[f[0]] = f
		}
		if f := rows["cluster-eks"]; len(f) != 3 || f[1] != "synced" || !strings.HasPrefix(f[2], "istiod-") {
			t.Errorf("cluster-eks row %q:\n%s", f, r.stdout)
		}
		if f := rows["cluster-aks"]; len(f) != 4 || !strings.HasSuffix(f[1], "istio-remote-secret-cluster-aks") || f[2] != "synced" {
			t.Errorf("cluster-aks row %q:\n%s", f, r.stdout)
		}
	})

	t.Run("analyze: references across both clusters, findings named the Istio way", func(t *testing.T) {
		r := isthmus(t, time.Minute, append([]string{"analyze", "--context", "cluster-eks"}, kc...)...)
		if r.err != nil || !strings.Contains(r.stdout, "No validation issues found") || !strings.Contains(r.stdout, "cluster-aks") {
			t.Fatalf("the walkthrough's configuration: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		// v2 exists only in cluster-aks: fine. v3 exists nowhere; "profiles" is a typo.
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile-check, namespace: multicluster}
spec:
  host: profile
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: profile-check, namespace: multicluster}
spec:
  hosts: [profile-check]
  http:
  - route: [{destination: {host: profile, subset: v2}}, {destination: {host: profile, subset: v3}}, {destination: {host: profiles}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule/profile-check", "virtualservice/profile-check")
		r = isthmus(t, time.Minute, append([]string{"analyze", "--context", "cluster-eks"}, kc...)...)
		var ee *exec.ExitError
		if !errors.As(r.err, &ee) || ee.ExitCode() != 79 {
			t.Errorf("exit %v, want 79 for errors found", r.err)
		}
		for _, want := range []string{
			`Error [IST0101] (VirtualService profile-check.multicluster) Referenced host+subset in destinationrule not found: "profile+v3"`,
			`Error [IST0101] (VirtualService profile-check.multicluster) Referenced host not found: "profiles"`,
			`Warning [IST0127] (DestinationRule profile-check.multicluster) Subset "v9" matches no pod`,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("analyze does not say %q:\n%s", want, r.stdout)
			}
		}
		if strings.Contains(r.stdout, `"v2"`) || strings.Contains(r.stdout, "profile+v2") {
			t.Errorf("subset v2 has pods in cluster-aks; analyze must see them:\n%s", r.stdout)
		}
		// Files: validated first (offline, the webhook's checks), then
		// analyzed over the clusters: a Gateway selecting no gateway pod.
		f := filepath.Join(t.TempDir(), "mistakes.yaml")
		os.WriteFile(f, []byte(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: nowhere, namespace: multicluster}
spec:
  selector: {istio: ingressgateway-typo}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: multicluster}
spec:
  hosts: [profile]
  http:
  - timeout: 5 seconds
    route: [{destination: {host: profile}}]
`), 0o644)
		r = isthmus(t, time.Minute, append([]string{"analyze", "-f", f, "--context", "cluster-eks"}, kc...)...)
		for _, want := range []string{
			`Error [IST0106] (VirtualService broken.multicluster) Schema validation error: spec.http[0].timeout:`,
			`Error [IST0101] (Gateway nowhere.multicluster) Referenced selector not found: "istio=ingressgateway-typo"`,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("analyze -f does not say %q:\n%s", want, r.stdout)
			}
		}
		r = isthmus(t, time.Minute, "analyze", "-f", f, "--use-kube=false")
		if !strings.Contains(r.stdout, "IST0106") || strings.Contains(r.stdout, "IST0101") {
			t.Errorf("analyze -f --use-kube=false validates without the clusters:\n%s", r.stdout)
		}
	})

	t.Run("validation webhook: what Istio refuses is refused with the field named; the rest passes, unsupported fields with a warning", func(t *testing.T) {
		vs := func(http string) string {
			return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: check, namespace: multicluster}\nspec:\n  hosts: [profile]\n  http:\n" + http
		}
		ap := func(spec string) string {
			return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: check, namespace: multicluster}\nspec:\n" + spec
		}
		gw := func(servers string) string {
			return "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: check, namespace: multicluster}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n" + servers
		}
		dr := func(spec string) string {
			return "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: check, namespace: multicluster}\nspec:\n  host: profile\n" + spec
		}
		route := "    route: [{destination: {host: profile}}]\n"
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "--ignore-not-found", "virtualservice/check", "authorizationpolicy/check", "gateway/check", "destinationrule/check")
		refused := []struct{ doc, field string }{
			{vs("  - timeout: 5 seconds\n" + route), "timeout"},
			{vs("  - route: [{destination: {host: profile}, weight: -5}]\n"), "weight"},
			{vs("  - retries: {attempts: -1}\n" + route), "attempts"},
			{vs("  - retries: {attempts: 2, retryOn: \"5xx,sometimes\"}\n" + route), "spec.http[0].retries.retryOn"},
			{vs("  - fault: {abort: {httpStatus: 503, percentage: {value: 140}}}\n" + route), "percentage"},
			{vs("  - fault: {abort: {httpStatus: 99, percentage: {value: 10}}}\n" + route), "spec.http[0].fault.abort.httpStatus"},
			{vs("  - match: [{uri: {regex: \"(unclosed\"}}]\n" + route), "spec.http[0].match[0].uri.regex"},
			{"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: check, namespace: multicluster}\nspec:\n  hosts: [\"*\"]\n  http:\n  - route: [{destination: {host: profile}}]\n", "spec.hosts[0]"},
			{gw("  - port: {number: 80, name: http, protocol: HTTP}\n"), "hosts"},
			{gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [shop.example.com]\n"), "spec.servers[0].tls"},
			{ap("  action: PERMIT\n"), "action"},
			{ap("  rules:\n  - from: [{source: {ipBlocks: [300.1.2.3]}}]\n"), "ipBlocks"},
			{ap("  rules:\n  - when: [{key: request.colour, values: [red]}]\n"), "spec.rules[0].when[0].key"},
			{dr("  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]\n"), "spec.subsets[1].name"},
			{dr("  trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}\n"), "maxEjectionPercent"},
		}
		// kubectl apply, stdout and stderr (warnings) together.
		apply := func(doc string) (string, error) {
			cmd := exec.Command(e.kubectlBin, "--kubeconfig", e.kubeconfig, "--context", "cluster-eks", "apply", "-f", "-")
			cmd.Stdin = strings.NewReader(doc)
			o, err := cmd.CombinedOutput()
			return string(o), err
		}
		for _, c := range refused {
			var o string
			var err error
			eventually(t, "the webhook answers", func() bool {
				o, err = apply(c.doc)
				return err != nil && !strings.Contains(o, "failed calling webhook")
			})
			if !strings.Contains(o, c.field) {
				t.Errorf("refusal does not name %s:\n%s\n%s", c.field, c.doc, o)
			}
			t.Logf("refused: %s", strings.TrimSpace(o))
		}
		// Istio normalizes weights that do not add up to 100: accepted.
		if o, err := apply(vs("  - route: [{destination: {host: profile}, weight: 30}, {destination: {host: profile}, weight: 30}]\n    timeout: 3s\n")); err != nil {
			t.Errorf("a valid VirtualService was refused: %v\n%s", err, o)
		}
		o, err := apply(vs("  - delegate: {name: elsewhere}\n" + route))
		if err != nil || !strings.Contains(o, "spec.http[0].delegate: not supported by isthmus") {
			t.Errorf("an unsupported field is accepted with a warning naming it: %v\n%s", err, o)
		}
		// A kind isthmus does not act on: admitted, and said so at apply
		// time and by analyze (which reads it from the cluster).
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "--ignore-not-found", "envoyfilter/check", "telemetry/check")
		o, err = apply("apiVersion: networking.istio.io/v1alpha3\nkind: EnvoyFilter\nmetadata: {name: check, namespace: multicluster}\nspec:\n  configPatches: []\n" +
			"---\napiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: check, namespace: multicluster}\nspec:\n  accessLogging: [{providers: [{name: envoy}]}]\n")
		if err != nil || !strings.Contains(o, "EnvoyFilter multicluster/check: isthmus's proxy is not Envoy and applies no EnvoyFilter patches") ||
			!strings.Contains(o, "Telemetry multicluster/check: isthmus does not read Telemetry") {
			t.Errorf("kinds isthmus does not act on are admitted with a warning saying so: %v\n%s", err, o)
		}
		r := isthmus(t, time.Minute, append([]string{"analyze", "--context", "cluster-eks"}, w.kc...)...)
		for _, want := range []string{"Warning [ISM0002] (EnvoyFilter check.multicluster) isthmus's proxy is not Envoy", "Warning [ISM0002] (Telemetry check.multicluster) isthmus does not read Telemetry"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("analyze does not say %q:\n%s", want, r.stdout)
			}
		}
	})

	t.Run("bad install input is refused or warned about, by name", func(t *testing.T) {
		r := isthmus(t, time.Minute, append([]string{"install", "-f", filepath.Join(examples, "cluster-aks-remote.yaml"), "--context", "cluster-aks", "-y"}, kc...)...)
		if r.err == nil || !strings.Contains(r.stderr, "values.global.remotePilotAddress") {
			t.Errorf("a remote profile without an address: %v %s", r.err, r.stderr)
		}
		f := filepath.Join(t.TempDir(), "op.yaml")
		os.WriteFile(f, []byte("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: minimal\n  values:\n    global:\n      logAsJson: true\n"), 0o644)
		r = isthmus(t, time.Minute, "manifest", "generate", "-f", f)
		if r.err != nil || !strings.Contains(r.stderr, "spec.values.global.logAsJson: not supported") {
			t.Errorf("an unknown field: %v %s", r.err, r.stderr)
		}
	})

	t.Run("uninstall removes a gateway and install brings it back", func(t *testing.T) {
		gwFile := filepath.Join(examples, "east-west-gateway-cluster-aks.yaml")
		if r := isthmus(t, time.Minute, append([]string{"uninstall", "-f", gwFile, "--context", "cluster-aks", "-y"}, kc...)...); r.err != nil {
			t.Fatal(r.err)
		}
		if _, err := e.clients["cluster-aks"].AppsV1().Deployments("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{}); err == nil {
			t.Error("the gateway Deployment is still there")
		}
		if r := isthmus(t, 5*time.Minute, append([]string{"install", "-f", gwFile, "--context", "cluster-aks", "-y"}, kc...)...); r.err != nil {
			t.Fatal(r.err)
		}
	})
}
