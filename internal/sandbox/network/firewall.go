package network

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
)

// ConfigureNode installs the node namespace's own rules, beside kube-proxy's:
// traffic leaving for the internet segment is masqueraded to the node address
// (pod ranges overlap between clusters, as a cloud NAT gateway would hide
// them), and from the internet only the API server port and replies come in;
// LoadBalancer traffic is forwarded to pods, not delivered to the node: to
// its address, or (hostname load balancers, which the internet namespace
// forwards) to the node's NodePorts, kube-proxy rewrites it in PREROUTING,
// before INPUT could drop it.
func ConfigureNode(nodeNS string, apiPort int) error {
	rules := []struct {
		table, chain string
		args         []string
	}{
		{"nat", "POSTROUTING", []string{"-j", "ISTHMUS-POSTROUTING"}},
		{"nat", "ISTHMUS-POSTROUTING", []string{"-o", uplink, "-j", "MASQUERADE"}},
		{"filter", "INPUT", []string{"-j", "ISTHMUS-INPUT"}},
		{"filter", "ISTHMUS-INPUT", []string{"-i", uplink, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"}},
		{"filter", "ISTHMUS-INPUT", []string{"-i", uplink, "-p", "tcp", "--dport", strconv.Itoa(apiPort), "-j", "ACCEPT"}},
		{"filter", "ISTHMUS-INPUT", []string{"-i", uplink, "-j", "DROP"}},
	}
	return Do(nodeNS, func() error {
		for _, chain := range []struct{ table, name string }{{"nat", "ISTHMUS-POSTROUTING"}, {"filter", "ISTHMUS-INPUT"}} {
			if err := iptables("-t", chain.table, "-S", chain.name); err != nil {
				if err := iptables("-t", chain.table, "-N", chain.name); err != nil {
					return err
				}
			}
		}
		for _, r := range rules {
			check := append([]string{"-t", r.table, "-C", r.chain}, r.args...)
			if iptables(check...) == nil {
				continue
			}
			if err := iptables(append([]string{"-t", r.table, "-A", r.chain}, r.args...)...); err != nil {
				return err
			}
		}
		return nil
	})
}

// iptables runs the iptables command in the calling thread's namespace.
func iptables(args ...string) error {
	cmd := exec.Command("iptables", append([]string{"-w", "5"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("iptables %v: %w: %s", args, err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
