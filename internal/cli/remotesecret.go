package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
)

// restConfig loads a kubeconfig as kubectl does: --kubeconfig, else
// in-cluster, else $KUBECONFIG or ~/.kube/config; --context picks one.
func restConfig(kubeconfig, kubeContext string) (*rest.Config, error) {
	// In a pod with nothing said, its service account (client-go would try
	// ~/.kube/config first, which a non-root container may not read).
	if kubeconfig == "" && kubeContext == "" && os.Getenv("KUBECONFIG") == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		if rc, err := rest.InClusterConfig(); err == nil {
			return rc, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return rc, nil
}

func newCreateRemoteSecretCmd() *cobra.Command {
	opts := remotesecret.CreateOptions{}
	var kubeconfig, kubeContext string
	cmd := &cobra.Command{
		Use:   "create-remote-secret",
		Short: "Print the Secret that lets the primary's control plane watch this remote cluster",
		Long: `Print, as istioctl create-remote-secret does, a Secret in Istio's format: label
istio/multiCluster=true, one data key named after the remote cluster holding a
kubeconfig with a long-lived token of the remote's istio-reader-service-account.
Run it against the REMOTE cluster and apply the output to the PRIMARY:

  isthmus create-remote-secret --context cluster-aks --name cluster-aks | kubectl --context cluster-eks apply -f -

--name must be the remote's cluster ID (its multiCluster.clusterName). The
reader account and its least-privilege ClusterRole are created in the remote
if missing (--create-service-account=false to refuse instead).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			if opts.Server == "" {
				opts.Server = rc.Host
			}
			opts.Client, err = kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			out, warnings, err := remotesecret.Create(cmd.Context(), opts)
			if err != nil {
				return err
			}
			for _, w := range warnings {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Name, "name", "", "the remote's cluster ID (default: its kube-system namespace UID)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the remote (default: $KUBECONFIG, ~/.kube/config)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context of the remote")
	f.StringVar(&opts.Server, "server", "", "API server URL the primary dials (default: the context's)")
	f.StringVar(&opts.TLSServerName, "tls-server-name", "", "server name to verify the remote's API server certificate with")
	f.StringVarP(&opts.Namespace, "namespace", "n", "istio-system", "namespace of the Secret and the reader account")
	f.StringVar(&opts.ServiceAccount, "service-account", remotesecret.ReaderServiceAccount, "the remote's account the control plane uses")
	f.BoolVar(&opts.CreateServiceAccount, "create-service-account", true, "create the reader account and its ClusterRole when missing")
	return cmd
}

// newExperimentalCmd is istioctl's `x`, where create-remote-secret also lives.
func newExperimentalCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "x", Aliases: []string{"experimental"}, Short: "Commands istioctl keeps under x (experimental)"}
	cmd.AddCommand(newCreateRemoteSecretCmd())
	return cmd
}

// contextNamespace is the namespace a kubeconfig context names, else "default".
func contextNamespace(kubeconfig, kubeContext string) string {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	ns, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).Namespace()
	if err != nil || ns == "" {
		return "default"
	}
	return ns
}
