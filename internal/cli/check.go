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
cluster (RootCertMissing, RootCertMismatch, RootCertExpiring;
WorkloadCertExpiring: a warning when less than 20% of a certificate's
lifetime is left, as a proxy renews at 80%, an error once expired); the
injection webhook as each API server reaches it, with a server-side dry-run
pod (InjectionUnavailable when the refusal is about the injection webhook,
InjectionNotApplied); and, with --probe, the cross-network probe
(CrossNetworkUnreachable; ProbeFailed: its pods did not start or finish,
also when --timeout, the whole check's budget, ran out while waiting for
them). ClusterUnreachable: a cluster's API
server does not answer. CheckFailed: a check could not read what it needs;
a warning when the context's credentials lack a permission (it names it:
the check did not run, which says nothing of the mesh) or when the dry-run
pod was refused for another reason than the injection webhook (a
ResourceQuota, Pod Security admission, another policy: the API server's
message), an error otherwise.

The probe creates in every cluster the namespace isthmus-check (labelled
app.kubernetes.io/managed-by=isthmus-check), a demo app whose pods carry
their cluster ID in the label isthmus.io/check-cluster, and one Service per
cluster, probe-<cluster ID>, selecting only that cluster's pods (an ID that
is not a DNS-1035 label once prefixed, such as one with upper case or dots,
is lower-cased, its other characters made dashes, cut to 48 characters and
followed by 8 hex digits of its SHA-256). Then a pod in every cluster calls
each cluster's Service until that cluster answered, for the time --timeout
leaves less 30s (to start the pod and read its log), so every call to
another cluster crosses the network whatever the load balancing. The pods
run as non-root, without privilege escalation, capabilities or a Kubernetes
API token, with the runtime's default seccomp profile. The namespace is
deleted afterwards (also on Ctrl-C), and one left by an earlier check first;
a namespace isthmus-check without that label is never touched (ProbeFailed).

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
	f.DurationVar(&timeout, "timeout", 4*time.Minute, "how long the whole check may take (the probe's calls get what is left of it)")
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
		Use:   "probe --url URL-TEMPLATE --want CLUSTER,... [--timeout D]",
		Short: "Call each wanted cluster's probe Service until that cluster answered (run by isthmus check in its pods)",
		Long: `Call, for each wanted cluster, the URL template with ` + check.ProbeClusterPlaceholder + ` replaced by the
cluster's probe name (its ID, shortened as isthmus check names its Service),
until the demo app answering says it is that cluster (servedBy.cluster) or
--timeout passes. Prints one JSON line {"answered":{CLUSTER:N},"failed":N,
"lastError":"..."}; exit 0 when every wanted cluster answered, else 1.`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			targets, err := check.ProbeTargets(url, want)
			if err != nil {
				return err
			}
			res := check.ProbeCalls(cmd.Context(), targets, timeout, 200*time.Millisecond)
			b, err := json.Marshal(res)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			for _, t := range targets {
				if res.Answered[t.Cluster] == 0 {
					return exitCodeError{code: 1}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", check.ProbeURLTemplate, "the probe Services' URL, "+check.ProbeClusterPlaceholder+" standing for each wanted cluster")
	cmd.Flags().StringSliceVar(&want, "want", nil, "the clusters that must answer (their CLUSTER_NAME)")
	cmd.Flags().DurationVar(&timeout, "timeout", 45*time.Second, "how long to call")
	return cmd
}
