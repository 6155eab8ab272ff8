package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/install"
)

// installFlags are what install, uninstall and manifest generate share.
type installFlags struct {
	files []string
	sets  []string
}

func (f *installFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVarP(&f.files, "filename", "f", nil, "IstioOperator file (install.istio.io/v1alpha1); repeat to overlay, later files win")
	cmd.Flags().StringArrayVarP(&f.sets, "set", "s", nil, "override one field, e.g. --set values.global.network=network1 or --set profile=minimal")
}

// load reads the files and prints the warnings; no file means the default profile.
func (f *installFlags) load(stderr io.Writer) (*install.Loaded, error) {
	var l *install.Loaded
	var err error
	if len(f.files) == 0 {
		l, err = install.Parse([]byte("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"))
		if err == nil && len(f.sets) > 0 {
			err = errors.New("--set needs a file (-f) to apply to; use -f with a file that has the fields")
		}
	} else {
		l, err = install.Load(f.files, f.sets)
	}
	if err != nil {
		return nil, err
	}
	for _, w := range l.Warnings {
		fmt.Fprintf(stderr, "! %s\n", w)
	}
	return l, nil
}

// render loads the files and renders the install's objects.
func (f *installFlags) render(stderr io.Writer) (*install.Loaded, []install.Part, error) {
	l, err := f.load(stderr)
	if err != nil {
		return nil, nil, err
	}
	parts, err := install.Render(l)
	return l, parts, err
}

func newInstallCmd() *cobra.Command {
	var f installFlags
	var kubeconfig, kubeContext string
	var yes bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "install [-f FILE]... [--set path=value]... [--context CTX] [-y]",
		Short: "Install the mesh into a cluster from IstioOperator files",
		Long: `Install the mesh into one cluster from IstioOperator files, as istioctl install does.

Profiles: default (control plane and istio-ingressgateway), minimal (control
plane), remote (a cluster served by another cluster's control plane: the istiod
Service pointing at values.global.remotePilotAddress, the injection webhook and
the reader account create-remote-secret uses) and empty (only what the file
turns on, such as an east-west gateway). Every profile but empty also installs
Istio's CRDs.

remotePilotAddress is the primary's east-west gateway: an IP, or a load
balancer's DNS name (EKS). For a name, the primary's control plane resolves it
every 30 s and rewrites the remote's istiod endpoints (the reader account may
update that one EndpointSlice), so the remote follows the load balancer's
addresses as they change (a ValidatingAdmissionPolicy keeps the rest of the
slice fixed; the name must be the primary's own load balancer's).

Read: meshConfig; values.global.meshID, multiCluster.clusterName, network,
remotePilotAddress, proxy.privileged, hub, tag, meshNetworks;
values.istiodRemote.injectionPath (or injectionURL);
values.gateways.istio-ingressgateway.injectionTemplate, serviceAnnotations, type;
values.pilot.autoscaleEnabled, autoscaleMin, autoscaleMax, replicaCount,
cpu.targetAverageUtilization, resources (Istio's defaults: an autoscaler from 1
to 5 replicas, a PodDisruptionBudget when the floor is above 1; the replicas
elect one leader for their writes with the Lease isthmus-leader);
components.base/pilot/istiodRemote.enabled, components.pilot.k8s.env,
components.pilot.k8s.replicaCount;
components.ingressGateways[] (name, namespace, enabled, label, k8s.env,
k8s.replicaCount, k8s.podAnnotations, k8s.serviceAnnotations, k8s.service: type,
ports, loadBalancerSourceRanges, externalTrafficPolicy).
Any other field is named in a warning and ignored; a wrong type is an error.

Objects are applied with server-side apply (field manager isthmus-installer),
so running it again is safe; it waits until each component is ready.`,
		Example: `  isthmus install -f cluster-eks-primary.yaml --context cluster-eks -y
  isthmus install -f east-west-gateway-cluster-eks.yaml --context cluster-eks -y
  isthmus install -f cluster-aks-remote.yaml --set values.global.remotePilotAddress=$(isthmus gateway address --context cluster-eks) --context cluster-aks`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, parts, err := f.render(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			if err := confirm(cmd, yes, fmt.Sprintf("This will install the isthmus %s profile into the cluster %s. Proceed? (y/N) ", l.ProfileName(), rc.Host)); err != nil {
				return err
			}
			c, err := install.NewCluster(rc, cmd.OutOrStdout(), timeout)
			if err != nil {
				return err
			}
			return c.Install(cmd.Context(), parts)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().StringVar(&kubeContext, "context", "", "kubeconfig context of the cluster")
	cmd.Flags().BoolVarP(&yes, "skip-confirmation", "y", false, "do not ask before installing")
	cmd.Flags().DurationVar(&timeout, "readiness-timeout", 5*time.Minute, "how long to wait for each component to be ready")
	return cmd
}

func newUninstallCmd() *cobra.Command {
	var f installFlags
	var kubeconfig, kubeContext string
	var yes, purge bool
	cmd := &cobra.Command{
		Use:   "uninstall (-f FILE... | --purge) [--context CTX] [-y]",
		Short: "Remove what install installed",
		Long: `Remove from one cluster the objects the given IstioOperator files install, or with
--purge every object isthmus install made there (found by Istio's label
operator.istio.io/component), and Istio's CRDs with all Istio configuration.
Namespaces stay. Without --purge, CRDs stay too.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !purge && len(f.files) == 0 {
				return errors.New("say what to remove: -f FILE (the files you installed) or --purge (everything isthmus installed)")
			}
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			var parts []install.Part
			if !purge {
				if _, parts, err = f.render(cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			if err := confirm(cmd, yes, fmt.Sprintf("This will remove the mesh from the cluster %s. Proceed? (y/N) ", rc.Host)); err != nil {
				return err
			}
			c, err := install.NewCluster(rc, cmd.OutOrStdout(), time.Minute)
			if err != nil {
				return err
			}
			if purge {
				return c.Purge(cmd.Context(), true)
			}
			return c.Delete(cmd.Context(), parts, false)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	cmd.Flags().StringVar(&kubeContext, "context", "", "kubeconfig context of the cluster")
	cmd.Flags().BoolVarP(&yes, "skip-confirmation", "y", false, "do not ask before removing")
	cmd.Flags().BoolVar(&purge, "purge", false, "remove everything isthmus installed, CRDs included")
	return cmd
}

func newManifestCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "manifest", Short: "Print what install would apply"}
	var f installFlags
	gen := &cobra.Command{
		Use:   "generate [-f FILE]... [--set path=value]...",
		Short: "Print the Kubernetes objects of an install as YAML, without a cluster",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, parts, err := f.render(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			b, err := install.YAML(parts)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	f.add(gen)
	cmd.AddCommand(gen)
	return cmd
}

// confirm asks a yes/no question on the command's input unless yes, and
// says "cancelled" unless the answer is yes.
func confirm(cmd *cobra.Command, yes bool, question string) error {
	if yes {
		return nil
	}
	fmt.Fprint(cmd.OutOrStdout(), question)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(line)); a == "y" || a == "yes" {
		return nil
	}
	fmt.Fprintln(cmd.OutOrStdout())
	return errors.New("cancelled (pass -y to skip this question)")
}
