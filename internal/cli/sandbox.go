//go:build linux

package cli

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/sandbox"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
)

// sandboxFlags are shared by the sandbox subcommands.
type sandboxFlags struct {
	stateDir string
	config   string
}

func (f *sandboxFlags) open(cmd *cobra.Command) (*sandbox.Sandbox, error) {
	layout := sandbox.Layout{Dir: f.stateDir}
	path := f.config
	if path == "" {
		// Commands on a running sandbox use the clusters it was started with.
		if _, err := os.Stat(layout.ConfigFile()); err == nil {
			path = layout.ConfigFile()
		}
	}
	cfg, err := sandbox.LoadConfig(path)
	if err != nil {
		return nil, err
	}
	return &sandbox.Sandbox{
		Layout:   layout,
		Config:   cfg,
		CacheDir: kubebin.CacheDir(),
		Progress: func(line string) { fmt.Fprintln(cmd.ErrOrStderr(), line) },
	}, nil
}

func newSandboxCmd() *cobra.Command {
	f := &sandboxFlags{}
	cmd := &cobra.Command{
		Use:   "sandbox",
		Short: "Run real Kubernetes clusters on isolated networks on this machine",
		Long: `The sandbox runs real Kubernetes clusters (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, built from Kubernetes ` + kubebin.Version + `) on one
Linux machine, each inside its own network namespace, so the multicluster
walkthrough runs without Docker or a cloud. By default it runs the seed's two
clusters: cluster-eks on network1 and cluster-aks on network2.

Each cluster's API server is published on the sandbox's internet segment
(198.18.0.0/15), which the host reaches through the veth isthmus0; cluster N
owns 198.18.N.0/24 and its API server is https://198.18.N.1:6443.
LoadBalancer Services get addresses of that /24; a cluster configured with
loadBalancer: hostname (cluster-eks by default, as EKS) publishes them by a
name under elb.isthmus.test only, which the sandbox's DNS at 198.18.0.2
answers (dig @198.18.0.2 NAME).

Needs root. Kubernetes binaries are built once per machine from the Go
module proxy (about 9 minutes on 2 cores) and cached under $ISTHMUS_CACHE
(default ` + kubebin.DefaultCacheDir + `).`,
	}
	cmd.PersistentFlags().StringVar(&f.stateDir, "state-dir", sandbox.DefaultStateDir, "directory for certificates, data, logs and the kubeconfig")
	cmd.PersistentFlags().StringVar(&f.config, "config", "", "YAML file listing the clusters (default: cluster-eks/network1 and cluster-aks/network2)")
	cmd.AddCommand(newSandboxUpCmd(f), newSandboxDownCmd(f), newSandboxStatusCmd(f), newSandboxKubeconfigCmd(f), newSandboxPrepareCmd(), newSandboxNodeCmd(), newSandboxContainerRunCmd(), newSandboxLoadCmd(f), newSandboxRegistryCmd(), newSandboxCloudCmd(f), newSandboxHostCmd())
	return cmd
}

func newSandboxUpCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Start the clusters (idempotent: running components are left alone)",
		Long: `Start the clusters and wait until each serves requests. Running components
are left alone and crashed ones restarted, so up is also how a stopped
component comes back.

Without --config, up starts the seed's two clusters, or resumes the clusters
the sandbox in --state-dir was started with. With --config naming a cluster
list that keeps the running clusters in their order and adds some after
them, the new clusters join the running ones (a mesh across the others goes
on serving); a list that leaves out the last ones removes those clusters
(their processes, pods, networks and data). Any other change is refused
while the sandbox runs.`,
		Example: `  isthmus sandbox up
  export KUBECONFIG=$(isthmus sandbox kubeconfig --path)
  kubectl --context cluster-aks get namespaces

  # a third cluster on its own network, beside the running two
  cat > three.yaml <<EOF
  clusters:
  - {name: cluster-eks, network: network1, region: us-east-1, zone: us-east-1a, loadBalancer: hostname}
  - {name: cluster-aks, network: network2, region: eastus, zone: eastus-1}
  - {name: cluster-gke, network: network3, region: us-central1, zone: us-central1-a}
  EOF
  isthmus sandbox up --config three.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := f.open(cmd)
			if err != nil {
				return err
			}
			if err := sb.Up(cmd.Context()); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "kubeconfig: %s (contexts:", sb.Layout.Kubeconfig())
			for _, c := range sb.Config.Clusters {
				fmt.Fprintf(out, " %s", c.Name)
			}
			fmt.Fprintf(out, ")\nkubectl:    %s\n", kubebin.Set{Dir: kubebin.CacheDir() + "/kube/" + kubebin.Version + "/bin"}.Path("kubectl"))
			fmt.Fprintln(out, "stop with: isthmus sandbox down")
			return nil
		},
	}
}

func newSandboxDownCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Stop every sandbox process and remove its namespaces, links and state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := f.open(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			if err := sb.Down(ctx); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "sandbox removed")
			return nil
		},
	}
}

func newSandboxStatusCmd(f *sandboxFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each cluster component, its process and its health",
		Long:  "Show each cluster component, its process and its health. Exits 1 when any component is not healthy.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := f.open(cmd)
			if err != nil {
				return err
			}
			rows := sb.Status(cmd.Context())
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CLUSTER\tNETWORK\tCOMPONENT\tPID\tSTATE\tDETAIL")
			healthy := true
			for _, r := range rows {
				state := "healthy"
				switch {
				case !r.Running:
					state, healthy = "stopped", false
				case !r.Healthy:
					state, healthy = "unhealthy", false
				}
				pid := "-"
				if r.PID > 0 {
					pid = fmt.Sprint(r.PID)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Cluster, r.Network, r.Component, pid, state, r.Detail)
			}
			tw.Flush()
			if !healthy {
				return exitCodeError{code: 1}
			}
			return nil
		},
	}
}

func newSandboxKubeconfigCmd(f *sandboxFlags) *cobra.Command {
	var path bool
	var cluster string
	cmd := &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print the sandbox's admin kubeconfig (or its path)",
		Example: `  isthmus sandbox kubeconfig > ~/.kube/isthmus
  export KUBECONFIG=$(isthmus sandbox kubeconfig --path)
  isthmus sandbox kubeconfig --cluster cluster-aks`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sb, err := f.open(cmd)
			if err != nil {
				return err
			}
			kc := sb.Layout.Kubeconfig()
			if _, err := os.Stat(kc); err != nil {
				return fmt.Errorf("no kubeconfig at %s: is the sandbox up? (isthmus sandbox up)", kc)
			}
			if path && cluster == "" {
				fmt.Fprintln(cmd.OutOrStdout(), kc)
				return nil
			}
			cfg, err := clientcmd.LoadFromFile(kc)
			if err != nil {
				return fmt.Errorf("read %s: %w", kc, err)
			}
			if cluster != "" {
				if _, _, err := sb.Config.Cluster(cluster); err != nil {
					return err
				}
				for name := range cfg.Contexts {
					if name != cluster {
						delete(cfg.Contexts, name)
						delete(cfg.Clusters, name)
						delete(cfg.AuthInfos, name)
					}
				}
				cfg.CurrentContext = cluster
			}
			b, err := clientcmd.Write(*cfg)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	cmd.Flags().BoolVar(&path, "path", false, "print the kubeconfig's path instead of its content")
	cmd.Flags().StringVar(&cluster, "cluster", "", "print only this cluster's context")
	return cmd
}

func newSandboxPrepareCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "prepare",
		Short: "Build and cache the Kubernetes binaries without starting anything",
		Long: `Build and cache the Kubernetes ` + kubebin.Version + ` and etcd binaries the sandbox runs.
` + "`sandbox up`" + ` does this itself when needed; CI calls it first so that the slow
cold build (about 9 minutes on 2 cores) is not counted against test timeouts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set, err := kubebin.Ensure(cmd.Context(), kubebin.CacheDir(), func(line string) { fmt.Fprintln(cmd.ErrOrStderr(), line) })
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), set.Dir)
			return nil
		},
	}
}
