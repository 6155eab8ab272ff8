package meshconfig

import (
	"context"
	"strings"
	"testing"
	"time"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
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

// outboundTrafficPolicy is ALLOW_ANY unless the file says REGISTRY_ONLY:
// the proto's zero value is REGISTRY_ONLY, which must not be what a mesh
// config without the field gets.
func TestOutboundTrafficPolicyDefault(t *testing.T) {
	for y, want := range map[string]meshv1alpha1.MeshConfig_OutboundTrafficPolicy_Mode{
		mesh:                          meshv1alpha1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY,
		"outboundTrafficPolicy: {}\n": meshv1alpha1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY,
		"outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n": meshv1alpha1.MeshConfig_OutboundTrafficPolicy_REGISTRY_ONLY,
		"outboundTrafficPolicy: {mode: ALLOW_ANY}\n":     meshv1alpha1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY,
	} {
		c := fake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": y}})
		m, err := Load(context.Background(), c, "istio-system")
		if err != nil || m.Config.GetOutboundTrafficPolicy().GetMode() != want {
			t.Errorf("%q: mode %v (%v), want %v", y, m.Config.GetOutboundTrafficPolicy().GetMode(), err, want)
		}
	}
	m, _ := Load(context.Background(), fake.NewClientset(), "istio-system")
	if m.Config.GetOutboundTrafficPolicy().GetMode() != meshv1alpha1.MeshConfig_OutboundTrafficPolicy_ALLOW_ANY {
		t.Error("no ConfigMap: not ALLOW_ANY")
	}
}

// An edit of the ConfigMap after the start is reported as stale, and an
// edit back as not.
func TestStale(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"}, Data: map[string]string{"mesh": mesh}}
	c := fake.NewClientset(cm)
	m, err := Load(context.Background(), c, "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	seen := make(chan bool, 100)
	go func() { _ = m.Stale(ctx, c, "istio-system", 5*time.Millisecond, func(s bool) { seen <- s }) }()
	wait := func(want bool) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case s := <-seen:
				if s == want {
					return
				}
			case <-deadline:
				t.Fatalf("never reported stale=%v", want)
			}
		}
	}
	wait(false)
	edited := cm.DeepCopy()
	edited.Data["mesh"] = "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n"
	if _, err := c.CoreV1().ConfigMaps("istio-system").Update(ctx, edited, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(true)
	if _, err := c.CoreV1().ConfigMaps("istio-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait(false)
}
