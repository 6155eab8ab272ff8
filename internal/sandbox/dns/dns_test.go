package dns

import (
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

const elbName = "web-demo-9c1e5b7a.cluster-eks.elb.isthmus.test."

// upstream is an internet DNS on loopback that knows one name and counts
// the questions it gets.
type upstream struct {
	addr  netip.AddrPort
	asked atomic.Int32
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{}
	// One port for UDP and TCP: the UDP port's TCP twin may be taken by
	// someone else's connection, so try a few.
	var pc net.PacketConn
	var l net.Listener
	for try := 0; l == nil; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		u.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
		if l, err = net.Listen("tcp", u.addr.String()); err != nil {
			pc.Close()
			if try == 20 {
				t.Fatal(err)
			}
		}
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		u.asked.Add(1)
		m := new(dns.Msg)
		m.SetReply(req)
		if req.Question[0].Name == elbName {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: elbName, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.ParseIP("198.18.1.12").To4()}}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	servers := []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: l, Handler: handler}}
	for _, s := range servers {
		go func() { _ = s.ActivateAndServe() }()
	}
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Shutdown()
		}
	})
	return u
}

// recorder is the client's end of one query.
type recorder struct {
	dns.ResponseWriter
	remote net.Addr
	msg    *dns.Msg
}

func (r *recorder) RemoteAddr() net.Addr      { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error { r.msg = m; return nil }

func clusterDNS(t *testing.T, up netip.AddrPort) *Server {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	if err := idx.Add(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}, Spec: corev1.ServiceSpec{ClusterIP: "100.96.0.20"}}); err != nil {
		t.Fatal(err)
	}
	return &Server{Domain: "cluster.local", Upstream: up, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), services: corelisters.NewServiceLister(idx)}
}

func ask(s *Server, name, transport string) *dns.Msg {
	req := new(dns.Msg)
	req.SetQuestion(name, dns.TypeA)
	r := &recorder{remote: &net.UDPAddr{IP: net.IPv4(100, 64, 0, 5), Port: 40000}}
	if transport == "tcp" {
		r.remote = &net.TCPAddr{IP: net.IPv4(100, 64, 0, 5), Port: 40000}
	}
	s.handle(r, req)
	if r.msg.Id != req.Id {
		r.msg.Rcode = -1 // a reply to another question
	}
	return r.msg
}

func TestNamesOutsideTheClusterAreForwarded(t *testing.T) {
	up := startUpstream(t)
	s := clusterDNS(t, up.addr)
	for _, transport := range []string{"udp", "tcp"} {
		m := ask(s, elbName, transport)
		if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "198.18.1.12" {
			t.Fatalf("over %s, %s: %v", transport, elbName, m)
		}
	}
	if m := ask(s, "unknown.example.", "udp"); m.Rcode != dns.RcodeNameError {
		t.Fatalf("the upstream's NXDOMAIN must reach the client: %v", m)
	}
	if got := up.asked.Load(); got != 3 {
		t.Fatalf("the upstream was asked %d times, want 3", got)
	}
}

func TestClusterNamesStayLocal(t *testing.T) {
	up := startUpstream(t)
	s := clusterDNS(t, up.addr)
	if m := ask(s, "web.default.svc.cluster.local.", "udp"); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != "100.96.0.20" {
		t.Fatalf("a Service's name: %v", m)
	}
	// The search list expands a load balancer's name under the cluster
	// domain first: those are answered here, fast, and never forwarded.
	for _, name := range []string{"nothing.default.svc.cluster.local.", elbName + "default.svc.cluster.local.", "WEB.other.svc.Cluster.Local.", "cluster.local."} {
		if m := ask(s, name, "udp"); m.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: %v, want NXDOMAIN", name, m)
		}
	}
	if got := up.asked.Load(); got != 0 {
		t.Fatalf("names under cluster.local went upstream %d times", got)
	}
}

func TestUnansweredUpstreamIsServfail(t *testing.T) {
	// A port nothing listens on: the client hears SERVFAIL, not silence.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	if m := ask(clusterDNS(t, dead), elbName, "udp"); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("%v, want SERVFAIL", m)
	}
	// Without an upstream, names outside the cluster do not exist.
	if m := ask(clusterDNS(t, netip.AddrPort{}), elbName, "udp"); m.Rcode != dns.RcodeNameError {
		t.Fatalf("%v, want NXDOMAIN", m)
	}
}
