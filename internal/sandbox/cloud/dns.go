package cloud

import (
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/loadbalancer"
)

// ttl of every record: short, as an ELB's (60 s there), so a moved load
// balancer is found again within seconds.
const ttl = 5

// zoneName is Zone as DNS messages spell it, and nsName the zone's server.
var (
	zoneName = dns.Fqdn(Zone)
	nsName   = "ns." + zoneName
)

// handleDNS answers as the internet's DNS: authoritative for Zone. Names
// outside it are NXDOMAIN: the sandbox's internet has no other names, so
// "no such name" is the truth, and it is what the cluster DNS answered for
// them before it forwarded here; REFUSED would send resolvers on to other
// servers and retries for a name that will never exist.
func (c *Cloud) handleDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(zoneName, name) {
		m.Rcode = dns.RcodeNameError
		_ = w.WriteMsg(m)
		return
	}
	m.Authoritative = true
	want := func(t uint16) bool { return q.Qtype == t || q.Qtype == dns.TypeANY }
	switch name {
	case zoneName:
		if want(dns.TypeSOA) {
			m.Answer = append(m.Answer, c.soa())
		}
		if want(dns.TypeNS) {
			m.Answer = append(m.Answer, &dns.NS{Hdr: header(zoneName, dns.TypeNS), Ns: nsName})
		}
	case nsName:
		if want(dns.TypeA) {
			m.Answer = append(m.Answer, a(q.Name, c.DNS.Addr()))
		}
	default:
		ip, exists := c.resolve(name)
		if !exists {
			m.Rcode = dns.RcodeNameError
		} else if ip.IsValid() && want(dns.TypeA) {
			m.Answer = append(m.Answer, a(q.Name, ip))
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{c.soa()} // how long a negative answer may be kept
	}
	_ = w.WriteMsg(m)
}

// resolve finds the address of a load balancer's name (lower case, fully
// qualified). exists is also true, with no address, for a cluster's own
// domain, which holds names but no records.
func (c *Cloud) resolve(name string) (ip netip.Addr, exists bool) {
	rest := strings.TrimSuffix(name, "."+zoneName)
	label, cluster, ok := strings.Cut(rest, ".")
	if !ok {
		label, cluster = "", rest
	}
	for _, w := range c.watched {
		if w.Name != cluster {
			continue
		}
		if label == "" {
			return netip.Addr{}, true
		}
		all, _ := w.services.List(labels.Everything())
		for _, svc := range all {
			if svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
				continue
			}
			for _, in := range svc.Status.LoadBalancer.Ingress {
				if strings.EqualFold(dns.Fqdn(in.Hostname), name) {
					ip, ok := loadbalancer.Address(svc)
					return ip, ok
				}
			}
		}
	}
	return netip.Addr{}, false
}

func (c *Cloud) soa() dns.RR {
	return &dns.SOA{Hdr: header(zoneName, dns.TypeSOA), Ns: nsName, Mbox: "hostmaster." + zoneName,
		Serial: 1, Refresh: 3600, Retry: 600, Expire: 86400, Minttl: ttl}
}

func header(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

func a(name string, ip netip.Addr) dns.RR {
	return &dns.A{Hdr: header(name, dns.TypeA), A: net.IP(ip.AsSlice())}
}
