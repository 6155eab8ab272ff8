package cli

import (
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

// clusterFlags are kubectl's way of naming a cluster and namespace.
type clusterFlags struct {
	kubeconfig, context, namespace string
}

func (f *clusterFlags) add(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig (default $KUBECONFIG, then ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&f.context, "context", "", "kubeconfig context of the cluster")
	cmd.PersistentFlags().StringVarP(&f.namespace, "namespace", "n", "", "namespace of pods named without one (default: the context's, else default)")
}

func (f *clusterFlags) cluster() (*inspect.Cluster, error) {
	rc, err := restConfig(f.kubeconfig, f.context)
	if err != nil {
		return nil, err
	}
	ns := f.namespace
	if ns == "" {
		ns = contextNamespace(f.kubeconfig, f.context)
	}
	return inspect.NewCluster(rc, ns)
}

const adminPort = 15000

func newProxyConfigCmd() *cobra.Command {
	var cf clusterFlags
	var output, fqdn, cluster, route string
	var port int
	cmd := &cobra.Command{
		Use:     "proxy-config",
		Aliases: []string{"pc"},
		Short:   "Show a proxy's configuration (clusters, listeners, routes, endpoints, secret, bootstrap, log)",
		Long: `Show the configuration a sidecar or gateway runs, read from its admin interface
(port 15000, reached through a Kubernetes port-forward) as istioctl does.
POD is POD, POD.NAMESPACE or deployment/NAME[.NAMESPACE]. -o json or yaml prints
the Envoy resources themselves.`,
		Example: `  isthmus proxy-config endpoints deployment/sleep.multicluster --context cluster-eks
  isthmus proxy-config clusters profile-6575c9979f-r7kpr -n multicluster -o json`,
	}
	cf.add(cmd)
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "short", "short (a table), json or yaml")
	// Each view also answers to istioctl's singular and short names.
	aliases := map[string][]string{"clusters": {"cluster", "c"}, "listeners": {"listener", "l"}, "routes": {"route", "r"},
		"endpoints": {"endpoint", "ep"}, "secret": {"s"}}
	sub := func(use, short string, run func(w io.Writer, c *inspect.Cluster, pod string) error) *cobra.Command {
		return &cobra.Command{
			Use: use + " POD", Short: short, Args: cobra.ExactArgs(1), Aliases: aliases[use],
			RunE: func(cmd *cobra.Command, args []string) error {
				switch output {
				case "short", "json", "yaml":
				default:
					return fmt.Errorf("--output %q: want short, json or yaml", output)
				}
				c, err := cf.cluster()
				if err != nil {
					return err
				}
				return run(cmd.OutOrStdout(), c, args[0])
			},
		}
	}
	// podDump is the pod a reference names and its proxy's config_dump.
	podDump := func(cmd *cobra.Command, c *inspect.Cluster, ref string) (*corev1.Pod, *inspect.Dump, error) {
		pod, err := c.Pod(cmd.Context(), ref)
		if err != nil {
			return nil, nil, err
		}
		b, err := c.Get(cmd.Context(), pod, adminPort, "/config_dump")
		if err != nil {
			return nil, nil, err
		}
		d, err := inspect.ParseDump(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s.%s: %w", pod.Name, pod.Namespace, err)
		}
		return pod, d, nil
	}
	dump := func(cmd *cobra.Command, c *inspect.Cluster, ref string) (*inspect.Dump, error) {
		_, d, err := podDump(cmd, c, ref)
		return d, err
	}
	var clusters, listeners, routes, endpoints, secret *cobra.Command
	clusters = sub("clusters", "Clusters (upstream services) of a proxy", func(w io.Writer, c *inspect.Cluster, ref string) error {
		d, err := dump(clusters, c, ref)
		if err != nil {
			return err
		}
		if output != "short" {
			return inspect.Marshal(w, output, d.Clusters)
		}
		return d.WriteClusters(w, fqdn, port)
	})
	clusters.Flags().StringVar(&fqdn, "fqdn", "", "only clusters of this service host")
	clusters.Flags().IntVar(&port, "port", 0, "only clusters of this port")
	listeners = sub("listeners", "Listeners of a proxy, one row per filter chain", func(w io.Writer, c *inspect.Cluster, ref string) error {
		d, err := dump(listeners, c, ref)
		if err != nil {
			return err
		}
		if output != "short" {
			return inspect.Marshal(w, output, d.Listeners)
		}
		return d.WriteListeners(w, port)
	})
	listeners.Flags().IntVar(&port, "port", 0, "only listeners on this port")
	routes = sub("routes", "HTTP routes of a proxy", func(w io.Writer, c *inspect.Cluster, ref string) error {
		d, err := dump(routes, c, ref)
		if err != nil {
			return err
		}
		if output != "short" {
			return inspect.Marshal(w, output, d.Routes)
		}
		return d.WriteRoutes(w, route)
	})
	routes.Flags().StringVar(&route, "name", "", "only this route configuration")
	endpoints = sub("endpoints", "Endpoints of each cluster of a proxy, with health", func(w io.Writer, c *inspect.Cluster, ref string) error {
		pod, err := c.Pod(endpoints.Context(), ref)
		if err != nil {
			return err
		}
		b, err := c.Get(endpoints.Context(), pod, adminPort, "/clusters?format=json")
		if err != nil {
			return err
		}
		if output != "short" {
			_, err := w.Write(b)
			return err
		}
		return inspect.WriteEndpoints(w, b, cluster)
	})
	endpoints.Flags().StringVar(&cluster, "cluster", "", "only endpoints of this cluster, e.g. outbound|8080||profile.multicluster.svc.cluster.local")
	secret = sub("secret", "The workload certificate and trusted roots of a proxy", func(w io.Writer, c *inspect.Cluster, ref string) error {
		d, err := dump(secret, c, ref)
		if err != nil {
			return err
		}
		if output != "short" {
			return inspect.Marshal(w, output, d.Secrets)
		}
		return d.WriteSecrets(w)
	})
	var bootstrap *cobra.Command
	bootstrap = sub("bootstrap", "How a proxy started: its node and control plane (Envoy's bootstrap)", func(w io.Writer, c *inspect.Cluster, ref string) error {
		d, err := dump(bootstrap, c, ref)
		if err != nil {
			return err
		}
		if d.Bootstrap == nil {
			return fmt.Errorf("%s's config_dump has no bootstrap section", ref)
		}
		format := output
		if format == "short" {
			format = "json" // istioctl's default too: a bootstrap has no table
		}
		return inspect.Marshal(w, format, []*bootstrapv3.Bootstrap{d.Bootstrap})
	})
	var level string
	logCmd := &cobra.Command{
		Use:   "log POD",
		Short: "A proxy's log level, and with --level a new one",
		Long: `Show a proxy's loggers and their levels, read from its admin interface's
/logging as istioctl does; --level sets them (trace, debug, info, warning, error,
critical, off), or one logger with NAME:LEVEL. An isthmus proxy has one logger,
isthmus: Envoy's per-component names (http, upstream, ...) are refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cf.cluster()
			if err != nil {
				return err
			}
			pod, err := c.Pod(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			path := "/logging"
			if level != "" {
				name, lv, ok := strings.Cut(level, ":")
				if !ok {
					name, lv = "level", level
				}
				path += "?" + url.Values{name: {lv}}.Encode()
			}
			b, err := c.Do(cmd.Context(), pod, adminPort, http.MethodPost, path)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(b)
			return err
		},
	}
	logCmd.Flags().StringVar(&level, "level", "", "new level: LEVEL for every logger, or NAME:LEVEL")
	var otherContext string
	rootCA := &cobra.Command{
		Use:     "rootca-compare POD1 POD2",
		Aliases: []string{"rc"},
		Short:   "Whether two proxies trust a common root CA (and so can verify each other's certificates)",
		Long: `Read the ROOTCA secret (the trusted roots) from both proxies' config_dump and
say whether they share a root certificate, as istioctl's rootca-compare does.
Across clusters (the case that matters in a multicluster mesh) name the second
pod's cluster with --other-context. Exits non-zero when the proxies share no
root: mutual TLS between them fails until both clusters' istio-ca-root-cert
holds the same root.`,
		Example: `  isthmus proxy-config rootca-compare deployment/sleep.multicluster deployment/profile.multicluster \
      --context cluster-eks --other-context cluster-aks`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			other := cf
			if otherContext != "" {
				other.context = otherContext
			}
			var roots [2][]*x509.Certificate
			var names [2]string
			for i, f := range []clusterFlags{cf, other} {
				c, err := f.cluster()
				if err != nil {
					return err
				}
				pod, d, err := podDump(cmd, c, args[i])
				if err != nil {
					return err
				}
				names[i] = pod.Name + "." + pod.Namespace
				if roots[i], err = d.Roots(); err != nil {
					return fmt.Errorf("%s: %w", names[i], err)
				}
			}
			if r := inspect.SharedRoot(roots[0], roots[1]); r != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "%s and %s trust the same root CA (%s, SHA-256 %s): each can verify the other's workload certificate.\n",
					names[0], names[1], r.Subject, fingerprint(r))
				return nil
			}
			return fmt.Errorf("%s trusts %s and %s trusts %s: no root CA in common, so mutual TLS between them fails; "+
				"both clusters' istio-ca-root-cert ConfigMap must hold the mesh CA's root", names[0], describeRoots(roots[0]), names[1], describeRoots(roots[1]))
		},
	}
	rootCA.Flags().StringVar(&otherContext, "other-context", "", "kubeconfig context of POD2's cluster (default: --context)")
	cmd.AddCommand(clusters, listeners, routes, endpoints, secret, bootstrap, logCmd, rootCA)
	return cmd
}

// fingerprint is a certificate's SHA-256 as openssl prints it.
func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

func describeRoots(roots []*x509.Certificate) string {
	var out []string
	for _, r := range roots {
		out = append(out, fmt.Sprintf("[%s, SHA-256 %s]", r.Subject, fingerprint(r)))
	}
	return strings.Join(out, " ")
}

func newProxyStatusCmd() *cobra.Command {
	var cf clusterFlags
	var istioNS string
	cmd := &cobra.Command{
		Use:     "proxy-status",
		Aliases: []string{"ps"},
		Short:   "Show every proxy the control plane serves and whether it is in sync",
		Long: `Show every proxy (sidecars and gateways of every cluster) connected to the control
plane and, per xDS type, whether it acknowledged what it was last sent
(SYNCED), has not acknowledged it yet (STALE), rejected it (NACKED) or was
sent nothing of that type (NOT SENT). A cluster whose API server stopped
answering is named below the table: its proxies keep their configuration,
which no longer follows that cluster's changes. Last, per control plane pod,
how fast changes reach its proxies: from a change (an endpoint, a Service, a
policy) to each proxy acknowledging it, p50 and p99 of the latest 1024 (the
pilot_proxy_convergence_time histogram on its monitoring port). Run it
against the primary cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.cluster()
			if err != nil {
				return err
			}
			list, err := c.Status(cmd.Context(), istioNS)
			if err != nil {
				return err
			}
			if err := inspect.WriteStatus(cmd.OutOrStdout(), list); err != nil {
				return err
			}
			// Clusters whose API server stopped answering: their proxies'
			// SYNCED is of configuration that no longer follows them.
			if clusters, err := c.RemoteClusters(cmd.Context(), istioNS); err == nil {
				inspect.WriteStale(cmd.OutOrStdout(), clusters)
			}
			if conv, err := c.Convergence(cmd.Context(), istioNS); err == nil {
				inspect.WriteConvergence(cmd.OutOrStdout(), conv)
			}
			return nil
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "namespace of the control plane")
	return cmd
}

func newRemoteClustersCmd() *cobra.Command {
	var cf clusterFlags
	var istioNS string
	cmd := &cobra.Command{
		Use:   "remote-clusters",
		Short: "List the clusters the control plane watches and whether each is synced",
		Long: `List every cluster the control plane watches, as istioctl remote-clusters does:
its own and one per remote secret, with the secret, the state (syncing, synced,
timeout: not synced in time and served with what it has, error: with why) and
the control plane pod that says so. Run it against the primary cluster.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cf.cluster()
			if err != nil {
				return err
			}
			list, err := c.RemoteClusters(cmd.Context(), istioNS)
			if err != nil {
				return err
			}
			return inspect.WriteRemoteClusters(cmd.OutOrStdout(), list)
		},
	}
	cf.add(cmd)
	cmd.Flags().StringVarP(&istioNS, "istioNamespace", "i", "istio-system", "namespace of the control plane")
	return cmd
}

// writeMeshVersions prints the control plane's and the proxies' versions.
func writeMeshVersions(cmd *cobra.Command, cf *clusterFlags, istioNS string) error {
	c, err := cf.cluster()
	if err != nil {
		return err
	}
	cps, err := c.Versions(cmd.Context(), istioNS)
	if err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	for _, v := range cps {
		fmt.Fprintf(w, "control plane version: %s (%s, cluster %s)\n", v.Version, v.Pod, v.Cluster)
	}
	list, err := c.Status(cmd.Context(), istioNS)
	if err != nil {
		return err
	}
	count := map[string]int{}
	for _, p := range list {
		count[p.IstioVersion]++
	}
	var vs []string
	for v, n := range count {
		vs = append(vs, fmt.Sprintf("%s (%d proxies)", dashIfEmpty(v), n))
	}
	sort.Strings(vs)
	fmt.Fprintf(w, "data plane version: %s\n", strings.Join(vs, ", "))
	return nil
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
