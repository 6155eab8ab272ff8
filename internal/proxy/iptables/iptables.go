// Package iptables writes a pod's traffic capture, Istio's scheme (what
// istio-init does in REDIRECT mode): inbound TCP to the proxy's 15006,
// outbound TCP to its 15001, the proxy's own traffic (uid/gid 1337),
// loopback and excluded ports and ranges left alone. Applying twice gives
// the same rules.
package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
)

// Istio's chain names.
const (
	chainInbound    = "ISTIO_INBOUND"
	chainInRedirect = "ISTIO_IN_REDIRECT"
	chainOutput     = "ISTIO_OUTPUT"
	chainRedirect   = "ISTIO_REDIRECT"
	// InboundPassthroughSource is the address the proxy dials the app from
	// for inbound passthrough, so that its own connection is not captured.
	InboundPassthroughSource = "127.0.0.6"
)

// Config is what istio-iptables takes as flags (and the injector from
// pod annotations).
type Config struct {
	ProxyUID, ProxyGID  int
	OutboundPort        int      // 15001
	InboundPort         int      // 15006
	InboundPorts        []string // "*" or port numbers to capture
	ExcludeInboundPorts []int
	// OutboundCIDRs to capture ("*" for all), ExcludeOutboundCIDRs not.
	OutboundCIDRs        []string
	ExcludeOutboundCIDRs []string
	ExcludeOutboundPorts []int
	IncludeOutboundPorts []int
}

// Default is Istio's: capture everything but the proxy's own ports
// (15090 Prometheus, 15021 health, 15020 status).
func Default() Config {
	return Config{ProxyUID: 1337, ProxyGID: 1337, OutboundPort: 15001, InboundPort: 15006,
		InboundPorts: []string{"*"}, ExcludeInboundPorts: []int{15090, 15021, 15020}, OutboundCIDRs: []string{"*"}}
}

// Rules renders the nat table in iptables-restore form. Declaring a chain
// flushes it, so restoring with --noflush replaces exactly Istio's chains.
func (c Config) Rules() string {
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	w("*nat")
	for _, ch := range []string{chainInbound, chainInRedirect, chainOutput, chainRedirect} {
		w(":%s - [0:0]", ch)
	}
	w("-A %s -p tcp -j REDIRECT --to-ports %d", chainInRedirect, c.InboundPort)
	w("-A %s -p tcp -j REDIRECT --to-ports %d", chainRedirect, c.OutboundPort)
	// Inbound.
	w("-A %s -p tcp --dport 15008 -j RETURN", chainInbound)
	for _, p := range c.ExcludeInboundPorts {
		w("-A %s -p tcp --dport %d -j RETURN", chainInbound, p)
	}
	for _, p := range c.InboundPorts {
		if p == "*" {
			w("-A %s -p tcp -j %s", chainInbound, chainInRedirect)
			break
		}
		w("-A %s -p tcp --dport %s -j %s", chainInbound, p, chainInRedirect)
	}
	// Outbound.
	w("-A %s -s %s/32 -o lo -j RETURN", chainOutput, InboundPassthroughSource)
	for _, owner := range []string{"--uid-owner " + strconv.Itoa(c.ProxyUID), "--gid-owner " + strconv.Itoa(c.ProxyGID)} {
		// The app calling its own pod through a service VIP comes back in.
		w("-A %s ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner %s -j %s", chainOutput, owner, chainInRedirect)
		w("-A %s -o lo -m owner ! %s -j RETURN", chainOutput, owner)
		w("-A %s -m owner %s -j RETURN", chainOutput, owner)
	}
	w("-A %s -d 127.0.0.1/32 -j RETURN", chainOutput)
	for _, p := range c.ExcludeOutboundPorts {
		w("-A %s -p tcp --dport %d -j RETURN", chainOutput, p)
	}
	for _, cidr := range c.ExcludeOutboundCIDRs {
		w("-A %s -d %s -j RETURN", chainOutput, cidr)
	}
	for _, p := range c.IncludeOutboundPorts {
		w("-A %s -p tcp --dport %d -j %s", chainOutput, p, chainRedirect)
	}
	for _, cidr := range c.OutboundCIDRs {
		if cidr == "*" {
			w("-A %s -j %s", chainOutput, chainRedirect)
			break
		}
		w("-A %s -d %s -j %s", chainOutput, cidr, chainRedirect)
	}
	w("COMMIT")
	return b.String()
}

// jumps hook Istio's chains into the built-in ones.
var jumps = [][]string{
	{"PREROUTING", "-p", "tcp", "-j", chainInbound},
	{"OUTPUT", "-p", "tcp", "-j", chainOutput},
}

// Apply installs the rules in the current network namespace.
func (c Config) Apply() error {
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return errors.New("iptables-restore not found; install the iptables package")
	}
	if err := run(strings.NewReader(c.Rules()), "iptables-restore", "--noflush", "--wait"); err != nil {
		return err
	}
	for _, j := range jumps {
		check := append([]string{"-t", "nat", "--wait", "-C"}, j...)
		if run(nil, "iptables", check...) == nil {
			continue
		}
		if err := run(nil, "iptables", append([]string{"-t", "nat", "--wait", "-A"}, j...)...); err != nil {
			return err
		}
	}
	return nil
}

func run(stdin *strings.Reader, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if strings.Contains(msg, "Permission denied") || strings.Contains(msg, "Operation not permitted") {
			return fmt.Errorf("%s: %s: the init container needs the NET_ADMIN and NET_RAW capabilities (or root)", name, msg)
		}
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return nil
}
