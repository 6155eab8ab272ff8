// Package cli is the operator-facing command tree of isthmus: it parses
// flags, calls into the packages that do the work, and prints results.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/cliroot"
)

// Execute runs the command line args and returns the process exit code.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ec exitCodeError
		if errors.As(err, &ec) {
			return ec.code
		}
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// exitCodeError ends a command with a specific code after it printed its own report.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit code %d", e.code) }

// logLevel is the process's log level; a proxy's admin port changes it
// (/logging).
var logLevel = new(slog.LevelVar)

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	root := cliroot.New("isthmus", "A multicluster, multi-network service mesh",
		`isthmus joins services in several Kubernetes clusters on different networks into
one mesh: one control plane in a primary cluster, sidecar proxies in every
cluster, east-west gateways between the networks, mutual TLS everywhere.

It reads Istio's configuration (IstioOperator files, Gateway, VirtualService,
DestinationRule, PeerAuthentication, AuthorizationPolicy, remote secrets).`, logLevel, stdout, stderr)
	root.AddCommand(newVersionCmd(), newDiscoveryCmd(), newCreateRemoteSecretCmd(), newExperimentalCmd(), newGatewayCmd(), newInstallCmd(), newAnalyzeCmd(), newProxyConfigCmd(), newProxyStatusCmd(), newRemoteClustersCmd(), newUninstallCmd(), newManifestCmd(), newDemoAppCmd(), newDashboardCmd())
	root.AddCommand(newCheckCmd())
	root.AddCommand(linuxCommands()...)
	cliroot.RefuseUnknown(root)
	return root
}
