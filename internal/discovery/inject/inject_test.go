package inject

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/isthmus-mesh/isthmus/internal/image"
)

var cfg = &Config{Image: "isthmus/isthmus:dev", ClusterID: "cluster-eks", Network: "network1",
	DiscoveryAddress: "istiod.istio-system.svc:15012", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

// review sends a pod through the webhook at path and returns the pod as
// the API server would store it.
func review(t *testing.T, path string, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	raw, _ := json.Marshal(pod)
	in, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u1", Namespace: "multicluster", Object: runtime.RawExtension{Raw: raw}}})
	rec := httptest.NewRecorder()
	cfg.Handler().ServeHTTP(rec, httptest.NewRequest("POST", path, bytes.NewReader(in)))
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || !out.Response.Allowed || out.Response.UID != "u1" {
		t.Fatalf("response %s: %v", rec.Body.String(), err)
	}
	if out.Response.Patch == nil {
		return pod
	}
	p, err := jsonpatch.DecodePatch(out.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, out.Response.Patch)
	}
	var res corev1.Pod
	if err := json.Unmarshal(patched, &res); err != nil {
		t.Fatal(err)
	}
	return &res
}

func appPod() *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "profile-7d9f8c6b5d-", Labels: map[string]string{"app": "profile"}},
		Spec: corev1.PodSpec{ServiceAccountName: "profile", Containers: []corev1.Container{{Name: "profile", Image: "isthmus/isthmus:dev"}}}}
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			if e.ValueFrom != nil {
				return "fieldRef:" + e.ValueFrom.FieldRef.FieldPath
			}
			return e.Value
		}
	}
	return ""
}

func TestInjectsTheSidecar(t *testing.T) {
	pod := review(t, "/inject/cluster/cluster-aks/net/network2", appPod())
	if len(pod.Spec.Containers) != 2 || len(pod.Spec.InitContainers) != 1 || len(pod.Spec.Volumes) != 2 {
		t.Fatalf("containers %d, init %d, volumes %d", len(pod.Spec.Containers), len(pod.Spec.InitContainers), len(pod.Spec.Volumes))
	}
	proxy := pod.Spec.Containers[1]
	if proxy.Name != "istio-proxy" || *proxy.SecurityContext.RunAsUser != 1337 || proxy.ReadinessProbe.HTTPGet.Port.IntValue() != 15021 {
		t.Fatalf("proxy container %+v", proxy)
	}
	for name, want := range map[string]string{"ISTIO_META_CLUSTER_ID": "cluster-aks", "ISTIO_META_NETWORK": "network2",
		"INSTANCE_IP": "fieldRef:status.podIP", "SERVICE_ACCOUNT": "fieldRef:spec.serviceAccountName", "DISCOVERY_ADDRESS": "istiod.istio-system.svc:15012",
		"ISTIO_META_WORKLOAD_NAME": "profile"} {
		if got := env(proxy, name); got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
	if pod.Labels[LabelTLSMode] != "istio" || pod.Labels[LabelNetwork] != "network2" || pod.Annotations[AnnotationStatus] == "" {
		t.Errorf("labels %v annotations %v", pod.Labels, pod.Annotations)
	}
	// A pod that says its network keeps it.
	own := appPod()
	own.Labels[LabelNetwork] = "vpc-a"
	if got := review(t, "/inject/cluster/cluster-aks/net/network2", own).Labels[LabelNetwork]; got != "vpc-a" {
		t.Errorf("the pod's own network label became %q", got)
	}
	tok := pod.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken
	if tok.Audience != "istio-ca" || tok.Path != "istio-token" {
		t.Errorf("token volume %+v", tok)
	}
	if init := pod.Spec.InitContainers[0]; init.Args[1] != "init" || init.SecurityContext.Capabilities.Add[0] != "NET_ADMIN" {
		t.Errorf("init container %+v", init)
	}
	// The image's proxy binary, with the command lines of isthmus.
	for _, c := range []corev1.Container{pod.Spec.InitContainers[0], proxy} {
		if got := strings.Join(append(c.Command, c.Args...), " "); got != "/usr/local/bin/isthmus-proxy proxy "+map[string]string{InitName: "init", ProxyName: "sidecar"}[c.Name] {
			t.Errorf("%s runs %q", c.Name, got)
		}
	}
	// Without a path the control plane's own cluster and network apply.
	if got := env(review(t, "/inject", appPod()).Spec.Containers[1], "ISTIO_META_NETWORK"); got != "network1" {
		t.Errorf("default network %q", got)
	}
}

// The injected command is where the isthmus image puts isthmus-proxy.
func TestProxyCommandIsInTheImage(t *testing.T) {
	if ProxyCommand != image.ProxyBinaryPath {
		t.Errorf("the injector runs %s, the image holds isthmus-proxy at %s", ProxyCommand, image.ProxyBinaryPath)
	}
}

func TestLeavesAloneWhatItShould(t *testing.T) {
	again := review(t, "/inject", review(t, "/inject", appPod()))
	if len(again.Spec.Containers) != 2 {
		t.Fatalf("re-invocation injected twice: %d containers", len(again.Spec.Containers))
	}
	out := appPod()
	out.Annotations = map[string]string{AnnotationInject: "false"}
	if got := review(t, "/inject", out); len(got.Spec.Containers) != 1 {
		t.Fatal("opt-out annotation ignored")
	}
	host := appPod()
	host.Spec.HostNetwork = true
	if got := review(t, "/inject", host); len(got.Spec.Containers) != 1 {
		t.Fatal("host-network pod injected")
	}
	// Garbage is admitted unchanged, never blocked.
	in, _ := json.Marshal(admissionv1.AdmissionReview{Request: &admissionv1.AdmissionRequest{UID: "u2", Object: runtime.RawExtension{Raw: []byte(`{"spec": 7}`)}}})
	rec := httptest.NewRecorder()
	cfg.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/inject", bytes.NewReader(in)))
	var out2 admissionv1.AdmissionReview
	_ = json.Unmarshal(rec.Body.Bytes(), &out2)
	if out2.Response == nil || !out2.Response.Allowed || out2.Response.Patch != nil {
		t.Fatalf("garbage pod: %s", rec.Body.String())
	}
}

func TestGatewayTemplate(t *testing.T) {
	gw := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-eastwestgateway-abc", Namespace: "istio-system",
			Labels:      map[string]string{"istio": "eastwestgateway", "sidecar.istio.io/inject": "true"},
			Annotations: map[string]string{AnnotationTemplates: "gateway"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "istio-proxy", Image: "auto",
			Env:   []corev1.EnvVar{{Name: "ISTIO_META_REQUESTED_NETWORK_VIEW", Value: "network2"}},
			Ports: []corev1.ContainerPort{{ContainerPort: 15443}}}}},
	}
	pod := review(t, "/inject/cluster/cluster-aks/net/network2", gw)
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 0 || len(pod.Spec.Volumes) != 2 {
		t.Fatalf("containers %d, init %d, volumes %d", len(pod.Spec.Containers), len(pod.Spec.InitContainers), len(pod.Spec.Volumes))
	}
	c := pod.Spec.Containers[0]
	if c.Image != cfg.Image || strings.Join(append(c.Command, c.Args...), " ") != "/usr/local/bin/isthmus-proxy proxy router" {
		t.Fatalf("gateway container runs %s %v %v", c.Image, c.Command, c.Args)
	}
	for name, want := range map[string]string{"ISTIO_META_CLUSTER_ID": "cluster-aks", "ISTIO_META_NETWORK": "network2", "ISTIO_META_REQUESTED_NETWORK_VIEW": "network2"} {
		if got := env(c, name); got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
	if c.Ports[0].ContainerPort != 15443 || pod.Labels[LabelTLSMode] != "" || pod.Labels[LabelNetwork] != "network2" {
		t.Errorf("ports %v, labels %v", c.Ports, pod.Labels)
	}
	if again := review(t, "/inject", pod); strings.Join(again.Spec.Containers[0].Args, " ") != "proxy router" || len(again.Spec.Volumes) != 2 {
		t.Error("re-invocation changed an injected gateway")
	}
}

func TestRewritesProbes(t *testing.T) {
	in := appPod()
	in.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	in.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, TimeoutSeconds: 3, PeriodSeconds: 2}
	in.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}}
	in.Spec.Containers[0].StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}
	pod := review(t, "/inject", in)
	app := pod.Spec.Containers[0]
	if g := app.ReadinessProbe.HTTPGet; g == nil || g.Port.IntValue() != 15020 || g.Path != "/app-health/profile/readyz" || app.ReadinessProbe.PeriodSeconds != 2 {
		t.Errorf("readiness probe %+v", app.ReadinessProbe)
	}
	if g := app.LivenessProbe.HTTPGet; g == nil || g.Path != "/app-health/profile/livez" || app.LivenessProbe.TCPSocket != nil {
		t.Errorf("liveness probe %+v", app.LivenessProbe)
	}
	if app.StartupProbe.Exec == nil || app.StartupProbe.HTTPGet != nil {
		t.Errorf("an exec probe must stay: %+v", app.StartupProbe)
	}
	var probers map[string]struct {
		HTTPGet   *corev1.HTTPGetAction   `json:"httpGet"`
		TCPSocket *corev1.TCPSocketAction `json:"tcpSocket"`
		Timeout   int32                   `json:"timeoutSeconds"`
	}
	if err := json.Unmarshal([]byte(env(pod.Spec.Containers[1], "ISTIO_KUBE_APP_PROBERS")), &probers); err != nil {
		t.Fatal(err)
	}
	if r := probers["/app-health/profile/readyz"]; r.HTTPGet == nil || r.HTTPGet.Port.IntValue() != 8080 || r.HTTPGet.Path != "/healthz" || r.Timeout != 3 {
		t.Errorf("original readiness probe %+v", r)
	}
	if l := probers["/app-health/profile/livez"]; l.TCPSocket == nil || l.TCPSocket.Port.IntValue() != 8080 {
		t.Errorf("original liveness probe %+v", l)
	}
	in.Annotations = map[string]string{AnnotationRewriteProbes: "false"}
	if kept := review(t, "/inject", in).Spec.Containers[0]; kept.ReadinessProbe.HTTPGet.Path != "/healthz" {
		t.Error("rewriteAppHTTPProbers=false ignored")
	}
}

// meshConfig.defaultConfig.proxyMetadata becomes the sidecar's environment;
// DNS capture also redirects the app's DNS in the init container. What
// the injector says of the pod (its cluster) is not overridden.
func TestProxyMetadata(t *testing.T) {
	saved := cfg.ProxyMetadata
	defer func() { cfg.ProxyMetadata = saved }()
	cfg.ProxyMetadata = map[string]string{"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_DNS_AUTO_ALLOCATE": "true", "ISTIO_META_CLUSTER_ID": "forged",
		"ISTIO_METAJSON_LABELS": `{"app":"forged"}`, "CA_ADDR": "evil:15012"}
	pod := review(t, "/inject/cluster/cluster-aks/net/network2", appPod())
	proxy := pod.Spec.Containers[1]
	for name, want := range map[string]string{"ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_DNS_AUTO_ALLOCATE": "true", "ISTIO_META_CLUSTER_ID": "cluster-aks"} {
		if got := env(proxy, name); got != want {
			t.Errorf("%s=%q, want %q", name, got, want)
		}
	}
	n := 0
	for _, e := range proxy.Env {
		if e.Name == "ISTIO_META_CLUSTER_ID" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("ISTIO_META_CLUSTER_ID set %d times", n)
	}
	// appPod has labels: the injector's own labels variable, not the forged one.
	if got := env(proxy, "ISTIO_METAJSON_LABELS"); strings.Contains(got, "forged") || env(proxy, "CA_ADDR") != "" {
		t.Errorf("proxyMetadata set injector-owned variables: labels %q, CA_ADDR %q", got, env(proxy, "CA_ADDR"))
	}
	if args := strings.Join(pod.Spec.InitContainers[0].Args, " "); !strings.Contains(args, "--redirect-dns") {
		t.Errorf("init args %q lack --redirect-dns", args)
	}
	cfg.ProxyMetadata = nil
	if args := strings.Join(review(t, "/inject", appPod()).Spec.InitContainers[0].Args, " "); strings.Contains(args, "--redirect-dns") {
		t.Errorf("DNS redirected without DNS capture: %q", args)
	}
}

// A pod's proxy.istio.io/config proxyMetadata is over the mesh's (Istio's
// per-workload DNS capture); an annotation that does not parse refuses
// the pod with the reason.
func TestPodProxyConfig(t *testing.T) {
	pod := appPod()
	pod.Annotations = map[string]string{AnnotationProxyConfig: "proxyMetadata:\n  ISTIO_META_DNS_CAPTURE: \"true\"\nholdApplicationUntilProxyStarts: true\n"}
	out := review(t, "/inject", pod)
	if got := env(out.Spec.Containers[1], "ISTIO_META_DNS_CAPTURE"); got != "true" {
		t.Errorf("ISTIO_META_DNS_CAPTURE=%q from the pod's annotation", got)
	}
	if args := strings.Join(out.Spec.InitContainers[0].Args, " "); !strings.Contains(args, "--redirect-dns") {
		t.Errorf("init args %q lack --redirect-dns", args)
	}
	bad := appPod()
	bad.Annotations = map[string]string{AnnotationProxyConfig: "proxyMetadata: [not, a, map]"}
	raw, _ := json.Marshal(bad)
	in, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u2", Namespace: "multicluster", Object: runtime.RawExtension{Raw: raw}}})
	rec := httptest.NewRecorder()
	cfg.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/inject", bytes.NewReader(in)))
	var res admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &res); err != nil || res.Response == nil {
		t.Fatalf("response %s: %v", rec.Body.String(), err)
	}
	if res.Response.Allowed || !strings.Contains(res.Response.Result.Message, AnnotationProxyConfig) {
		t.Errorf("a pod with a broken %s: allowed %v, %v", AnnotationProxyConfig, res.Response.Allowed, res.Response.Result)
	}
}

// meshConfig accessLogFile and accessLogEncoding reach every proxy, over
// a pod's proxyMetadata; without them no access log is asked for.
// enablePrometheusMerge: the pod is scraped at the proxy's 15020, and the
// proxy learns where the app serves its own metrics; a pod not to be
// scraped is left alone. Kiali's canonical labels are set either way.
func TestPrometheusMergeAndCanonicalLabels(t *testing.T) {
	defer func(m bool) { cfg.PrometheusMerge = m }(cfg.PrometheusMerge)
	cfg.PrometheusMerge = true
	pod := appPod()
	pod.Labels["version"] = "v2"
	pod.Annotations = map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
	got := review(t, "/inject", pod)
	for k, want := range map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"} {
		if got.Annotations[k] != want {
			t.Errorf("%s=%q, want %q", k, got.Annotations[k], want)
		}
	}
	if e := env(got.Spec.Containers[1], "ISTIO_PROMETHEUS_ANNOTATIONS"); e != `{"port":"9090","scrape":"true"}` {
		t.Errorf("ISTIO_PROMETHEUS_ANNOTATIONS=%q", e)
	}
	if got.Labels["service.istio.io/canonical-name"] != "profile" || got.Labels["service.istio.io/canonical-revision"] != "v2" {
		t.Errorf("canonical labels %v", got.Labels)
	}
	// Without annotations of its own: scraped at 15020, nothing to merge.
	plain := review(t, "/inject", appPod())
	if plain.Annotations["prometheus.io/port"] != "15020" || env(plain.Spec.Containers[1], "ISTIO_PROMETHEUS_ANNOTATIONS") != "" {
		t.Errorf("annotations %v, env %q", plain.Annotations, env(plain.Spec.Containers[1], "ISTIO_PROMETHEUS_ANNOTATIONS"))
	}
	if plain.Labels["service.istio.io/canonical-revision"] != "latest" {
		t.Errorf("canonical revision %q, want latest", plain.Labels["service.istio.io/canonical-revision"])
	}
	off := appPod()
	off.Annotations = map[string]string{"prometheus.io/scrape": "false"}
	if got := review(t, "/inject", off); got.Annotations["prometheus.io/port"] != "" || env(got.Spec.Containers[1], "ISTIO_PROMETHEUS_ANNOTATIONS") != "" {
		t.Errorf("a pod not to be scraped: %v", got.Annotations)
	}
	cfg.PrometheusMerge = false
	if got := review(t, "/inject", appPod()); got.Annotations["prometheus.io/scrape"] != "" {
		t.Errorf("merge off: %v", got.Annotations)
	}
}
