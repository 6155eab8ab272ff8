package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/version"
)

func newVersionCmd() *cobra.Command {
	var cf clusterFlags
	var remote bool
	var istioNS string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version of this binary, the control plane and the proxies",
		Long: `Print the version of this binary and, with --remote (the default when a
--context or --kubeconfig is given), of the control plane of that cluster and
of every proxy it serves.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "client version: %s (%s, %s/%s)\n", version.String(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			if !cmd.Flags().Changed("remote") {
				remote = cf.context != "" || cf.kubeconfig != ""
			}
			if !remote {
				return nil
			}
			return writeMeshVersions(cmd, &cf, istioNS)
		},
	}
	cf.add(cmd)
	cmd.Flags().BoolVar(&remote, "remote", false, "also ask the cluster for the control plane's and proxies' versions")
	cmd.Flags().StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "namespace of the control plane")
	return cmd
}
