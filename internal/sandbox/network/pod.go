package network

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
)

// PodGateway is the address every pod routes through: the node side of its
// veth. It is the same on every veth, so a pod's routes never depend on the node.
var PodGateway = netip.MustParseAddr("169.254.1.1")

// PodNSPrefix starts the name of every pod's network namespace.
const PodNSPrefix = "isthmus-pod-"

// Pod is one pod's network: its namespace, address and the node-side veth.
type Pod struct {
	NS   string
	IP   netip.Addr
	Veth string // node-side interface name, at most 15 characters
}

// PodNetwork names a pod's namespace and veth after its UID.
func PodNetwork(uid string, ip netip.Addr) Pod {
	short := strings.ReplaceAll(uid, "-", "")
	if len(short) > 12 {
		short = short[:12]
	}
	return Pod{NS: PodNSPrefix + uid, IP: ip, Veth: "vp" + short}
}

// SetupPod creates the pod's namespace and wires it to the node namespace:
// the pod gets ip/32 on eth0 with a default route via PodGateway; the node
// gets PodGateway/32 on the veth and a /32 route to the pod. Idempotent.
func SetupPod(nodeNS string, p Pod) error {
	if _, err := ensureNS(p.NS); err != nil {
		return err
	}
	node, err := handle(nodeNS)
	if err != nil {
		return err
	}
	defer node.Close()
	pod, err := handle(p.NS)
	if err != nil {
		return err
	}
	defer pod.Close()
	if err := setUp(pod, "lo"); err != nil {
		return err
	}
	if err := ensureVeth(node, p.Veth, p.NS, "eth0"); err != nil {
		return err
	}
	// Node side: gateway address (no peer: the pod's /32 route says where it is).
	l, err := node.LinkByName(p.Veth)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.Veth, err)
	}
	if err := node.AddrReplace(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(PodGateway, 32))}); err != nil {
		return fmt.Errorf("gateway address on %s: %w", p.Veth, err)
	}
	if err := node.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", p.Veth, err)
	}
	if err := node.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.PrefixFrom(p.IP, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to pod %s: %w", p.IP, err)
	}
	// Pod side.
	eth, err := pod.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find pod eth0: %w", err)
	}
	if err := pod.AddrReplace(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(p.IP, 32))}); err != nil {
		return fmt.Errorf("pod address %s: %w", p.IP, err)
	}
	if err := pod.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bring up pod eth0: %w", err)
	}
	gw := ipNet(netip.PrefixFrom(PodGateway, 32))
	if err := pod.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: gw, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("pod route to gateway: %w", err)
	}
	def := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
	if err := pod.RouteReplace(&netlink.Route{LinkIndex: eth.Attrs().Index, Dst: def, Gw: gw.IP}); err != nil {
		return fmt.Errorf("pod default route: %w", err)
	}
	return nil
}

// TeardownPod deletes the pod's veth and namespace. Processes must be gone.
func TeardownPod(nodeNS string, p Pod) error {
	if node, err := handle(nodeNS); err == nil {
		if l, err := node.LinkByName(p.Veth); err == nil {
			_ = node.LinkDel(l)
		}
		node.Close()
	}
	return Teardown(nil, p.NS)
}
