package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

func newGatewayCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "gateway", Short: "East-west gateways"}
	var kubeconfig, kubeContext, namespace, name string
	var wait time.Duration
	address := &cobra.Command{
		Use:   "address",
		Short: "Print the east-west gateway's external address (remotePilotAddress for a remote)",
		Long: `Print the address a cluster's east-west gateway is reached at from other
networks, what the walkthrough copies into remotePilotAddress: its LoadBalancer
IP (AKS, GKE), or its LoadBalancer's DNS name where the cloud gives one (EKS).
Give the name as it is: the addresses behind an EKS load balancer change, and
the primary's control plane keeps the remote's istiod endpoints at what the
name resolves to. Waits up to --wait for the load balancer to be provisioned.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			said := false
			for {
				svc, err := client.CoreV1().Services(namespace).Get(ctx, name, metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("no Service %s/%s: install the east-west gateway first", namespace, name)
				}
				if err == nil {
					for _, ing := range svc.Status.LoadBalancer.Ingress {
						if ing.IP != "" {
							fmt.Fprintln(cmd.OutOrStdout(), ing.IP)
							return nil
						}
						if ing.Hostname != "" {
							fmt.Fprintln(cmd.OutOrStdout(), ing.Hostname)
							return nil
						}
					}
				}
				if !said {
					fmt.Fprintf(cmd.ErrOrStderr(), "waiting for the load balancer of %s/%s...\n", namespace, name)
					said = true
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("the Service %s/%s has no load balancer address after %s (is it type LoadBalancer, and does the cluster provision load balancers?)", namespace, name, wait)
				case <-time.After(time.Second):
				}
			}
		},
	}
	f := address.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default: $KUBECONFIG, ~/.kube/config)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context")
	f.StringVarP(&namespace, "namespace", "n", "istio-system", "namespace of the gateway Service")
	f.StringVar(&name, "name", "istio-eastwestgateway", "the gateway Service")
	f.DurationVar(&wait, "wait", time.Minute, "how long to wait for the load balancer")
	cmd.AddCommand(address)
	return cmd
}
