// Package iptables writes a pod's traffic capture, Istio's scheme (what
// istio-init does in REDIRECT mode): inbound TCP to the proxy's 15006,
// outbound TCP to its 15001, the proxy's own traffic (uid/gid 1337),
// loopback and excluded ports and ranges left alone. Applying twice gives
// the same rules.
package iptables

import (
	"bytes"
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
	chainOutputDNS  = "ISTIO_OUTPUT_DNS"
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
	// DNSServers are the pod's resolvers (resolv.conf nameservers): DNS to
	// them, UDP and TCP port 53, goes to the proxy's DNS on DNSPort
	// (ISTIO_META_DNS_CAPTURE); none, no DNS capture.
	DNSServers []string
	DNSPort    int // 15053
}

// Default is Istio's: capture everything but the proxy's own ports
// (15090 Prometheus, 15021 health, 15020 status).
func Default() Config {
	return Config{ProxyUID: 1337, ProxyGID: 1337, OutboundPort: 15001, InboundPort: 15006,
		InboundPorts: []string{"*"}, ExcludeInboundPorts: []int{15090, 15021, 15020}, OutboundCIDRs: []string{"*"}}
}

// rule is one line of the nat table: what both backends write.
type rule struct {
	chain    string
	src      string // CIDR
	dst      string // CIDR
	notDst   bool
	outLo    bool // -o lo
	tcp      bool
	udp      bool
	sport    string
	dport    string
	notDport bool
	owner    string // "uid" or "gid"
	ownerID  int
	notOwner bool
	target   string // a chain, RETURN, REDIRECT or CT
	toPort   int    // REDIRECT's port
	zone     int    // CT's conntrack zone
}

// String is the rule in iptables-restore form.
func (r rule) String() string {
	var b strings.Builder
	b.WriteString("-A " + r.chain)
	if r.src != "" {
		b.WriteString(" -s " + r.src)
	}
	if r.dst != "" {
		if r.notDst {
			b.WriteString(" !")
		}
		b.WriteString(" -d " + r.dst)
	}
	if r.outLo {
		b.WriteString(" -o lo")
	}
	if r.tcp {
		b.WriteString(" -p tcp")
	}
	if r.udp {
		b.WriteString(" -p udp")
	}
	if r.sport != "" {
		b.WriteString(" --sport " + r.sport)
	}
	if r.dport != "" {
		if r.notDport {
			b.WriteString(" !")
		}
		b.WriteString(" --dport " + r.dport)
	}
	if r.owner != "" {
		b.WriteString(" -m owner")
		if r.notOwner {
			b.WriteString(" !")
		}
		fmt.Fprintf(&b, " --%s-owner %d", r.owner, r.ownerID)
	}
	b.WriteString(" -j " + r.target)
	switch r.target {
	case "REDIRECT":
		fmt.Fprintf(&b, " --to-ports %d", r.toPort)
	case "CT":
		fmt.Fprintf(&b, " --zone %d", r.zone)
	}
	return b.String()
}

// owner is a match on the socket's uid or gid.
type owner struct {
	kind string // "uid" or "gid"
	id   int
}

// owners are the proxy's uid and gid, whose traffic is the proxy's own.
func (c Config) owners() []owner { return []owner{{"uid", c.ProxyUID}, {"gid", c.ProxyGID}} }

// chains are Istio's, in the order they are declared.
func (c Config) chains() []string {
	out := []string{chainInbound, chainInRedirect, chainOutput, chainRedirect}
	if len(c.DNSServers) > 0 {
		out = append(out, chainOutputDNS)
	}
	return out
}

// dnsRules send the app's queries to its resolvers to the proxy's DNS:
// UDP from a chain of its own (the outbound TCP chain sees only TCP),
// TCP in ISTIO_OUTPUT after the proxy's own traffic has returned. The
// proxy's own queries (uid and gid 1337) go to the resolvers as sent.
func (c Config) dnsRules() []rule {
	var out []rule
	for _, o := range c.owners() {
		out = append(out, rule{chain: chainOutputDNS, udp: true, dport: "53", owner: o.kind, ownerID: o.id, target: "RETURN"})
	}
	for _, ns := range c.DNSServers {
		out = append(out, rule{chain: chainOutputDNS, dst: ns + "/32", udp: true, dport: "53", target: "REDIRECT", toPort: c.DNSPort})
	}
	return out
}

// rules is Istio's capture for this configuration, in order.
func (c Config) rules() []rule {
	var out []rule
	add := func(r rule) { out = append(out, r) }
	add(rule{chain: chainInRedirect, tcp: true, target: "REDIRECT", toPort: c.InboundPort})
	add(rule{chain: chainRedirect, tcp: true, target: "REDIRECT", toPort: c.OutboundPort})
	// Inbound.
	add(rule{chain: chainInbound, tcp: true, dport: "15008", target: "RETURN"})
	for _, p := range c.ExcludeInboundPorts {
		add(rule{chain: chainInbound, tcp: true, dport: strconv.Itoa(p), target: "RETURN"})
	}
	for _, p := range c.InboundPorts {
		if p == "*" {
			add(rule{chain: chainInbound, tcp: true, target: chainInRedirect})
			break
		}
		add(rule{chain: chainInbound, tcp: true, dport: p, target: chainInRedirect})
	}
	// Outbound.
	add(rule{chain: chainOutput, src: InboundPassthroughSource + "/32", outLo: true, target: "RETURN"})
	for _, o := range c.owners() {
		// The app calling its own pod through a service VIP comes back in.
		add(rule{chain: chainOutput, dst: "127.0.0.1/32", notDst: true, outLo: true, tcp: true, dport: "15008", notDport: true, owner: o.kind, ownerID: o.id, target: chainInRedirect})
		add(rule{chain: chainOutput, outLo: true, owner: o.kind, ownerID: o.id, notOwner: true, target: "RETURN"})
		add(rule{chain: chainOutput, owner: o.kind, ownerID: o.id, target: "RETURN"})
	}
	for _, ns := range c.DNSServers {
		add(rule{chain: chainOutput, dst: ns + "/32", tcp: true, dport: "53", target: "REDIRECT", toPort: c.DNSPort})
	}
	add(rule{chain: chainOutput, dst: "127.0.0.1/32", target: "RETURN"})
	for _, p := range c.ExcludeOutboundPorts {
		add(rule{chain: chainOutput, tcp: true, dport: strconv.Itoa(p), target: "RETURN"})
	}
	for _, cidr := range c.ExcludeOutboundCIDRs {
		add(rule{chain: chainOutput, dst: cidr, target: "RETURN"})
	}
	for _, p := range c.IncludeOutboundPorts {
		add(rule{chain: chainOutput, tcp: true, dport: strconv.Itoa(p), target: chainRedirect})
	}
	for _, cidr := range c.OutboundCIDRs {
		if cidr == "*" {
			add(rule{chain: chainOutput, target: chainRedirect})
			break
		}
		add(rule{chain: chainOutput, dst: cidr, target: chainRedirect})
	}
	if len(c.DNSServers) > 0 {
		out = append(out, c.dnsRules()...)
	}
	return out
}

// rawRules put UDP DNS in two conntrack zones, as Istio does: the
// proxy's queries to the resolvers and their answers in zone 1, the
// app's queries (redirected to the proxy) and the proxy's answers in
// zone 2. In one zone, an app's and the proxy's flows to the resolver
// with the same source port would race for one conntrack entry.
func (c Config) rawRules() []rule {
	var out []rule
	for _, o := range c.owners() {
		out = append(out,
			rule{chain: chainOutputDNS, udp: true, dport: "53", owner: o.kind, ownerID: o.id, target: "CT", zone: 1},
			rule{chain: chainOutputDNS, udp: true, sport: strconv.Itoa(c.DNSPort), owner: o.kind, ownerID: o.id, target: "CT", zone: 2})
	}
	for _, ns := range c.DNSServers {
		out = append(out,
			rule{chain: chainOutputDNS, dst: ns + "/32", udp: true, dport: "53", target: "CT", zone: 2},
			rule{chain: chainInbound, src: ns + "/32", udp: true, sport: "53", target: "CT", zone: 1})
	}
	return out
}

// rawHooks jump into the raw table's chains (DNS capture only).
func (c Config) rawHooks() []rule {
	return []rule{{chain: "OUTPUT", udp: true, target: chainOutputDNS}, {chain: "PREROUTING", udp: true, target: chainInbound}}
}

// Rules renders the nat table (and with DNS capture the raw table) in
// iptables-restore form. Declaring a chain flushes it, so restoring with
// --noflush replaces exactly Istio's chains.
func (c Config) Rules() string {
	var b strings.Builder
	b.WriteString("*nat\n")
	for _, ch := range c.chains() {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	for _, r := range c.rules() {
		b.WriteString(r.String() + "\n")
	}
	b.WriteString("COMMIT\n")
	if len(c.DNSServers) > 0 {
		b.WriteString("*raw\n")
		for _, ch := range []string{chainInbound, chainOutputDNS} {
			fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
		}
		for _, r := range c.rawRules() {
			b.WriteString(r.String() + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// hooks jump from the built-in chains into Istio's.
func (c Config) hooks() []rule {
	out := []rule{
		{chain: "PREROUTING", tcp: true, target: chainInbound},
		{chain: "OUTPUT", tcp: true, target: chainOutput},
	}
	if len(c.DNSServers) > 0 {
		out = append(out, rule{chain: "OUTPUT", udp: true, target: chainOutputDNS})
	}
	return out
}

// Apply installs the rules in the current network namespace: with
// iptables-restore where the image has it (as Istio's proxyv2 image does),
// else through nftables' netlink API in table NFTTable, since the isthmus
// image is the static binary alone.
func (c Config) Apply() error {
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return c.applyNFT()
	}
	if err := run(strings.NewReader(c.Rules()), "iptables-restore", "--noflush", "--wait"); err != nil {
		return err
	}
	hooks := map[string][]rule{"nat": c.hooks()}
	if len(c.DNSServers) > 0 {
		hooks["raw"] = c.rawHooks()
	}
	for _, table := range []string{"nat", "raw"} {
		for _, h := range hooks[table] {
			j := strings.Fields(h.String())[1:] // without "-A"
			check := append([]string{"-t", table, "--wait", "-C"}, j...)
			if run(nil, "iptables", check...) == nil {
				continue
			}
			if err := run(nil, "iptables", append([]string{"-t", table, "--wait", "-A"}, j...)...); err != nil {
				return err
			}
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
