package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// telemetryArea reads the mesh as Kiali and Prometheus do, from the
// metrics alone: the sidecars of both clusters, scraped through the API
// server as Prometheus scrapes pods, give the sleep -> profile edges by
// canonical service, one per cluster that served; and a pod whose
// prometheus.io annotations name its app's metrics is scraped at the
// proxy's 15020, which serves both.
func telemetryArea(t *testing.T, w *walkthrough) {
	e := w.e
	scrape, pods := w.scrape, w.pods

	t.Run("Kiali's edges from the metrics alone: sleep -> profile by canonical service, one per cluster that served", func(t *testing.T) {
		by := w.servedBy(t, 30, "")
		if by["cluster-eks"] == 0 || by["cluster-aks"] == 0 {
			t.Fatalf("answers by cluster %v: want both clusters", by)
		}
		// The client's side (reporter source): sleep's sidecar names each
		// destination cluster.
		edges := map[string]float64{}
		revisions := map[string]string{} // destination cluster -> profile's revision there
		for _, pod := range pods(t, "cluster-eks", "sleep") {
			for _, s := range series(scrape(t, "cluster-eks", pod, 15090, "/stats/prometheus"), "istio_requests_total") {
				l := s.labels
				if l["reporter"] == "source" && l["destination_canonical_service"] == "profile" {
					edges[l["source_canonical_service"]+"/"+l["source_canonical_revision"]+" -> profile @ "+l["destination_cluster"]] += s.value
					revisions[l["destination_cluster"]] = l["destination_canonical_revision"]
				}
			}
		}
		// The seed's profile is v1 in cluster-eks and v2 in cluster-aks;
		// sleep has no version (latest).
		for c, rev := range map[string]string{"cluster-eks": "v1", "cluster-aks": "v2"} {
			if edges["sleep/latest -> profile @ "+c] == 0 || revisions[c] != rev {
				t.Errorf("no sleep -> profile %s edge to %s in sleep's metrics: %v (revisions %v)", rev, c, edges, revisions)
			}
		}
		// The server's side (reporter destination): each cluster's profile
		// saw sleep of cluster-eks.
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			seen := 0.0
			for _, pod := range pods(t, c, "profile") {
				for _, s := range series(scrape(t, c, pod, 15090, "/stats/prometheus"), "istio_requests_total") {
					l := s.labels
					if l["reporter"] == "destination" && l["source_canonical_service"] == "sleep" && l["source_cluster"] == "cluster-eks" &&
						l["destination_canonical_service"] == "profile" && l["destination_cluster"] == c && l["connection_security_policy"] == "mutual_tls" {
						seen += s.value
					}
				}
			}
			if seen == 0 {
				t.Errorf("profile in %s reports no mTLS request from sleep of cluster-eks by canonical service", c)
			}
		}
	})

	t.Run("meshConfig.accessLogFile reaches running sidecars through the control plane, and leaves them when unset", func(t *testing.T) {
		install := func(sets ...string) { w.installPrimary(t, sets...) }
		sleepPod := pods(t, "cluster-eks", "sleep")[0]
		logged := func(id string) bool {
			out, _ := e.kubectl("cluster-eks", "", "-n", "multicluster", "logs", sleepPod, "-c", "istio-proxy", "--since=10m")
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, `"request_id":"`+id+`"`) && strings.Contains(line, `"upstream_cluster":"outbound|8080||profile.multicluster.svc.cluster.local"`) {
					return true
				}
			}
			return false
		}
		call := func(id string) {
			w.sleepExec(t, "curl -sS -o /dev/null --max-time 5 -H 'x-request-id: "+id+"' http://profile:8080/profile?id=1")
		}
		install("meshConfig.accessLogFile=/dev/stdout", "meshConfig.accessLogEncoding=JSON")
		defer install()
		n := 0
		if !eventuallyOK(func() bool { n++; id := fmt.Sprintf("access-on-%d", n); call(id); return logged(id) }) {
			t.Fatalf("sleep's sidecar wrote no JSON access log line for its request after meshConfig.accessLogFile was set")
		}
		install()
		// Once the control plane is back without it, new requests are not logged.
		n = 0
		if !eventuallyOK(func() bool {
			n++
			id := fmt.Sprintf("access-off-%d", n)
			call(id)
			time.Sleep(time.Second)
			return !logged(id)
		}) {
			t.Errorf("requests are still logged after meshConfig.accessLogFile was unset")
		}
		if now := pods(t, "cluster-eks", "sleep")[0]; now != sleepPod {
			t.Errorf("sleep's pod changed (%s -> %s): the setting must reach the running sidecar", sleepPod, now)
		}
	})

	t.Run("a pod's prometheus.io annotations point at the proxy's 15020, which serves the app's metrics with its own", func(t *testing.T) {
		e.apply("cluster-eks", `apiVersion: v1
kind: Service
metadata: {name: metrics-demo, namespace: multicluster}
spec:
  selector: {app: metrics-demo}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: metrics-demo, namespace: multicluster}
spec:
  selector: {matchLabels: {app: metrics-demo}}
  template:
    metadata:
      labels: {app: metrics-demo}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080", prometheus.io/path: /metrics}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: `+walkthroughHub+`/demo-app:e2e
        args: [profile]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
`)
		defer w.rolledOut(t, "metrics-demo")()
		pod := pods(t, "cluster-eks", "metrics-demo")[0]
		ann, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "get", "pod", pod, "-o", `jsonpath={.metadata.annotations.prometheus\.io/port} {.metadata.annotations.prometheus\.io/path}`)
		if err != nil || ann != "15020 /stats/prometheus" {
			t.Fatalf("metrics-demo's prometheus.io port and path: %q (%v), want 15020 /stats/prometheus", ann, err)
		}
		w.sleepExec(t, "for i in 1 2 3; do curl -sS --max-time 5 http://metrics-demo:8080/profile?id=1; echo; done")
		merged := scrape(t, "cluster-eks", pod, 15020, "/stats/prometheus")
		app, proxy := false, false
		for _, s := range series(merged, "demoapp_requests_total") {
			app = s.value >= 3
		}
		for _, s := range series(merged, "istio_requests_total") {
			if s.labels["reporter"] == "destination" && s.labels["source_canonical_service"] == "sleep" {
				proxy = true
			}
		}
		if !app || !proxy {
			t.Errorf("15020/stats/prometheus of %s: app's demoapp_requests_total >= 3 %v, proxy's istio_requests_total from sleep %v:\n%.3000s", pod, app, proxy, merged)
		}
	})
}

// tracingArea: meshConfig names the demo's trace collector as its
// opentelemetry provider; a call from sleep through dashboard to profile
// and accounts is one trace with a span per hop, each the child of the
// hop before, and a B3-only caller's trace goes on too.
func tracingArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("tracing: one trace, a span per hop, sleep -> dashboard -> accounts and profile, exported as OTLP to meshConfig's opentelemetry provider", func(t *testing.T) {
		e.apply("cluster-eks", `apiVersion: v1
kind: Service
metadata: {name: collector, namespace: multicluster}
spec:
  selector: {app: collector}
  ports:
  - {name: grpc-otlp, port: 4317, targetPort: 8080}
  - {name: http, port: 8080}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: collector, namespace: multicluster}
spec:
  selector: {matchLabels: {app: collector}}
  template:
    metadata:
      labels: {app: collector}
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: collector
        image: `+walkthroughHub+`/demo-app:e2e
        args: [collector]
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
`)
		defer w.rolledOut(t, "collector")()
		overlay := filepath.Join(t.TempDir(), "tracing.yaml")
		if err := os.WriteFile(overlay, []byte(`apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  meshConfig:
    defaultConfig:
      tracing: {sampling: 100}
    extensionProviders:
    - name: otel
      opentelemetry: {service: collector.multicluster.svc.cluster.local, port: 4317}
    defaultProviders:
      tracing: [otel]
`), 0o644); err != nil {
			t.Fatal(err)
		}
		w.installPrimaryWith(t, []string{overlay})
		defer w.installPrimary(t)
		collector := w.pods(t, "cluster-eks", "collector")[0]
		spansOf := func(trace string) []demoapp.Span {
			var spans []demoapp.Span
			_ = json.Unmarshal([]byte(w.scrape(t, "cluster-eks", collector, 8080, "/spans?trace="+trace)), &spans)
			return spans
		}
		const parent = "00f067aa0ba902b7"
		var spans []demoapp.Span
		var trace string
		// lookup finds the span of a service, kind and parent whose name
		// has name in it.
		lookup := func(service, kind, parentID, name string) *demoapp.Span {
			for i, s := range spans {
				if s.Service == service && s.Kind == kind && s.Parent == parentID && strings.Contains(s.Name, name) {
					return &spans[i]
				}
			}
			return nil
		}
		// hops are the five spans, each the child of the one before
		// (proxies get the new configuration one by one: until each has
		// it, some hops are missing).
		hops := func() (out, in, toAccounts, toProfile, accounts *demoapp.Span) {
			none := &demoapp.Span{ID: "none"}
			or := func(s *demoapp.Span) *demoapp.Span {
				if s == nil {
					return none
				}
				return s
			}
			out = or(lookup("sleep.multicluster", "SPAN_KIND_CLIENT", parent, "dashboard"))
			in = or(lookup("dashboard.multicluster", "SPAN_KIND_SERVER", out.ID, "dashboard"))
			toAccounts = or(lookup("dashboard.multicluster", "SPAN_KIND_CLIENT", in.ID, "accounts"))
			toProfile = or(lookup("dashboard.multicluster", "SPAN_KIND_CLIENT", in.ID, "profile"))
			accounts = or(lookup("accounts.multicluster", "SPAN_KIND_SERVER", toAccounts.ID, "accounts"))
			return
		}
		n := 0
		if !eventuallyOK(func() bool {
			n++
			trace = fmt.Sprintf("4bf92f3577b34da6a3ce929d%08x", n)
			w.sleepExec(t, "curl -sS -o /dev/null --max-time 5 -H 'traceparent: 00-"+trace+"-"+parent+"-01' http://dashboard:8080/dashboard?id=4")
			time.Sleep(2 * time.Second) // the proxies export every second
			spans = spansOf(trace)
			_, _, _, _, accounts := hops()
			return accounts.ID != "none"
		}) {
			t.Fatalf("trace %s: sleep -> dashboard -> accounts is not a chain of spans: %+v", trace, spans)
		}
		out, _, _, toProfile, _ := hops()
		if toProfile.ID == "none" {
			t.Errorf("trace %s: no span of dashboard's call to profile: %+v", trace, spans)
		}
		if out.Attributes["http.status_code"] != "200" || out.Attributes["istio.canonical_service"] != "sleep" {
			t.Errorf("sleep's span attributes: %v", out.Attributes)
		}
		t.Logf("trace %s: %d spans", trace, len(spans))

		// A caller that speaks B3 only: its 64-bit trace goes on.
		if !eventuallyOK(func() bool {
			n++
			id := fmt.Sprintf("a3ce929d%08x", n)
			w.sleepExec(t, "curl -sS -o /dev/null --max-time 5 -H 'x-b3-traceid: "+id+"' -H 'x-b3-spanid: "+parent+"' -H 'x-b3-sampled: 1' http://profile:8080/profile?id=1")
			time.Sleep(2 * time.Second)
			for _, s := range spansOf("0000000000000000" + id) {
				if s.Service == "sleep.multicluster" && s.Parent == parent {
					return true
				}
			}
			return false
		}) {
			t.Errorf("a B3 caller's trace did not go on in sleep's span")
		}
	})
}

// rolledOut waits for a multicluster Deployment of cluster-eks to roll
// out; what it returns deletes the Deployment and its Service.
func (w *walkthrough) rolledOut(t *testing.T, name string) func() {
	t.Helper()
	e := w.e
	gone := func() {
		_, _ = e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "deployment,service", name)
	}
	if out, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "rollout", "status", "deployment/"+name, "--timeout=120s"); err != nil {
		gone()
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
	return gone
}

// scrape GETs path on a multicluster pod's port through its cluster's API
// server.
func (w *walkthrough) scrape(t *testing.T, cluster, pod string, port int, path string) string {
	t.Helper()
	out, err := w.e.kubectl(cluster, "", "get", "--raw", fmt.Sprintf("/api/v1/namespaces/multicluster/pods/%s:%d/proxy%s", pod, port, path))
	if err != nil {
		t.Fatalf("scrape %s/%s:%d%s: %v\n%.500s", cluster, pod, port, path, err, out)
	}
	return out
}

// pods are the running multicluster pods of an app in a cluster.
func (w *walkthrough) pods(t *testing.T, cluster, app string) []string {
	t.Helper()
	o, err := w.e.kubectl(cluster, "", "-n", "multicluster", "get", "pods", "-l", "app="+app, "--field-selector=status.phase=Running",
		"-o", "jsonpath={.items[*].metadata.name}")
	if err != nil || o == "" {
		t.Fatalf("%s pods in %s: %v %s", app, cluster, err, o)
	}
	return strings.Fields(o)
}

// sample is one series of a Prometheus text exposition.
type sample struct {
	labels map[string]string
	value  float64
}

var sampleLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)`)
var labelPair = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)

// series are the samples of one metric name in a text exposition.
func series(text, name string) []sample {
	var out []sample
	for _, line := range strings.Split(text, "\n") {
		m := sampleLine.FindStringSubmatch(line)
		if m == nil || m[1] != name {
			continue
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			continue
		}
		s := sample{labels: map[string]string{}, value: v}
		for _, p := range labelPair.FindAllStringSubmatch(m[2], -1) {
			s.labels[p[1]] = p[2]
		}
		out = append(out, s)
	}
	return out
}
