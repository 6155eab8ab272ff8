package cloud

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	corev1 "k8s.io/api/core/v1"
)

// inFreshNetns runs f on a thread moved into a new network namespace that
// plays both the internet namespace and cluster-eks's node: 198.18.1.1 is
// on lo, and the rest of 198.18.0.0/15 routes out of a veth, so only the
// table can bring a load balancer's address to the node.
func inFreshNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, never reused
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		lo, _ := netlink.LinkByName("lo")
		node, _ := netlink.ParseAddr("198.18.1.1/32")
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "d0"}, PeerName: "d1"}
		for _, step := range []func() error{
			func() error { return netlink.LinkSetUp(lo) },
			func() error { return netlink.AddrAdd(lo, node) },
			func() error { return netlink.LinkAdd(veth) },
			func() error { return netlink.LinkSetUp(veth) },
			func() error {
				_, internet, _ := net.ParseCIDR("198.18.0.0/15")
				return netlink.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index, Dst: internet})
			},
		} {
			if err := step(); err != nil {
				t.Error(err)
				return
			}
		}
		f()
	}()
	<-done
}

// dial connects once and says what happened.
func dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	b := make([]byte, 5)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(c, b); err != nil {
		return err
	}
	if string(b) != "node!" {
		return errors.New("answered " + string(b))
	}
	return nil
}

func TestTableForwardsAndMoves(t *testing.T) {
	inFreshNetns(t, func() {
		ln, err := net.Listen("tcp", "198.18.1.1:30080") // the NodePort
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("node!"))
				c.Close()
			}
		}()
		c := &Cloud{Clusters: []Cluster{eks}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		at := func(addr string) []forward {
			return []forward{{Addr: netip.MustParseAddr(addr), Proto: corev1.ProtocolTCP, Port: 80, Node: eks.Node, NodePort: 30080}}
		}
		if err := c.apply(at("198.18.1.12")); err != nil {
			t.Fatal(err)
		}
		if err := dial("198.18.1.12:80"); err != nil {
			t.Fatalf("the load balancer's address does not reach the NodePort: %v", err)
		}
		if err := dial("198.18.1.12:81"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("a port the load balancer does not have: %v, want refused", err)
		}

		// The move: the new address serves, the old one is refused.
		if err := c.apply(at("198.18.1.50")); err != nil {
			t.Fatal(err)
		}
		if err := dial("198.18.1.50:80"); err != nil {
			t.Fatalf("the new address: %v", err)
		}
		if err := dial("198.18.1.12:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("the old address: %v, want refused", err)
		}
		// A source range admits its sources only (this namespace dials
		// from 198.18.1.1, the one address it has).
		fenced := at("198.18.1.50")
		fenced[0].From = netip.MustParsePrefix("10.1.0.0/16")
		if err := c.apply(fenced); err != nil {
			t.Fatal(err)
		}
		if err := dial("198.18.1.50:80"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("a source outside loadBalancerSourceRanges: %v, want refused", err)
		}
		fenced[0].From = netip.MustParsePrefix("198.18.1.1/32")
		if err := c.apply(fenced); err != nil {
			t.Fatal(err)
		}
		if err := dial("198.18.1.50:80"); err != nil {
			t.Fatalf("a source inside loadBalancerSourceRanges: %v", err)
		}
		if err := c.apply(at("198.18.1.50")); err != nil {
			t.Fatal(err)
		}
		// Another cluster's addresses are not this table's business.
		out, err := exec.Command("nft", "list", "table", "ip", Table).CombinedOutput()
		if err != nil || strings.Count(string(out), "dnat to") != 2 || strings.Contains(string(out), "198.18.1.12") || strings.Contains(string(out), "198.18.2.") {
			t.Fatalf("the table after two applies (one forward, in prerouting and output):\n%s %v", out, err)
		}
		// Refused TCP is reset, not told by ICMP: hosts rate-limit ICMP
		// errors (1 a second per destination past a burst), and a client
		// then waits out its connect timeout; this namespace's own dials
		// above are exempt, so only the table can show it.
		if strings.Count(string(out), "reject with tcp reset") != 2 {
			t.Fatalf("no TCP reset for refused addresses in forward and output:\n%s", out)
		}
	})
}
