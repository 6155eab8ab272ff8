package meshconfig

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// The ConfigMap as Istio's installer writes it (fields isthmus ignores included).
const mesh = `
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  meshId: mesh1
  proxyMetadata: {}
trustDomain: example.org
enablePrometheusMerge: true
someFutureField: {a: 1}
`

const networks = `
networks:
  network1:
    endpoints:
    - fromRegistry: cluster-eks
    gateways:
    - registryServiceName: istio-eastwestgateway.istio-system.svc.cluster.local
      port: 15443
  network2:
    endpoints:
    - fromRegistry: cluster-aks
    gateways:
    - address: 198.18.2.10
      port: 15443
`

func TestLoad(t *testing.T) {
	c := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
		Data: map[string]string{"mesh": mesh, "meshNetworks": networks}})
	m, err := Load(context.Background(), c, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.GetTrustDomain() != "example.org" || m.MeshID() != "mesh1" {
		t.Fatalf("mesh config %v", m.Config)
	}
	if m.NetworkOf("cluster-aks") != "network2" || m.NetworkOf("cluster-gke") != "" {
		t.Fatal("fromRegistry networks")
	}
	gws := m.Gateways()
	if len(gws) != 1 || gws[0] != (Gateway{Network: "network2", Address: "198.18.2.10", Port: 15443}) {
		t.Fatalf("gateways %v", gws)
	}
}

func TestMissingAndBroken(t *testing.T) {
	m, err := Load(context.Background(), fake.NewClientset(), "istio-system")
	if err != nil || m.Config.GetTrustDomain() != "" {
		t.Fatalf("missing ConfigMap: %v %v", m, err)
	}
	c := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
		Data: map[string]string{"mesh": "trustDomain: [not a string"}})
	if _, err := Load(context.Background(), c, "istio-system"); err == nil || !strings.Contains(err.Error(), "key mesh") {
		t.Fatalf("broken mesh: %v", err)
	}
}
