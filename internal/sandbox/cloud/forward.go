package cloud

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/loadbalancer"
)

// Table is the load balancers' nftables table in the internet namespace:
// `ip netns exec isthmus-inet nft list table ip isthmus-cloud` shows it.
const Table = "isthmus-cloud"

// forward is one port of one load balancer: what arrives at Addr:Port
// from From (any source when unset) goes to Node:NodePort, where
// kube-proxy takes it to the Service's pods.
type forward struct {
	Addr     netip.Addr
	Proto    corev1.Protocol
	Port     uint16
	From     netip.Prefix
	Node     netip.Addr
	NodePort uint16
}

func (f forward) String() string {
	from := ""
	if f.From.IsValid() {
		from = " from " + f.From.String()
	}
	return fmt.Sprintf("%s %s%s -> %s", f.Proto, netip.AddrPortFrom(f.Addr, f.Port), from, netip.AddrPortFrom(f.Node, f.NodePort))
}

// admits reports whether the forward takes traffic from src.
func (f forward) admits(src netip.Addr) bool { return !f.From.IsValid() || f.From.Contains(src) }

// forwards lists the ports of a cluster's load balancers, in a stable order.
// A port without a NodePort (allocateLoadBalancerNodePorts: false) or of a
// protocol NAT cannot carry (SCTP) is left out, as an NLB with instance
// targets cannot serve it either. loadBalancerSourceRanges admit only
// those sources, as the security group a cloud makes of them.
func forwards(cl Cluster, services []*corev1.Service) []forward {
	var out []forward
	for _, svc := range services {
		addr, ok := loadbalancer.Address(svc)
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.LoadBalancerClass != nil || !ok || !cl.Pool.Contains(addr) || addr == cl.Node {
			continue
		}
		from := []netip.Prefix{{}}
		if len(svc.Spec.LoadBalancerSourceRanges) > 0 {
			from = nil
			for _, r := range svc.Spec.LoadBalancerSourceRanges {
				// IPv6 ranges and malformed ones (the API server refuses
				// those) admit nothing on this IPv4 internet.
				if p, err := netip.ParsePrefix(strings.TrimSpace(r)); err == nil && p.Addr().Is4() {
					from = append(from, p.Masked())
				}
			}
		}
		for _, p := range svc.Spec.Ports {
			proto := cmp.Or(p.Protocol, corev1.ProtocolTCP)
			if p.NodePort == 0 || (proto != corev1.ProtocolTCP && proto != corev1.ProtocolUDP) {
				continue
			}
			for _, src := range from {
				out = append(out, forward{Addr: addr, Proto: proto, Port: uint16(p.Port), From: src, Node: cl.Node, NodePort: uint16(p.NodePort)})
			}
		}
	}
	slices.SortFunc(out, func(a, b forward) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port),
			a.From.Addr().Compare(b.From.Addr()), cmp.Compare(a.From.Bits(), b.From.Bits()))
	})
	return out
}

// plan is every forward of every hostname cluster.
func (c *Cloud) plan() []forward {
	var out []forward
	for _, w := range c.watched {
		all, _ := w.services.List(labels.Everything())
		out = append(out, forwards(w.Cluster, all)...)
	}
	return out
}

// forwardLoop keeps the table equal to the plan, rewriting it whole on
// every change of a hostname cluster's Services.
func (c *Cloud) forwardLoop(ctx context.Context) error {
	synced := make([]cache.InformerSynced, len(c.watched))
	for i, w := range c.watched {
		synced[i] = w.synced
	}
	// Until every cluster's Services are known, the table keeps what it
	// holds: a restarted cloud must not drop load balancers it has not seen.
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return nil
	}
	var applied []forward
	first := true
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		if want := c.plan(); first || !slices.Equal(want, applied) {
			if err := c.apply(want); err != nil {
				c.Log.Warn("load balancer forwarding", "err", err)
				retry.Reset(time.Second)
			} else {
				for _, f := range want {
					if !slices.Contains(applied, f) {
						c.Log.Info("forwarding", "load balancer", f.String())
					}
				}
				for _, f := range applied {
					if !slices.Contains(want, f) {
						c.Log.Info("stopped forwarding", "load balancer", f.String())
					}
				}
				applied, first = want, false
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.dirty:
		case <-retry.C:
		}
	}
}

// apply writes the table, then drops the connection tracking of what it
// no longer forwards: NAT is decided on a connection's first packet, so
// without that a moved load balancer's old address would keep serving the
// connections it had.
func (c *Cloud) apply(fw []forward) error {
	if err := writeTable(fw, c.Clusters); err != nil {
		return err
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, stale{fw: fw, clusters: c.Clusters}); err != nil {
		return fmt.Errorf("drop the connection tracking of old load balancer addresses: %w", err)
	}
	return nil
}

// stale matches tracked connections to a load balancer address of a
// hostname cluster that the table no longer forwards as they go: the
// address moved, the port or NodePort changed, or the source is no longer
// admitted.
type stale struct {
	fw       []forward
	clusters []Cluster
}

func (s stale) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	dst, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	src, _ := netip.AddrFromSlice(flow.Forward.SrcIP)
	if !ok {
		return false
	}
	dst, src = dst.Unmap(), src.Unmap()
	for _, cl := range s.clusters {
		if !cl.Pool.Contains(dst) || dst == cl.Node {
			continue
		}
		for _, f := range s.fw {
			if f.Addr == dst && f.Port == flow.Forward.DstPort && protoNumber(f.Proto) == flow.Forward.Protocol && f.admits(src) &&
				net.IP(f.Node.AsSlice()).Equal(flow.Reverse.SrcIP) && f.NodePort == flow.Reverse.SrcPort {
				return false
			}
		}
		return true
	}
	return false
}

func protoNumber(p corev1.Protocol) uint8 {
	if p == corev1.ProtocolUDP {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// writeTable replaces the table in one transaction. Per forward, a DNAT
// to the node's NodePort for traffic passing through (from the host, from
// other clusters) and from the internet namespace itself; a source it does
// not admit falls through to the refusal below. Per hostname
// cluster: its pool's other addresses are refused, so an address no load
// balancer holds (a moved one's old address) answers "connection refused"
// at once instead of bouncing between router and node; and a cluster's
// own traffic to its load balancer is masqueraded, since the node would
// take its own address as the source for a spoofed packet.
func writeTable(fw []forward, clusters []Cluster) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	for _, t := range tables {
		if t.Name == Table {
			conn.DelTable(t)
		}
	}
	t := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: Table})
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return conn.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio})
	}
	prerouting := chain("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest)
	output := chain("output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest)
	postrouting := chain("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	guardForward := chain("guard-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	guardOutput := chain("guard-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
	add := func(c *nftables.Chain, exprs ...[]expr.Any) {
		conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: slices.Concat(exprs...)})
	}
	for _, f := range fw {
		match := slices.Concat(ipIs(offDst, f.Addr), l4(f.Proto), dport(f.Port))
		if f.From.IsValid() {
			match = slices.Concat(ipIn(offSrc, f.From), match)
		}
		add(prerouting, match, dnat(f.Node, f.NodePort))
		add(output, match, dnat(f.Node, f.NodePort))
	}
	for _, cl := range clusters {
		add(postrouting, ipIs(offSrc, cl.Node), ipIs(offDst, cl.Node), []expr.Any{&expr.Masq{}})
		other := slices.Concat(ipIn(offDst, cl.Pool), ipIsNot(offDst, cl.Node))
		// TCP gets a reset, which no ICMP rate limit holds back.
		resetTCP := slices.Concat(other, l4(corev1.ProtocolTCP), []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_TCP_RST}})
		refuse := slices.Concat(other, []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: icmpPortUnreachable}})
		for _, c := range []*nftables.Chain{guardForward, guardOutput} {
			add(c, resetTCP)
			add(c, refuse)
		}
	}
	if err := conn.Flush(); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("nftables: %w: the cloud runs as root in the internet namespace", err)
		}
		return fmt.Errorf("nftables: write table %s: %w", Table, err)
	}
	return nil
}

// icmpPortUnreachable is what a refused address answers but for TCP.
const icmpPortUnreachable = 3

// Offsets of the IPv4 header's addresses.
const (
	offSrc = 12
	offDst = 16
)

func loadAddr(off uint32) expr.Any {
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4}
}

func ipIs(off uint32, ip netip.Addr) []expr.Any {
	return []expr.Any{loadAddr(off), &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.AsSlice()}}
}

func ipIsNot(off uint32, ip netip.Addr) []expr.Any {
	return []expr.Any{loadAddr(off), &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ip.AsSlice()}}
}

func ipIn(off uint32, p netip.Prefix) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	return []expr.Any{
		loadAddr(off),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()},
	}
}

func l4(p corev1.Protocol) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{protoNumber(p)}},
	}
}

func dport(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	}
}

func dnat(ip netip.Addr, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: ip.AsSlice()},
		&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	}
}
