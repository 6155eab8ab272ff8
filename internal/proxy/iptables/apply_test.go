package iptables

import (
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

	"github.com/isthmus-mesh/isthmus/internal/proxy/origdst"
)

// inFreshNetns runs f on a thread moved into a new network namespace with
// lo up and a veth (this kernel has no dummy links) holding 10.99.0.2/24, so 10.99.0.0/24 routes
// nowhere: only a redirect can answer there.
func inFreshNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread ends with the goroutine, never reused
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		lo, _ := netlink.LinkByName("lo")
		if err := netlink.LinkSetUp(lo); err != nil {
			t.Error(err)
			return
		}
		dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "d0"}, PeerName: "d1"}
		if err := netlink.LinkAdd(dummy); err != nil {
			t.Error(err)
			return
		}
		addr, _ := netlink.ParseAddr("10.99.0.2/24")
		if err := netlink.AddrAdd(dummy, addr); err != nil {
			t.Error(err)
			return
		}
		if err := netlink.LinkSetUp(dummy); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// capture checks, inside the namespace, which dials reach the outbound
// listener and with what original destination.
func capture(t *testing.T, apply func(Config) error) {
	cfg := Default()
	cfg.ExcludeOutboundPorts = []int{2222}
	cfg.ExcludeOutboundCIDRs = []string{"10.99.0.128/25"}
	if err := apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	// Applying again replaces rather than appends.
	if err := apply(cfg); err != nil {
		t.Fatalf("apply again: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:15001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan netip.AddrPort, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			d, err := origdst.Get(c)
			if err != nil {
				t.Error(err)
			}
			accepted <- d
			c.Close()
		}
	}()
	for _, tc := range []struct {
		dial     string
		captured bool
	}{
		{"10.99.0.1:80", true},
		{"10.99.0.1:2222", false}, // excluded port
		{"10.99.0.200:80", false}, // excluded range
		{"10.99.0.77:9080", true},
	} {
		c, err := net.DialTimeout("tcp", tc.dial, 300*time.Millisecond)
		if c != nil {
			c.Close()
		}
		if !tc.captured {
			if err == nil {
				t.Errorf("%s: connected, want no capture", tc.dial)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v, want captured by 15001", tc.dial, err)
			continue
		}
		select {
		case d := <-accepted:
			if d.String() != tc.dial {
				t.Errorf("%s: original destination %s", tc.dial, d)
			}
		case <-time.After(2 * time.Second):
			t.Errorf("%s: connected but the listener saw nothing", tc.dial)
		}
	}
	// The proxy's own traffic (uid 1337) goes out as dialled; another
	// user's is captured. bash's /dev/tcp dials from a child, which starts
	// in this thread's namespace.
	for _, tc := range []struct {
		uid      uint32
		captured bool
	}{{1337, false}, {1000, true}} {
		cmd := exec.Command("timeout", "1", "bash", "-c", "exec 3<>/dev/tcp/10.99.0.1/8080")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: tc.uid, Gid: tc.uid}}
		err := cmd.Run()
		if tc.captured != (err == nil) {
			t.Errorf("uid %d: dial err %v, want captured %v", tc.uid, err, tc.captured)
		}
		if tc.captured {
			<-accepted
		}
	}
}

// Both backends capture the same traffic: iptables-restore (where the image
// has it) and nftables over netlink (the isthmus image).
func TestCaptureBackendsAgree(t *testing.T) {
	t.Run("nftables", func(t *testing.T) {
		inFreshNetns(t, func() {
			capture(t, Config.applyNFT)
			out, err := exec.Command("nft", "list", "table", "ip", NFTTable).CombinedOutput()
			if err == nil && strings.Count(string(out), "jump ISTIO_OUTPUT") != 1 {
				t.Errorf("nft list after two applies:\n%s", out)
			}
		})
	})
	t.Run("iptables", func(t *testing.T) {
		if _, err := exec.LookPath("iptables-restore"); err != nil {
			t.Skip("no iptables-restore on this machine")
		}
		inFreshNetns(t, func() {
			capture(t, Config.Apply)
			out, _ := exec.Command("iptables", "-t", "nat", "-S", "OUTPUT").CombinedOutput()
			if strings.Count(string(out), "ISTIO_OUTPUT") != 1 {
				t.Errorf("iptables OUTPUT after two applies:\n%s", out)
			}
		})
	})
}

func TestNFTRefusesBadInput(t *testing.T) {
	for _, r := range []rule{
		{chain: chainOutput, dst: "10.0.0.0/33", target: "RETURN"},
		{chain: chainOutput, dst: "fd00::/8", target: "RETURN"},
		{chain: chainInbound, tcp: true, dport: "http", target: chainInRedirect},
	} {
		if _, err := r.nft(); err == nil {
			t.Errorf("%s: accepted", r)
		}
	}
}

// captureDNS checks that an app's queries to the pod's resolver, over
// UDP and TCP, reach the proxy's DNS port and that its answer comes back
// as the resolver's; the proxy's own queries are not captured. The test
// process is the proxy here (uid and gid 0: its answers must be the
// proxy's for the conntrack zones), the app another user (bash's
// /dev/udp and /dev/tcp, in a child that starts in this thread's netns;
// bash reads a byte at a time, which takes a whole datagram).
func captureDNS(t *testing.T, apply func(Config) error) {
	cfg := Default()
	cfg.ProxyUID, cfg.ProxyGID = 0, 0
	cfg.DNSServers, cfg.DNSPort = []string{"10.99.0.1"}, 15053
	if err := apply(cfg); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if err := apply(cfg); err != nil {
		t.Fatalf("apply again: %v", err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:15053")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte("answer:"), buf[:n]...), from)
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:15053")
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
			_, _ = c.Write([]byte("tcp-answer"))
			c.Close()
		}
	}()
	app := func(script string) error {
		cmd := exec.Command("timeout", "2", "bash", "-c", script)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
		return cmd.Run()
	}
	if err := app("exec 3<>/dev/udp/10.99.0.1/53; printf q >&3; read -t 1 -r -n 1 line <&3; [ \"$line\" = a ]"); err != nil {
		t.Errorf("the app's UDP query to the resolver was not answered by the proxy's DNS: %v", err)
	}
	if err := app("exec 3<>/dev/tcp/10.99.0.1/53; read -t 1 -r -n 1 line <&3; [ \"$line\" = t ]"); err != nil {
		t.Errorf("the app's TCP query to the resolver was not answered by the proxy's DNS: %v", err)
	}
	// The proxy's own query goes to the resolver as sent: nothing answers.
	c, err := net.Dial("udp", "10.99.0.1:53")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = c.Write([]byte("q"))
	if n, err := c.Read(make([]byte, 64)); err == nil {
		t.Errorf("the proxy's own query was captured (%d bytes back)", n)
	}
}

func TestDNSCaptureBackendsAgree(t *testing.T) {
	t.Run("nftables", func(t *testing.T) {
		inFreshNetns(t, func() {
			captureDNS(t, Config.applyNFT)
			// UDP DNS in two conntrack zones, as Istio's raw rules.
			out, err := exec.Command("nft", "list", "table", "ip", NFTTable).CombinedOutput()
			if err == nil && (!strings.Contains(string(out), "ct zone set 1") || !strings.Contains(string(out), "ct zone set 2")) {
				t.Errorf("no conntrack zones:\n%s", out)
			}
		})
	})
	t.Run("iptables", func(t *testing.T) {
		if _, err := exec.LookPath("iptables-restore"); err != nil {
			t.Skip("no iptables-restore on this machine")
		}
		inFreshNetns(t, func() {
			captureDNS(t, Config.Apply)
			out, _ := exec.Command("iptables", "-t", "raw", "-S").CombinedOutput()
			if !strings.Contains(string(out), "--zone 1") || !strings.Contains(string(out), "--zone 2") || strings.Count(string(out), "-j ISTIO_OUTPUT_DNS") != 1 {
				t.Errorf("raw table after two applies:\n%s", out)
			}
		})
	})
}
