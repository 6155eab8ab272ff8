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

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	var verbose bool
	root := &cobra.Command{
		Use:   "isthmus",
		Short: "A multicluster, multi-network service mesh",
		Long: `isthmus joins services in several Kubernetes clusters on different networks into
one mesh: one control plane in a primary cluster, sidecar proxies in every
cluster, east-west gateways between the networks, mutual TLS everywhere.

It reads Istio's configuration (IstioOperator files, Gateway, VirtualService,
DestinationRule, PeerAuthentication, AuthorizationPolicy, remote secrets).`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail")
	root.AddCommand(newVersionCmd(), newDiscoveryCmd(), newCreateRemoteSecretCmd(), newExperimentalCmd(), newGatewayCmd(), newInstallCmd(), newAnalyzeCmd(), newProxyConfigCmd(), newProxyStatusCmd(), newUninstallCmd(), newManifestCmd(), newDemoAppCmd())
	root.AddCommand(linuxCommands()...)
	return root
}
