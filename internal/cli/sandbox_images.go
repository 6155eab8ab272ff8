//go:build linux

package cli

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/sandbox"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/registry"
)

// newSandboxLoadCmd pushes built images into the running sandbox.
func newSandboxLoadCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "load [OCI-LAYOUT]",
		Short: "Push images (make image's OCI layout) into the sandbox's registry, where its nodes pull docker.io images",
		Long: `Push every image of an OCI image layout into the sandbox's registry
(` + sandbox.RegistryAddr.String() + ` on its internet segment). The nodes pull docker.io
images through it, so a pod naming isthmus/isthmus:TAG runs the pushed image.
The default layout is dist/image/oci, what make image writes.`,
		Example: `  make image
  isthmus sandbox load dist/image/oci`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := f.open(cmd); err != nil {
				return err
			}
			dir := "dist/image/oci"
			if len(args) == 1 {
				dir = args[0]
			}
			loaded, err := sandbox.Load(cmd.Context(), dir)
			if err != nil {
				return err
			}
			for _, l := range loaded {
				fmt.Fprintf(cmd.OutOrStdout(), "%s@%s\n", l.Ref, l.Digest)
			}
			return nil
		},
	}
}

// newSandboxRegistryCmd is the registry process `sandbox up` starts in the
// internet namespace. Not for direct use, hence hidden.
func newSandboxRegistryCmd() *cobra.Command {
	s := &registry.Server{}
	cmd := &cobra.Command{
		Use:    "registry",
		Short:  "Serve the sandbox's OCI registry (started by sandbox up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s.Log = slog.Default()
			return s.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&s.Dir, "dir", "", "registry storage")
	cmd.Flags().StringVar(&s.Listen, "listen", sandbox.RegistryAddr.String(), "address to serve on")
	return cmd
}
