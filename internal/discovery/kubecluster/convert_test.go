package kubecluster

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

func TestNetworkResolutionOrder(t *testing.T) {
	c := &Controller{cfg: Config{SystemNamespace: "istio-system", DefaultNetwork: "default-net"}}
	tests := []struct {
		name      string
		podLabels map[string]string
		nsLabel   string
		want      string
	}{
		{"the pod label wins", map[string]string{LabelNetwork: "pod-net"}, "ns-net", "pod-net"},
		{"then the system namespace label", nil, "ns-net", "ns-net"},
		{"then the cluster default", nil, "", "default-net"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system", Labels: map[string]string{}}}
			if tt.nsLabel != "" {
				ns.Labels[LabelNetwork] = tt.nsLabel
			}
			c.ns = fakeNamespaces{ns}
			if got := c.network(tt.podLabels); got != tt.want {
				t.Fatalf("network = %q, want %q", got, tt.want)
			}
		})
	}
}

type fakeResolver map[string][]string

func (f fakeResolver) LookupHost(_ context.Context, h string) ([]string, error) {
	if ips, ok := f[h]; ok {
		return ips, nil
	}
	return nil, errors.New("no such host")
}

func gatewayService(labels map[string]string, ports []int32, ingress ...corev1.LoadBalancerIngress) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-eastwestgateway", Namespace: "istio-system", Labels: labels},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}
	for _, p := range ports {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Port: p})
	}
	s.Status.LoadBalancer.Ingress = ingress
	return s
}

func TestGatewaysOf(t *testing.T) {
	net2 := map[string]string{LabelNetwork: "network2"}
	tests := []struct {
		name    string
		svc     *corev1.Service
		want    []string
		problem string
	}{
		{"a labelled LoadBalancer exposing 15443", gatewayService(net2, []int32{15021, 15443}, corev1.LoadBalancerIngress{IP: "198.18.2.10"}), []string{"198.18.2.10:15443"}, ""},
		{"a hostname is resolved, one gateway per address", gatewayService(net2, []int32{15443}, corev1.LoadBalancerIngress{Hostname: "lb.example"}), []string{"198.18.2.20:15443", "198.18.2.21:15443"}, ""},
		{"a custom gateway port from the label", gatewayService(map[string]string{LabelNetwork: "network2", LabelGatewayPort: "16443"}, []int32{16443}, corev1.LoadBalancerIngress{IP: "198.18.2.10"}), []string{"198.18.2.10:16443"}, ""},
		{"a labelled service without the port is refused", gatewayService(net2, []int32{15021}, corev1.LoadBalancerIngress{IP: "198.18.2.10"}), nil, "exposes no port 15443"},
		{"no address yet is reported", gatewayService(net2, []int32{15443}), nil, "no address yet"},
		{"an unlabelled service is no gateway", gatewayService(nil, []int32{15443}, corev1.LoadBalancerIngress{IP: "198.18.2.10"}), nil, ""},
	}
	res := fakeResolver{"lb.example": {"198.18.2.20", "198.18.2.21"}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gws, problem := gatewaysOf(context.Background(), "cluster-aks", tt.svc, res)
			var got []string
			for _, g := range gws {
				got = append(got, g.Address+":"+itoa(g.Port))
				if g.Network != "network2" || g.Cluster != "cluster-aks" {
					t.Errorf("gateway %+v", g)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("gateways %v, want %v", got, tt.want)
			}
			if (tt.problem == "") != (problem == "") || !strings.Contains(problem, tt.problem) {
				t.Fatalf("problem %q, want %q", problem, tt.problem)
			}
		})
	}
}

func TestEndpointsCarryClusterNetworkLocalityAndIdentity(t *testing.T) {
	svc := &registry.Service{Namespace: "multicluster", Name: "profile", Hostname: "profile.multicluster.svc.cluster.local"}
	slice := &discoveryv1.EndpointSlice{
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"100.65.0.5"}, TargetRef: &corev1.ObjectReference{Kind: "Pod", Name: "profile-1"}},
			{Addresses: []string{"100.65.0.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		},
	}
	pod := func(name string) (workload, bool) {
		return workload{labels: map[string]string{LabelTLSMode: "istio"}, serviceAccount: "profile", node: "cluster-aks-node"}, name == "profile-1"
	}
	loc := func(node string, _ map[string]string) registry.Locality {
		if node == "cluster-aks-node" {
			return registry.Locality{Region: "eastus", Zone: "eastus-1"}
		}
		return registry.Locality{}
	}
	eps := endpointsOf("cluster-aks", svc, []*discoveryv1.EndpointSlice{slice}, pod, loc, func(map[string]string) string { return "network2" })
	if len(eps) != 2 {
		t.Fatalf("endpoints %+v", eps)
	}
	e := eps[0]
	if e.Cluster != "cluster-aks" || e.Network != "network2" || e.TLSMode != "istio" || e.ServiceAccount != "profile" ||
		e.Locality.String() != "eastus/eastus-1/" || e.Ports["http"] != 8080 || !e.Ready {
		t.Fatalf("endpoint %+v", e)
	}
	if eps[1].Ready {
		t.Fatal("a not-ready endpoint was marked ready")
	}
}

func itoa(i int32) string { return strconv.Itoa(int(i)) }

// fakeNamespaces is a NamespaceLister over fixed objects.
type fakeNamespaces []*corev1.Namespace

func (f fakeNamespaces) List(labels.Selector) ([]*corev1.Namespace, error) { return f, nil }

func (f fakeNamespaces) Get(name string) (*corev1.Namespace, error) {
	for _, n := range f {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, apierrors.NewNotFound(corev1.Resource("namespaces"), name)
}

// clusterIP None is headless; an ExternalName service has no ClusterIP
// either, and is not.
func TestHeadlessIsClusterIPNone(t *testing.T) {
	for _, tc := range []struct {
		spec     corev1.ServiceSpec
		headless bool
		ip       string
	}{
		{corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone}, true, ""},
		{corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}, false, ""},
		{corev1.ServiceSpec{ClusterIP: "100.96.0.7"}, false, "100.96.0.7"},
	} {
		s := ToService(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "data"}, Spec: tc.spec}, "cluster.local")
		if s.Headless != tc.headless || s.ClusterIP != tc.ip {
			t.Errorf("%+v: headless %v, ClusterIP %q; want %v, %q", tc.spec, s.Headless, s.ClusterIP, tc.headless, tc.ip)
		}
	}
}
