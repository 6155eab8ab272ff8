package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	// InternetNS is the namespace routing between clusters and the host.
	InternetNS = "isthmus-inet"
	// HostLink is the host's veth into the internet namespace.
	HostLink = "isthmus0"
	// uplink is each node namespace's veth into the internet namespace.
	uplink = "uplink"
)

var (
	// Internet is every address reachable on the internet segment.
	Internet = netip.MustParsePrefix("198.18.0.0/15")
	// HostAddr is the host's own address on the internet segment.
	HostAddr = netip.MustParseAddr("198.18.0.1")
	// RouterAddr is the internet namespace's address on every link (the
	// sandbox's registry listens there).
	RouterAddr = netip.MustParseAddr("198.18.0.2")
	// Hosts is where machines outside every cluster (VMs) get addresses:
	// no cluster's range or load-balancer pool.
	Hosts = netip.MustParsePrefix("198.19.0.0/16")
)

// HostNSPrefix starts the namespace name of a machine outside the clusters.
const HostNSPrefix = "isthmus-host-"

// EnsureHost gives a machine outside every cluster (a VM) its network
// namespace HostNSPrefix+name on the internet segment at addr (in Hosts),
// with a default route through the internet namespace: it reaches the
// clusters' load balancers and the sandbox's DNS and registry, and pods
// reach it through their node's NAT, as a VM in a cloud network. Its
// resolver is the sandbox's DNS, in /etc/netns/NS/resolv.conf, which
// `ip netns exec` puts in place of /etc/resolv.conf.
func EnsureHost(name string, addr netip.Addr) error {
	if err := hostName(name); err != nil {
		return err
	}
	if !Hosts.Contains(addr) {
		return fmt.Errorf("host address %s is not in %s", addr, Hosts)
	}
	ns := HostNSPrefix + name
	if _, err := ensureNS(ns); err != nil {
		return err
	}
	etc := filepath.Join("/etc/netns", ns)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+RouterAddr.String()+"\n"), 0o644); err != nil {
		return err
	}
	inet, err := handle(InternetNS)
	if err != nil {
		return fmt.Errorf("%w (is the sandbox up?)", err)
	}
	defer inet.Close()
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := setUp(h, "lo"); err != nil {
		return err
	}
	b := addr.As4()
	link := fmt.Sprintf("h%02x%02x", b[2], b[3])
	if err := ensureVeth(inet, link, ns, "eth0"); err != nil {
		return err
	}
	if err := wire(inet, link, RouterAddr, addr, netip.Prefix{}); err != nil {
		return err
	}
	if err := wire(h, "eth0", addr, RouterAddr, Internet); err != nil {
		return err
	}
	return route(h, "eth0", netip.MustParsePrefix("0.0.0.0/0"), RouterAddr)
}

// Node is one cluster's node namespace and the addresses it owns.
type Node struct {
	// NS is the network namespace name (see NodeNS).
	NS string
	// Index numbers the node's link in the internet namespace (1-based).
	Index int
	// Addr is the node's address on the internet segment.
	Addr netip.Addr
	// Owned is routed to the node: its own address and its LoadBalancer pool.
	Owned netip.Prefix
}

// NodeNS names the node namespace of a cluster.
func NodeNS(cluster string) string { return "isthmus-" + cluster }

// Ensure creates whatever part of the topology is missing. It is safe to
// call on a complete or half-built topology.
func Ensure(nodes []Node) error {
	if err := checkHostRoutes(); err != nil {
		return err
	}
	created, err := ensureNS(InternetNS)
	if err != nil {
		return err
	}
	if created {
		// A host link left from an older internet namespace leads nowhere.
		if l, err := netlink.LinkByName(HostLink); err == nil {
			_ = netlink.LinkDel(l)
		}
	}
	inet, err := handle(InternetNS)
	if err != nil {
		return err
	}
	defer inet.Close()
	if err := setUp(inet, "lo"); err != nil {
		return err
	}
	if err := Do(InternetNS, func() error { return sysctl("net/ipv4/ip_forward", "1") }); err != nil {
		return fmt.Errorf("enable forwarding in %s: %w", InternetNS, err)
	}
	// Host <-> internet.
	host, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer host.Close()
	if err := ensureVeth(host, HostLink, InternetNS, "host"); err != nil {
		return err
	}
	if err := wire(host, HostLink, HostAddr, RouterAddr, Internet); err != nil {
		return fmt.Errorf("wire host link: %w", err)
	}
	if err := wire(inet, "host", RouterAddr, HostAddr, netip.Prefix{}); err != nil {
		return fmt.Errorf("wire internet side of host link: %w", err)
	}
	for _, n := range nodes {
		if err := ensureNode(inet, n); err != nil {
			return fmt.Errorf("node namespace %s: %w", n.NS, err)
		}
	}
	return nil
}

func ensureNode(inet *netlink.Handle, n Node) error {
	if _, err := ensureNS(n.NS); err != nil {
		return err
	}
	h, err := handle(n.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	if err := setUp(h, "lo"); err != nil {
		return err
	}
	link := "c" + strconv.Itoa(n.Index)
	if err := ensureVeth(inet, link, n.NS, uplink); err != nil {
		return err
	}
	if err := wire(inet, link, RouterAddr, n.Addr, netip.Prefix{}); err != nil {
		return err
	}
	if err := route(inet, link, n.Owned, n.Addr); err != nil {
		return err
	}
	if err := wire(h, uplink, n.Addr, RouterAddr, Internet); err != nil {
		return err
	}
	// A default route, as a real node has: the API server's calls to
	// ClusterIPs (admission webhooks) need a route before kube-proxy's
	// OUTPUT rules rewrite them. The router drops what it does not own,
	// so clusters stay apart.
	if err := route(h, uplink, netip.MustParsePrefix("0.0.0.0/0"), RouterAddr); err != nil {
		return err
	}
	return Do(n.NS, func() error { return sysctl("net/ipv4/ip_forward", "1") })
}

// TeardownAll deletes the node namespaces, every pod namespace, the internet
// namespace and the host link. Processes still inside a namespace keep it
// alive, so stop them first.
func TeardownAll(nodeNS []string) error {
	var err error
	for _, ns := range withPrefix(HostNSPrefix) {
		// Names found on the machine, not given: no validation to fail.
		err = errors.Join(err, Teardown([]string{ns}), os.RemoveAll(filepath.Join("/etc/netns", ns)))
	}
	all := append(PodNamespaces(), nodeNS...)
	err = errors.Join(err, Teardown(all, InternetNS))
	if l, lerr := netlink.LinkByName(HostLink); lerr == nil {
		// Deleting the internet namespace takes its veth peer, and the
		// kernel removes the host end on its own, maybe right now.
		if lerr := netlink.LinkDel(l); lerr != nil && !errors.Is(lerr, syscall.ENODEV) {
			err = errors.Join(err, fmt.Errorf("delete %s: %w", HostLink, lerr))
		}
	}
	return err
}

// hostName refuses a host name that is not a short DNS label: it names
// files under /run/netns and /etc/netns.
func hostName(name string) error {
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 || len(name) > 32 {
		return fmt.Errorf("host name %q: want a DNS label of at most 32 characters (a-z, 0-9, -)", name)
	}
	return nil
}

// RemoveHost deletes a host's namespace and resolver (EnsureHost); its
// programs should be stopped first.
func RemoveHost(name string) error {
	if err := hostName(name); err != nil {
		return err
	}
	ns := HostNSPrefix + name
	if !Exists(ns) {
		return fmt.Errorf("no host %s (no network namespace %s)", name, ns)
	}
	return errors.Join(Teardown([]string{ns}), os.RemoveAll(filepath.Join("/etc/netns", ns)))
}

// PodNamespaces lists the pod network namespaces present on the machine.
func PodNamespaces() []string { return withPrefix(PodNSPrefix) }

func withPrefix(prefix string) []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Teardown deletes the named namespaces that exist.
func Teardown(names []string, more ...string) error {
	var errs []error
	for _, name := range append(names, more...) {
		if !Exists(name) {
			continue
		}
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether a named namespace is present.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

// checkHostRoutes refuses to shadow a route the host already has into
// 198.18.0.0/15. Wider routes (the default route) are fine: ours is more specific.
func checkHostRoutes() error {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	own, _ := netlink.LinkByName(HostLink)
	for _, r := range routes {
		if r.Dst == nil || (own != nil && r.LinkIndex == own.Attrs().Index) {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		dst := netip.PrefixFrom(p.Unmap(), ones)
		if dst.Bits() >= Internet.Bits() && dst.Overlaps(Internet) {
			l, _ := netlink.LinkByIndex(r.LinkIndex)
			name := "?"
			if l != nil {
				name = l.Attrs().Name
			}
			return fmt.Errorf("the host already routes %s via %s, which overlaps the sandbox's internet segment %s; remove that route first", dst, name, Internet)
		}
	}
	return nil
}

// ensureNS creates a named namespace if absent and reports whether it did.
func ensureNS(name string) (bool, error) {
	if Exists(name) {
		return false, nil
	}
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the calling thread into the new namespace; move it
		// back before unlocking (see Do for why a thread must not stay).
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer origin.Close()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		if netns.Set(origin) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return false, fmt.Errorf("create network namespace %s: %w", name, err)
	}
	return true, nil
}

func handle(name string) (*netlink.Handle, error) {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", name, err)
	}
	return h, nil
}

// ensureVeth creates a veth pair with local end name in h's namespace and
// the peer end peerName in namespace peerNS, unless name already exists.
func ensureVeth(h *netlink.Handle, name, peerNS, peerName string) error {
	if _, err := h.LinkByName(name); err == nil {
		return nil
	}
	ns, err := netns.GetFromName(peerNS)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", peerNS, err)
	}
	defer ns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", name, peerName, err)
	}
	return nil
}

// wire gives link a /32 address with a point-to-point peer, brings it up and,
// if via is valid, routes that prefix through the peer.
func wire(h *netlink.Handle, link string, local, peer netip.Addr, via netip.Prefix) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find link %s: %w", link, err)
	}
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(local, 32)), Peer: ipNet(netip.PrefixFrom(peer, 32))}
	if err := h.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s peer %s on %s: %w", local, peer, link, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", link, err)
	}
	if via.IsValid() {
		return route(h, link, via, peer)
	}
	return nil
}

func route(h *netlink.Handle, link string, dst netip.Prefix, gw netip.Addr) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find link %s: %w", link, err)
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Gw: net.IP(gw.AsSlice())}
	if err := h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s via %s dev %s: %w", dst, gw, link, err)
	}
	return nil
}

func setUp(h *netlink.Handle, link string) error {
	l, err := h.LinkByName(link)
	if err != nil {
		return fmt.Errorf("find link %s: %w", link, err)
	}
	return h.LinkSetUp(l)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// sysctl writes a value under /proc/sys for the calling thread's namespace.
func sysctl(key, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
}

// PIDs lists the processes whose network namespace is the named one.
func PIDs(name string) ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/run/netns", name), &want); err != nil {
		return nil, fmt.Errorf("stat namespace %s: %w", name, err)
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
