//go:build linux

package cli

import (
	"log/slog"

	"github.com/spf13/cobra"
)

// newSandboxCloudCmd is the cloud process `sandbox up` starts in the
// internet namespace: hostname load balancers and the internet DNS, for the
// sandbox in --state-dir. Not for direct use, hence hidden.
func newSandboxCloudCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:    "cloud",
		Short:  "Serve the sandbox's hostname load balancers and internet DNS (started by sandbox up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := f.open(cmd)
			if err != nil {
				return err
			}
			c, err := sb.Cloud(slog.Default())
			if err != nil {
				return err
			}
			return c.Run(cmd.Context())
		},
	}
}
