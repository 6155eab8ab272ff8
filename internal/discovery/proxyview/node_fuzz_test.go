package proxyview

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// nodeConfig is a mesh's Istio configuration for FuzzParseNode: an
// east-west gateway for routers labelled istio=eastwestgateway and a
// DestinationRule with subsets.
type nodeConfig struct{}

func (nodeConfig) Gateways() []*networkingv1.Gateway {
	return []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "cross-network-gateway", Namespace: "istio-system"},
		Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "eastwestgateway"}, Servers: []*apinetworking.Server{{
			Port: &apinetworking.Port{Number: 15443, Name: "tls", Protocol: "TLS"}, Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH},
			Hosts: []string{"*.local"}}}}}}
}
func (nodeConfig) VirtualServices() []*networkingv1.VirtualService { return nil }
func (nodeConfig) DestinationRules() []*networkingv1.DestinationRule {
	return []*networkingv1.DestinationRule{{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "profile"},
		Spec: apinetworking.DestinationRule{Host: "profile", Subsets: []*apinetworking.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}}}}}
}
func (nodeConfig) PeerAuthentications() []*securityv1.PeerAuthentication       { return nil }
func (nodeConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy    { return nil }
func (nodeConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (nodeConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }

// FuzzParseNode gives the control plane the node a proxy sends on its
// first xDS request: an ID, metadata (a protobuf Struct, here its wire
// bytes) and a locality. ParseNode refuses it or reads it as the node
// says, and the proxy's view (clusters, listeners, endpoints, routes, its
// inbound side) is generated from whatever it accepted, without a panic
// and within the rules Envoy's protos declare: a node must take neither
// the control plane down for the whole mesh nor config its proxy NACKs.
func FuzzParseNode(f *testing.F) {
	md := func(kv map[string]string) []byte {
		b, err := proto.Marshal(NodeMetadata(kv))
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	labels, _ := structpb.NewStruct(map[string]any{"LABELS": map[string]any{"istio": "eastwestgateway", "version": "v1"},
		"NETWORK": "n2", "CLUSTER_ID": "c2", "REQUESTED_NETWORK_VIEW": "n2, n1", "INSTANCE_IPS": "10.1.0.9,fd00::9"})
	routerMD, _ := proto.Marshal(labels)
	f.Add("sidecar~10.0.0.9~sleep-1.ns~ns.svc.cluster.local", md(map[string]string{"NETWORK": "n1", "CLUSTER_ID": "c1"}), "r1", "z1")
	f.Add("sidecar~10.0.0.1~profile-1.ns~ns.svc.cluster.local", md(map[string]string{"NETWORK": "n1", "SERVICE_ACCOUNT": "profile", "GENERATOR": GeneratorGRPC}), "", "")
	f.Add("router~10.1.0.9~gw-1.istio-system~istio-system.svc.cluster.local", routerMD, "r2", "")
	f.Add("router~~.~", md(map[string]string{"NAMESPACE": "", "INSTANCE_IPS": ","}), "", "")
	f.Add("sidecar~10.0.0.9~nodot~x", []byte{0x0a, 0x05, 'L'}, "", "") // a Struct cut short
	f.Add("sidecar~a~b~c~d", []byte(nil), "", "")
	f.Add("", []byte(nil), "", "")

	reg := registry.New()
	h := "profile.ns.svc.cluster.local"
	svc := &registry.Service{Namespace: "ns", Name: "profile", Hostname: h, ClusterIP: "10.96.0.10", Ports: []registry.Port{
		{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "grpc", Port: 7070, Protocol: "TCP", AppProtocol: "grpc"}, {Name: "tcp", Port: 9000, Protocol: "TCP"}}}
	ep := func(addr, cluster, network string) registry.Endpoint {
		return registry.Endpoint{Address: addr, Ports: map[string]int32{"http": 8080, "grpc": 7070, "tcp": 9000}, Cluster: cluster, Network: network, TLSMode: "istio", Ready: true,
			Labels: map[string]string{"app": "profile", "version": "v1"}, Locality: registry.Locality{Region: "r1", Zone: "z1"}}
	}
	reg.SetService("c1", h, svc)
	reg.SetEndpoints("c1", h, []registry.Endpoint{ep("10.0.0.1", "c1", "n1")})
	reg.SetService("c2", h, svc)
	reg.SetEndpoints("c2", h, []registry.Endpoint{ep("10.1.0.1", "c2", "n2")})
	reg.SetGateways("c2", []registry.Gateway{{Network: "n2", Address: "198.18.2.10", Port: 15443}})
	g := &Generator{Registry: reg, Config: nodeConfig{}, Domain: "cluster.local", TrustDomains: []string{"cluster.local"}}
	index := g.InboundIndex(reg.Services())

	f.Fuzz(func(t *testing.T, id string, metadata []byte, region, zone string) {
		n := &core.Node{Id: id, Locality: &core.Locality{Region: region, Zone: zone}}
		if metadata != nil {
			n.Metadata = &structpb.Struct{}
			if proto.Unmarshal(metadata, n.Metadata) != nil {
				return // gRPC refuses the request before the control plane sees it
			}
		}
		p, err := ParseNode(n)
		if err != nil {
			if p != nil {
				t.Fatalf("ParseNode(%v): both %+v and %v", n, p, err)
			}
			return
		}
		fields := n.GetMetadata().GetFields()
		str := func(k string) string { return fields[k].GetStringValue() }
		parts := strings.Split(id, "~")
		ip := parts[1]
		if ips := str("INSTANCE_IPS"); ips != "" {
			ip, _, _ = strings.Cut(ips, ",")
		}
		if p.ID != id || p.Type != parts[0] || (p.Type != Sidecar && p.Type != Router) || p.IP != ip ||
			p.ClusterID != str("CLUSTER_ID") || p.Network != str("NETWORK") || p.Generator != str("GENERATOR") || p.Locality.Region != region {
			t.Fatalf("ParseNode(%v) = %+v", n, p)
		}
		if ns := str("NAMESPACE"); ns != "" && p.Namespace != ns {
			t.Fatalf("ParseNode(%v): namespace %q, the metadata says %q", n, p.Namespace, ns)
		}

		view := g.View(p)
		for _, rs := range [][]types.Resource{view.Clusters, view.Endpoints, view.Listeners, view.Routes, view.Secrets,
			g.Endpoints(p, reg.Services()), g.Routes(p, reg.Services())} {
			for _, r := range rs {
				if err := r.(interface{ ValidateAll() error }).ValidateAll(); err != nil {
					t.Fatalf("node %v: %T breaks Envoy's rules: %v", n, r, err)
				}
				if _, err := proto.Marshal(r); err != nil {
					t.Fatalf("node %v: %T does not marshal: %v", n, r, err)
				}
			}
		}
		if p.Type == Sidecar {
			l, _ := g.Inbound(index.For(p.Namespace, p.IP), g.InboundPolicy(p))
			if err := l.ValidateAll(); err != nil {
				t.Fatalf("node %v: the inbound listener breaks Envoy's rules: %v", n, err)
			}
		}
	})
}
