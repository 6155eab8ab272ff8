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

// logLevel is the process's log level; a proxy's admin port changes it
// (/logging).
var logLevel = new(slog.LevelVar)

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
			logLevel.Set(slog.LevelInfo)
			if verbose {
				logLevel.Set(slog.LevelDebug)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel})))
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log debug detail")
	root.AddCommand(newVersionCmd(), newDiscoveryCmd(), newCreateRemoteSecretCmd(), newExperimentalCmd(), newGatewayCmd(), newInstallCmd(), newAnalyzeCmd(), newProxyConfigCmd(), newProxyStatusCmd(), newRemoteClustersCmd(), newUninstallCmd(), newManifestCmd(), newDemoAppCmd(), newDashboardCmd())
	root.AddCommand(newCheckCmd())
	root.AddCommand(linuxCommands()...)
	refuseUnknown(root)
	return root
}

// refuseUnknown makes every command that only groups others fail on a
// word it does not know, as istioctl does: cobra would print the group's
// help and exit 0, so a script's typo (or istioctl's spelling of a command
// isthmus lacks) passed for success.
func refuseUnknown(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknown(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
		if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
			msg += fmt.Sprintf("; did you mean %q?", s[0])
		}
		return fmt.Errorf("%s (run '%s --help' for its commands)", msg, cmd.CommandPath())
	}
}
