package cli

import (
	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/proxycli"
)

// linuxCommands are the commands that need Linux: the proxy (iptables
// capture, original destinations, raw sockets) and the sandbox (network
// namespaces, netlink). Their files carry a linux build constraint, so the
// binaries for other systems hold only the operator commands. The proxy's
// tree is internal/proxycli's, which the isthmus-proxy binary runs alone.
func linuxCommands() []*cobra.Command {
	return []*cobra.Command{proxycli.Command(logLevel), newSandboxCmd()}
}
