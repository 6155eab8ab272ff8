//go:build linux

package cli

import (
	"fmt"
	"net/netip"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// newSandboxHostCmd manages machines outside every cluster (VMs) on the
// sandbox's internet segment.
func newSandboxHostCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "host",
		Short: "Add or delete a machine outside the clusters (a VM) on the internet segment",
		Long: `A host is a network namespace on the sandbox's internet segment, outside every
cluster, as a VM in a cloud network: it reaches the clusters' load balancers
and the sandbox's DNS (198.18.0.2, its resolv.conf), and pods reach it
through their node's NAT; it cannot reach pods. Run its programs with
ip netns exec isthmus-host-NAME ... (see README, "Workloads outside
Kubernetes").`,
	}
	add := &cobra.Command{
		Use:   "add NAME ADDRESS",
		Short: "Create host NAME at ADDRESS (in " + network.Hosts.String() + ")",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			addr, err := netip.ParseAddr(args[1])
			if err != nil {
				return fmt.Errorf("address %q: %w", args[1], err)
			}
			if err := network.EnsureHost(args[0], addr); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "host %s at %s: ip netns exec %s%s COMMAND\n", args[0], addr, network.HostNSPrefix, args[0])
			return nil
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Remove host NAME (stop its programs first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return network.RemoveHost(args[0])
		},
	}
	cmd.AddCommand(add, del)
	return cmd
}
