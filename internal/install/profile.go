package install

import (
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// profile is what an IstioOperator profile turns on, as in Istio.
type profile struct {
	components []string
	gateways   []Gateway
}

// ingressGateway is the default profile's istio-ingressgateway.
var ingressGateway = Gateway{
	Name: "istio-ingressgateway", Enabled: ptr.To(true),
	Label: map[string]string{"app": "istio-ingressgateway", "istio": "ingressgateway"},
	K8s: &K8s{Service: &ServiceSpec{Ports: []corev1.ServicePort{
		{Name: "status-port", Port: 15021, TargetPort: intstr.FromInt32(15021), Protocol: corev1.ProtocolTCP},
		{Name: "http2", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
		{Name: "https", Port: 443, TargetPort: intstr.FromInt32(8443), Protocol: corev1.ProtocolTCP},
	}}},
}

// egressGateway's ports are Istio's egress gateway's.
var egressGateway = Gateway{K8s: &K8s{Service: &ServiceSpec{Ports: []corev1.ServicePort{
	{Name: "http2", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
	{Name: "https", Port: 443, TargetPort: intstr.FromInt32(8443), Protocol: corev1.ProtocolTCP},
}}}}

var profiles = map[string]profile{
	// default: the control plane and an ingress gateway (production).
	"default": {components: []string{"base", "pilot"}, gateways: []Gateway{ingressGateway}},
	// minimal: the control plane only.
	"minimal": {components: []string{"base", "pilot"}},
	// remote: a cluster served by another cluster's control plane.
	"remote": {components: []string{"base", "istiodRemote"}},
	// empty: nothing unless the file turns it on (gateway files).
	"empty": {},
}

// ProfileNames lists the profiles isthmus knows.
func ProfileNames() []string {
	out := make([]string, 0, len(profiles))
	for k := range profiles {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
