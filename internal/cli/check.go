package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/check"
	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

func newCheckCmd() *cobra.Command {
	var kubeconfig, kubeContext, istioNS, output string
	var remoteContexts []string
	var probe bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check [--context PRIMARY] [--remote-contexts A,B]",
		Short: "Say whether the mesh is healthy across every cluster",
		Long: `Check the mesh across every cluster and say whether it is healthy: a table of
each check in each cluster (ok, warning, error, skipped, or unknown when the
control plane does not answer), then each finding with a stable code, what is
wrong and a fix, then a verdict. Exit code 2 when an error is found (warnings
alone exit 0), 1 when the check could not run.

Checks: the control plane (istiod's replicas, each pod's /ready, the leader
Lease isthmus-leader) and the proxies' sync state from each replica
(ControlPlaneUnavailable, ControlPlaneDegraded, NoLeader, ProxyConfigRejected,
ProxyNotSynced); the remote clusters the control plane watches
(RemoteClusterStale, RemoteClusterRefused, RemoteClusterNotSynced,
RemoteSecretMissing, RemoteContextUnknown); east-west gateways of every
network (EastWestGatewayMissing, EastWestGatewayNoAddress,
EastWestGatewayNotReady); the CA's root against istio-ca-root-cert in every
namespace with injected pods, and up to 20 proxies' workload certificates per
cluster (RootCertMissing, RootCertMismatch, RootCertExpiring,
WorkloadCertExpiring); the injection webhook as each API server reaches it,
with a server-side dry-run pod (InjectionUnavailable, InjectionNotApplied);
and, with --probe, a demo app in every cluster's namespace isthmus-check called
from every cluster until each cluster answered (CrossNetworkUnreachable,
ProbeFailed; the namespace is deleted afterwards). ClusterUnreachable and
CheckFailed: a cluster or an object the check could not read.

The remote clusters are the remote secrets' clusters, each read through the
kubeconfig context whose server is the secret's (else the context named after
the cluster ID); --remote-contexts names them instead.`,
		Example: `  isthmus check --context cluster-eks
  isthmus check --context cluster-eks --remote-contexts cluster-aks -o json
  isthmus check --context cluster-eks --probe=false`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			stderr := cmd.ErrOrStderr()
			mesh, err := checkMesh(ctx, kubeconfig, kubeContext, istioNS, remoteContexts)
			if err != nil {
				return err
			}
			for _, c := range mesh.Remotes {
				switch {
				case c.Client == nil:
					fmt.Fprintf(stderr, "check: cluster %s (secret %s, server %s): no kubeconfig context matches\n", c.Name(), c.Secret, c.Server)
				case c.Secret == "":
					fmt.Fprintf(stderr, "check: context %s (server %s): no remote secret names it\n", c.Context, c.Server)
				default:
					fmt.Fprintf(stderr, "check: cluster %s: context %s (matched by %s)\n", c.Name(), c.Context, c.Matched)
				}
			}
			report, err := check.Run(ctx, mesh, check.Options{Probe: probe, Progress: stderr})
			if err != nil {
				return err
			}
			if output == "json" {
				err = report.WriteJSON(cmd.OutOrStdout())
			} else {
				err = report.WriteTable(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if code := report.ExitCode(); code != 0 {
				return exitCodeError{code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context of the primary cluster (default: the current context)")
	f.StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "namespace of the control plane")
	f.StringSliceVar(&remoteContexts, "remote-contexts", nil, "kubeconfig contexts of the remote clusters (default: for each remote secret, the context of its server)")
	f.StringVarP(&output, "output", "o", "table", "table or json")
	f.BoolVar(&probe, "probe", true, "run the cross-network probe (pods in the namespace isthmus-check of every cluster)")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "how long the whole check may take")
	cmd.AddCommand(newCheckProbeCmd())
	return cmd
}

// checkMesh connects to the primary, reads its remote secrets and pairs
// each with a kubeconfig context.
func checkMesh(ctx context.Context, kubeconfig, kubeContext, istioNS string, remoteContexts []string) (*check.Mesh, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	var contexts []check.KubeContext
	primaryCtx := kubeContext
	if raw, err := rules.Load(); err == nil {
		if primaryCtx == "" {
			primaryCtx = raw.CurrentContext
		}
		for name, kc := range raw.Contexts {
			server := ""
			if cl := raw.Clusters[kc.Cluster]; cl != nil {
				server = cl.Server
			}
			contexts = append(contexts, check.KubeContext{Name: name, Server: server})
		}
		sort.Slice(contexts, func(i, j int) bool { return contexts[i].Name < contexts[j].Name })
	}
	connect := func(name string) (*inspect.Cluster, error) {
		rc, err := restConfig(kubeconfig, name)
		if err != nil {
			return nil, err
		}
		// The check reads many objects at once; client-go's default 5 QPS
		// would make it crawl.
		rc.QPS, rc.Burst = 50, 100
		return inspect.NewCluster(rc, istioNS)
	}
	p, err := connect(kubeContext)
	if err != nil {
		return nil, err
	}
	mesh := &check.Mesh{Namespace: istioNS, ExplicitContexts: len(remoteContexts) > 0,
		Primary: &check.Cluster{Context: primaryCtx, Server: p.Config.Host, Client: p.Client, Pods: p}}
	secrets, err := check.RemoteSecrets(ctx, p.Client, istioNS)
	if err != nil {
		return nil, err
	}
	var explicit []string
	for _, c := range remoteContexts {
		if c = strings.TrimSpace(c); c != "" {
			explicit = append(explicit, c)
		}
	}
	matches, err := check.MatchContexts(secrets, contexts, primaryCtx, explicit)
	if err != nil {
		return nil, err
	}
	for _, m := range matches {
		c := &check.Cluster{ID: m.ID, Context: m.Context, Server: m.Server, Secret: m.Secret, Matched: m.How}
		if m.Context != "" {
			rc, err := connect(m.Context)
			if err != nil {
				return nil, fmt.Errorf("context %s: %w", m.Context, err)
			}
			c.Client, c.Pods = rc.Client, rc
		}
		mesh.Remotes = append(mesh.Remotes, c)
	}
	return mesh, nil
}

// newCheckProbeCmd is what the probe's client pods run.
func newCheckProbeCmd() *cobra.Command {
	var url string
	var want []string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:    "probe --url URL --want CLUSTER,...",
		Short:  "Call the check's probe until every wanted cluster answered (run by isthmus check in its pods)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res := check.ProbeCalls(cmd.Context(), url, want, timeout, 200*time.Millisecond)
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			if len(res.Missing(want)) > 0 {
				return exitCodeError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", check.ProbeURL, "the probe Service's URL")
	cmd.Flags().StringSliceVar(&want, "want", nil, "the clusters that must answer (their CLUSTER_NAME)")
	cmd.Flags().DurationVar(&timeout, "timeout", 45*time.Second, "how long to call")
	return cmd
}
