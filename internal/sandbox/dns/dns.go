// Package dns is the sandbox's cluster DNS: it answers the Kubernetes DNS
// names of Services (A records for ClusterIPs, ready endpoint addresses for
// headless Services, CNAMEs for ExternalName) from informers, and forwards
// names outside the cluster domain to the sandbox's internet DNS, as
// CoreDNS forwards to the cloud's resolver: that is how pods resolve the
// hostnames of EKS-like load balancers. Names under the cluster domain
// that do not exist are NXDOMAIN at once, never forwarded, so the search
// list a pod's resolver walks stays fast.
package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/utils/ptr"
)

// ttl of every answer: short, so changes show quickly.
const ttl = 5

// Server answers cluster DNS queries.
type Server struct {
	// Domain is the cluster domain, normally cluster.local.
	Domain string
	// Listen is the address the server binds (UDP and TCP).
	Listen netip.AddrPort
	// ServiceIP is the kube-dns ClusterIP pods use.
	ServiceIP string
	// Upstream answers names outside Domain; unset, they are NXDOMAIN.
	Upstream netip.AddrPort
	Client   kubernetes.Interface
	Log      *slog.Logger

	services  corelisters.ServiceLister
	endpoints discoverylisters.EndpointSliceLister
}

// Watch registers the informers the server reads; call it before factory.Start.
func (s *Server) Watch(factory informers.SharedInformerFactory) {
	s.services = factory.Core().V1().Services().Lister()
	s.endpoints = factory.Discovery().V1().EndpointSlices().Lister()
}

// Run registers the kube-dns Service and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	if err := s.register(ctx); err != nil {
		return err
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", s.handle)
	errc := make(chan error, 2)
	servers := []*dns.Server{
		{Addr: s.Listen.String(), Net: "udp", Handler: mux},
		{Addr: s.Listen.String(), Net: "tcp", Handler: mux},
	}
	for _, srv := range servers {
		go func() { errc <- srv.ListenAndServe() }()
	}
	select {
	case <-ctx.Done():
		for _, srv := range servers {
			_ = srv.Shutdown()
		}
		return nil
	case err := <-errc:
		return fmt.Errorf("cluster DNS on %s: %w", s.Listen, err)
	}
}

// register creates kube-system/kube-dns (no selector) and its EndpointSlice,
// which points at this server, so pods reach it through kube-proxy.
func (s *Server) register(ctx context.Context) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: s.ServiceIP,
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP},
			},
		},
	}
	// Get first: a second Create fails on the taken ClusterIP before it
	// would report AlreadyExists.
	if _, err := s.Client.CoreV1().Services("kube-system").Get(ctx, svc.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		if _, err := s.Client.CoreV1().Services("kube-system").Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create kube-dns Service: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("get kube-dns Service: %w", err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns-sandbox", Namespace: "kube-system", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kube-dns",
			discoveryv1.LabelManagedBy:   "sandbox.isthmus.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{s.Listen.Addr().String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolUDP)},
			{Name: ptr.To("dns-tcp"), Port: ptr.To[int32](53), Protocol: ptr.To(corev1.ProtocolTCP)},
		},
	}
	slices := s.Client.DiscoveryV1().EndpointSlices("kube-system")
	if _, err := slices.Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create kube-dns EndpointSlice: %w", err)
		}
		cur, err := slices.Get(ctx, slice.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		slice.ResourceVersion = cur.ResourceVersion
		if _, err := slices.Update(ctx, slice, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("update kube-dns EndpointSlice: %w", err)
		}
	}
	return nil
}

func (s *Server) handle(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	if s.Upstream.IsValid() && !dns.IsSubDomain(dns.Fqdn(s.Domain), q.Name) {
		s.forward(w, req)
		return
	}
	answers, found := s.lookup(q)
	m.Answer = answers
	if !found {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// forwardTimeout bounds one question to the upstream; a pod's resolver
// asks again after its own timeout (5 s by default).
const forwardTimeout = 2 * time.Second

// forward relays the query to the upstream over the transport it came on
// (a truncated UDP answer reaches the client as such, which then asks over
// TCP), and answers SERVFAIL when the upstream does not answer.
func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg) {
	client := &dns.Client{Net: "udp", Timeout: forwardTimeout}
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		client.Net = "tcp"
	}
	resp, _, err := client.Exchange(req, s.Upstream.String())
	if err != nil {
		s.Log.Debug("cluster DNS: upstream did not answer", "name", req.Question[0].Name, "upstream", s.Upstream, "err", err)
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
		return
	}
	resp.Id = req.Id
	_ = w.WriteMsg(resp)
}

// lookup answers one question; found is false for names that do not exist.
func (s *Server) lookup(q dns.Question) ([]dns.RR, bool) {
	name := strings.ToLower(q.Name)
	suffix := ".svc." + s.Domain + "."
	rest, ok := strings.CutSuffix(name, suffix)
	if !ok {
		return nil, false
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 2 {
		return nil, false
	}
	svcName, ns := parts[0], parts[1]
	svc, err := s.services.Services(ns).Get(svcName)
	if err != nil {
		return nil, false
	}
	hdr := func(t uint16) dns.RR_Header {
		return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return []dns.RR{&dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: dns.Fqdn(svc.Spec.ExternalName)}}, true
	}
	if q.Qtype != dns.TypeA && q.Qtype != dns.TypeANY {
		return nil, true // the name exists; no records of that type
	}
	var ips []string
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svcName})
		slices, _ := s.endpoints.EndpointSlices(ns).List(sel)
		for _, sl := range slices {
			if sl.AddressType != discoveryv1.AddressTypeIPv4 {
				continue
			}
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					ips = append(ips, ep.Addresses...)
				}
			}
		}
	} else if svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []dns.RR
	for _, ip := range ips {
		out = append(out, &dns.A{Hdr: hdr(dns.TypeA), A: net.ParseIP(ip).To4()})
	}
	return out, true
}
