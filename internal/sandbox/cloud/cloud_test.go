package cloud

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/loadbalancer"
)

var eks = Cluster{Name: "cluster-eks", Pool: netip.MustParsePrefix("198.18.1.0/24"), Node: netip.MustParseAddr("198.18.1.1")}

const webName = "web-demo-9c1e5b7a.cluster-eks.elb.isthmus.test"

// lb is a hostname load balancer as the controller leaves it.
func lb(name, host, addr string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "demo", Annotations: map[string]string{loadbalancer.AddressAnnotation: addr}},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Ports: ports},
		Status:     corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{Hostname: host}}}},
	}
}

// cloudWith is a cloud whose one hostname cluster holds services.
func cloudWith(t *testing.T, services ...*corev1.Service) (*Cloud, cache.Indexer) {
	t.Helper()
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, s := range services {
		if err := idx.Add(s); err != nil {
			t.Fatal(err)
		}
	}
	c := &Cloud{DNS: netip.MustParseAddrPort("198.18.0.2:53"), Clusters: []Cluster{eks}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	c.watched = []*watched{{Cluster: eks, services: corelisters.NewServiceLister(idx)}}
	return c, idx
}

type recorder struct {
	dns.ResponseWriter
	msg *dns.Msg
}

func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }

func query(c *Cloud, name string, qtype uint16) *dns.Msg {
	req := new(dns.Msg)
	req.SetQuestion(dns.Fqdn(name), qtype)
	r := &recorder{}
	c.handleDNS(r, req)
	return r.msg
}

func answersA(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
			if a.Hdr.Ttl != 5 {
				out = append(out, "ttl not 5")
			}
		}
	}
	return out
}

func TestInternetDNS(t *testing.T) {
	c, idx := cloudWith(t, lb("web", webName, "198.18.1.12"))

	t.Run("a load balancer's name answers its address, with a 5 s TTL, in any case", func(t *testing.T) {
		for _, name := range []string{webName, "WEB-demo-9c1e5b7a.Cluster-EKS.elb.isthmus.test"} {
			m := query(c, name, dns.TypeA)
			if m.Rcode != dns.RcodeSuccess || !m.Authoritative || !slices.Equal(answersA(m), []string{"198.18.1.12"}) {
				t.Fatalf("%s: %v", name, m)
			}
		}
		if m := query(c, webName, dns.TypeAAAA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 {
			t.Fatalf("AAAA of an IPv4 load balancer must be an empty answer with the SOA: %v", m)
		}
	})
	t.Run("a moved load balancer answers its new address", func(t *testing.T) {
		moved := lb("web", webName, "198.18.1.50")
		if err := idx.Update(moved); err != nil {
			t.Fatal(err)
		}
		if m := query(c, webName, dns.TypeA); !slices.Equal(answersA(m), []string{"198.18.1.50"}) {
			t.Fatalf("after the move: %v", m)
		}
	})
	t.Run("unknown names in the zone are NXDOMAIN with the zone's SOA", func(t *testing.T) {
		for _, name := range []string{"nothing-demo-00000000.cluster-eks.elb.isthmus.test", "x.cluster-aks.elb.isthmus.test", "a.b.cluster-eks.elb.isthmus.test"} {
			m := query(c, name, dns.TypeA)
			if m.Rcode != dns.RcodeNameError || !m.Authoritative || len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Fatalf("%s: %v", name, m)
			}
		}
	})
	t.Run("the zone and a cluster's domain exist", func(t *testing.T) {
		if m := query(c, Zone, dns.TypeSOA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("SOA: %v", m)
		}
		if m := query(c, "ns."+Zone, dns.TypeA); !slices.Equal(answersA(m), []string{"198.18.0.2"}) {
			t.Fatalf("the zone's server: %v", m)
		}
		if m := query(c, "cluster-eks."+Zone, dns.TypeA); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 {
			t.Fatalf("a cluster's domain: %v", m)
		}
	})
	t.Run("names outside the zone do not exist in the sandbox's internet", func(t *testing.T) {
		for _, name := range []string{"example.com", "isthmus.test", "registry-1.docker.io"} {
			if m := query(c, name, dns.TypeA); m.Rcode != dns.RcodeNameError || m.Authoritative {
				t.Fatalf("%s: %v", name, m)
			}
		}
	})
	t.Run("a Service no longer a load balancer has no name", func(t *testing.T) {
		gone := lb("web", webName, "198.18.1.50")
		gone.Spec.Type = corev1.ServiceTypeClusterIP
		if err := idx.Update(gone); err != nil {
			t.Fatal(err)
		}
		if m := query(c, webName, dns.TypeA); m.Rcode != dns.RcodeNameError {
			t.Fatalf("%v", m)
		}
	})
}

func TestForwards(t *testing.T) {
	tcp := corev1.ServicePort{Name: "http", Port: 80, NodePort: 30080}
	udp := corev1.ServicePort{Name: "dns", Port: 53, NodePort: 30053, Protocol: corev1.ProtocolUDP}
	sctp := corev1.ServicePort{Name: "s", Port: 99, NodePort: 30099, Protocol: corev1.ProtocolSCTP}
	noNodePort := corev1.ServicePort{Name: "np", Port: 81}
	notLB := lb("plain", "", "198.18.1.20", tcp)
	notLB.Spec.Type = corev1.ServiceTypeNodePort
	got := forwards(eks, []*corev1.Service{
		lb("web", webName, "198.18.1.12", tcp, udp, sctp, noNodePort),
		lb("other", "o", "198.18.1.11", tcp),
		lb("elsewhere", "e", "198.18.2.12", tcp), // not this cluster's pool
		lb("unplaced", "u", "", tcp),
		notLB,
	})
	fw := func(addr string, proto corev1.Protocol, port, nodePort uint16) forward {
		return forward{Addr: netip.MustParseAddr(addr), Proto: proto, Port: port, Node: eks.Node, NodePort: nodePort}
	}
	want := []forward{
		fw("198.18.1.11", corev1.ProtocolTCP, 80, 30080),
		fw("198.18.1.12", corev1.ProtocolTCP, 80, 30080),
		fw("198.18.1.12", corev1.ProtocolUDP, 53, 30053),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("forwards:\n got %v\nwant %v", got, want)
	}

	// loadBalancerSourceRanges: only those sources, as a security group.
	fenced := lb("fenced", "f", "198.18.1.13", tcp)
	fenced.Spec.LoadBalancerSourceRanges = []string{"198.18.2.1/32", "198.18.0.0/24", "fd00::/8"}
	closed := lb("closed", "c", "198.18.1.14", tcp)
	closed.Spec.LoadBalancerSourceRanges = []string{"fd00::/8"}
	got = forwards(eks, []*corev1.Service{fenced, closed})
	from := func(p string) forward {
		f := fw("198.18.1.13", corev1.ProtocolTCP, 80, 30080)
		f.From = netip.MustParsePrefix(p)
		return f
	}
	if want := []forward{from("198.18.0.0/24"), from("198.18.2.1/32")}; !slices.Equal(got, want) {
		t.Fatalf("fenced forwards:\n got %v\nwant %v", got, want)
	}
}

func TestStaleConnections(t *testing.T) {
	fw := []forward{
		{Addr: netip.MustParseAddr("198.18.1.50"), Proto: corev1.ProtocolTCP, Port: 80, Node: eks.Node, NodePort: 30080},
		{Addr: netip.MustParseAddr("198.18.1.60"), Proto: corev1.ProtocolTCP, Port: 80, From: netip.MustParsePrefix("198.18.0.0/24"), Node: eks.Node, NodePort: 30081},
	}
	s := stale{fw: fw, clusters: []Cluster{eks}}
	flowFrom := func(src, dst string, port uint16, nodePort uint16) *netlink.ConntrackFlow {
		f := &netlink.ConntrackFlow{}
		f.Forward = netlink.IPTuple{SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst), Protocol: unix.IPPROTO_TCP, SrcPort: 40000, DstPort: port}
		f.Reverse = netlink.IPTuple{SrcIP: net.ParseIP("198.18.1.1"), DstIP: net.ParseIP(src), Protocol: unix.IPPROTO_TCP, SrcPort: nodePort, DstPort: 40000}
		return f
	}
	flow := func(dst string, port uint16, nodePort uint16) *netlink.ConntrackFlow {
		return flowFrom("198.18.0.1", dst, port, nodePort)
	}
	for _, tc := range []struct {
		what  string
		flow  *netlink.ConntrackFlow
		stale bool
	}{
		{"a connection to the current address", flow("198.18.1.50", 80, 30080), false},
		{"a connection to the old address", flow("198.18.1.12", 80, 30080), true},
		{"a connection to a port the load balancer no longer has", flow("198.18.1.50", 81, 30081), true},
		{"a connection to a NodePort that changed", flow("198.18.1.50", 80, 30999), true},
		{"a connection to the node (the API server)", flow("198.18.1.1", 6443, 6443), false},
		{"a connection to another cluster's address", flow("198.18.2.10", 80, 80), false},
		{"a connection from an admitted source", flowFrom("198.18.0.1", "198.18.1.60", 80, 30081), false},
		{"a connection from a source no longer admitted", flowFrom("198.18.2.1", "198.18.1.60", 80, 30081), true},
	} {
		if got := s.MatchConntrackFlow(tc.flow); got != tc.stale {
			t.Errorf("%s: stale=%v, want %v", tc.what, got, tc.stale)
		}
	}
}
