package contract

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/inject"
	"github.com/isthmus-mesh/isthmus/internal/proxy/apphealth"
)

// The application's probes the injector hands the sidecar in
// ISTIO_KUBE_APP_PROBERS (written with Kubernetes' types) are the probes
// the proxy reads (its own small types, the proxy binary links no
// Kubernetes API): path, port, scheme, headers and timeout arrive.
func TestAppProbers(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "profile", Labels: map[string]string{"app": "profile"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "profile", Image: "profile",
			Ports: []corev1.ContainerPort{{Name: "https", ContainerPort: 8443}},
			ReadinessProbe: &corev1.Probe{TimeoutSeconds: 3, ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: "/healthz", Port: intstr.FromString("https"), Scheme: corev1.URISchemeHTTPS,
				HTTPHeaders: []corev1.HTTPHeader{{Name: "Host", Value: "profile.local"}}}}},
			LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(7070)}}},
		}}}}
	raw, _ := json.Marshal(pod)
	in, _ := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u1", Namespace: "multicluster", Object: runtime.RawExtension{Raw: raw}}})
	cfg := &inject.Config{Image: "isthmus/isthmus:dev", ClusterID: "c1", Network: "n1", Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	rec := httptest.NewRecorder()
	cfg.Handler().ServeHTTP(rec, httptest.NewRequest("POST", "/inject", bytes.NewReader(in)))
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || out.Response.Patch == nil {
		t.Fatalf("response %s: %v", rec.Body.String(), err)
	}
	var ops []struct {
		Path  string
		Value json.RawMessage
	}
	if err := json.Unmarshal(out.Response.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	var env string
	for _, op := range ops {
		var c corev1.Container
		if op.Path != "/spec/containers/-" || json.Unmarshal(op.Value, &c) != nil || c.Name != inject.ProxyName {
			continue
		}
		for _, e := range c.Env {
			if e.Name == "ISTIO_KUBE_APP_PROBERS" {
				env = e.Value
			}
		}
	}
	probers, err := apphealth.Parse(env)
	if err != nil {
		t.Fatalf("%v (ISTIO_KUBE_APP_PROBERS=%q)", err, env)
	}
	ready := probers["/app-health/profile/readyz"]
	if ready == nil || ready.HTTPGet == nil || ready.TimeoutSeconds != 3 {
		t.Fatalf("readiness prober %+v from %s", ready, env)
	}
	if g := ready.HTTPGet; g.Path != "/healthz" || g.Port != (apphealth.Port{Number: 8443}) || g.Scheme != "HTTPS" ||
		len(g.HTTPHeaders) != 1 || g.HTTPHeaders[0] != (apphealth.HTTPHeader{Name: "Host", Value: "profile.local"}) {
		t.Errorf("readiness prober %+v from %s", *g, env)
	}
	if live := probers["/app-health/profile/livez"]; live == nil || live.TCPSocket == nil || live.TCPSocket.Port != (apphealth.Port{Number: 7070}) {
		t.Errorf("liveness prober %+v from %s", live, env)
	}
}
