package kubecluster

import (
	"context"
	"net"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Labels and annotations with Istio's names, so users' YAML carries over.
const (
	LabelNetwork     = "topology.istio.io/network"
	LabelSubzone     = "topology.istio.io/subzone"
	LabelTLSMode     = "security.istio.io/tlsMode"
	LabelGatewayPort = "networking.istio.io/gatewayPort"
	// DefaultGatewayPort is the east-west gateway's mTLS port.
	DefaultGatewayPort = 15443
)

// appProtocol follows Istio: appProtocol wins, else the port name's prefix
// before '-' (http-web -> http), else unknown ("").
func appProtocol(p corev1.ServicePort) string {
	if p.AppProtocol != nil && *p.AppProtocol != "" {
		return strings.ToLower(*p.AppProtocol)
	}
	name := strings.ToLower(p.Name)
	prefix, _, _ := strings.Cut(name, "-")
	switch prefix {
	case "http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "redis", "mysql", "udp":
		return prefix
	}
	return ""
}

// ToService converts a Kubernetes Service into the registry's slim form.
func ToService(s *corev1.Service, domain string) *registry.Service {
	out := &registry.Service{
		Namespace: s.Namespace,
		Name:      s.Name,
		Hostname:  s.Name + "." + s.Namespace + ".svc." + domain,
		Labels:    s.Labels,
		Selector:  s.Spec.Selector,
	}
	if s.Spec.ClusterIP == corev1.ClusterIPNone {
		out.Headless = true
	} else {
		out.ClusterIP = s.Spec.ClusterIP
	}
	for _, p := range s.Spec.Ports {
		port := registry.Port{Name: p.Name, Port: p.Port, Protocol: string(p.Protocol), AppProtocol: appProtocol(p)}
		if p.TargetPort.Type == intstr.String {
			port.TargetPortName = p.TargetPort.StrVal
		} else {
			port.TargetPort = p.TargetPort.IntVal
		}
		out.Ports = append(out.Ports, port)
	}
	return out
}

// workload is what the registry needs of the pod behind an endpoint.
type workload struct {
	labels         map[string]string
	serviceAccount string
	node           string
}

// endpointsOf builds a service's endpoints from its EndpointSlices.
// network resolves an endpoint's network from its pod labels.
func endpointsOf(cluster string, svc *registry.Service, slices []*discoveryv1.EndpointSlice,
	pod func(name string) (workload, bool), locality func(node string, podLabels map[string]string) registry.Locality,
	network func(podLabels map[string]string) string,
) []registry.Endpoint {
	var out []registry.Endpoint
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		ports := map[string]int32{}
		for _, p := range sl.Ports {
			if p.Port == nil {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			ports[name] = *p.Port
		}
		for _, e := range sl.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			if e.Conditions.Terminating != nil && *e.Conditions.Terminating {
				ready = false
			}
			var w workload
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				w, _ = pod(e.TargetRef.Name)
			}
			node := w.node
			if e.NodeName != nil && *e.NodeName != "" {
				node = *e.NodeName
			}
			for _, addr := range e.Addresses {
				out = append(out, registry.Endpoint{
					Address:        addr,
					Ports:          ports,
					Cluster:        cluster,
					Network:        network(w.labels),
					Locality:       locality(node, w.labels),
					ServiceAccount: w.serviceAccount,
					Namespace:      svc.Namespace,
					Labels:         w.labels,
					TLSMode:        w.labels[LabelTLSMode],
					Ready:          ready,
					Hostname:       ptr.Deref(e.Hostname, ""),
				})
			}
		}
	}
	return out
}

// Resolver looks up gateway hostnames (AWS-style load balancers).
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// GatewayPort is the network a Service is the gateway of (its
// topology.istio.io/network label; "" when none) and the gateway port it
// exposes (15443, or its networking.istio.io/gatewayPort label); problem
// says why a labelled Service is not taken for a gateway.
func GatewayPort(s *corev1.Service) (network string, port int32, problem string) {
	network = s.Labels[LabelNetwork]
	if network == "" {
		return "", 0, ""
	}
	port = int32(DefaultGatewayPort)
	if v := s.Labels[LabelGatewayPort]; v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p <= 0 || p > 65535 {
			return network, 0, "label " + LabelGatewayPort + "=" + v + " is not a port number"
		}
		port = int32(p)
	}
	for _, p := range s.Spec.Ports {
		if p.Port == port {
			return network, port, ""
		}
	}
	return network, port, "service is labelled as the gateway of " + network + " but exposes no port " + strconv.Itoa(int(port))
}

// gatewaysOf reads the network gateways a Service stands for: a Service
// labelled topology.istio.io/network that exposes the gateway port, at its
// load-balancer addresses and external IPs.
func gatewaysOf(ctx context.Context, cluster string, s *corev1.Service, res Resolver) ([]registry.Gateway, string) {
	network, port, problem := GatewayPort(s)
	if network == "" || problem != "" {
		return nil, problem
	}
	var addrs []string
	if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range s.Status.LoadBalancer.Ingress {
			switch {
			case in.IP != "":
				addrs = append(addrs, in.IP)
			case in.Hostname != "" && res != nil:
				ips, err := res.LookupHost(ctx, in.Hostname)
				if err != nil {
					return nil, "cannot resolve load balancer hostname " + in.Hostname + ": " + err.Error()
				}
				addrs = append(addrs, ips...)
			}
		}
	}
	addrs = append(addrs, s.Spec.ExternalIPs...)
	var out []registry.Gateway
	for _, a := range addrs {
		if net.ParseIP(a) == nil {
			continue
		}
		out = append(out, registry.Gateway{Network: network, Cluster: cluster, Address: a, Port: port, Service: s.Namespace + "/" + s.Name})
	}
	if len(out) == 0 {
		return nil, "gateway of " + network + " has no address yet (no load balancer ingress or external IP)"
	}
	return out, ""
}
