//go:build linux

// Package proxycli is the data plane's command line: `proxy init`,
// `proxy sidecar` and `proxy router`. internal/cli adds it to the isthmus
// root; Execute runs it in a root of its own, the isthmus-proxy binary's,
// which links neither the control plane nor Kubernetes' client packages, so
// that a sidecar's memory holds only the proxy's code (README, "Two
// binaries"). Both take the same command lines after the binary's name.
package proxycli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/cliroot"
	"github.com/isthmus-mesh/isthmus/internal/version"
)

// Execute runs args as isthmus-proxy, which takes what `isthmus` takes for
// the proxy (proxy init|sidecar|router, a pod's args unchanged) and
// version, and returns the process exit code.
func Execute(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(new(slog.LevelVar), stdout, stderr)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %v\n", err)
		return 1
	}
	return 0
}

// newRoot is isthmus-proxy's command tree; level is the process's log
// level, which -v sets and the proxy's admin port changes.
func newRoot(level *slog.LevelVar, stdout, stderr io.Writer) *cobra.Command {
	root := cliroot.New("isthmus-proxy", "The isthmus data plane alone: sidecar, gateway and the pod's traffic capture",
		`isthmus-proxy is the proxy of the isthmus mesh without the rest of isthmus
(control plane, installer, Kubernetes clients): the binary the injected
sidecars and gateways of the isthmus image run. Its commands are those of
isthmus proxy, with the same command lines: isthmus-proxy proxy sidecar ...`,
		level, stdout, stderr)
	root.AddCommand(Command(level), newVersionCmd())
	cliroot.RefuseUnknown(root)
	return root
}

// newVersionCmd prints this binary's version; unlike isthmus version, it
// asks no cluster (that needs the Kubernetes client this binary leaves out).
func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "isthmus-proxy version: %s (%s, %s/%s)\n", version.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
