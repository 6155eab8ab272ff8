package cli

import "github.com/spf13/cobra"

// linuxCommands are the commands that need Linux: the proxy (iptables
// capture, original destinations, raw sockets) and the sandbox (network
// namespaces, netlink). Their files carry a linux build constraint, so the
// binaries for other systems hold only the operator commands.
func linuxCommands() []*cobra.Command {
	return []*cobra.Command{newProxyCmd(), newSandboxCmd()}
}
