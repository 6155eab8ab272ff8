package cli

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	istioclient "istio.io/client-go/pkg/clientset/versioned"

	"github.com/isthmus-mesh/isthmus/internal/discovery"
	"github.com/isthmus-mesh/isthmus/internal/version"
)

func newDiscoveryCmd() *cobra.Command {
	var kubeconfig, kubeContext string
	cfg := discovery.Config{}
	cmd := &cobra.Command{
		Use:   "discovery",
		Short: "Run the control plane (istiod's role)",
		Long: `Run the control plane: watch the local cluster and every remote cluster named by a
remote secret (label istio/multiCluster=true in --namespace), and serve each proxy
its clusters and endpoints over xDS (ADS, state-of-the-world and delta), with
split-horizon EDS: endpoints on another network are reached through that
network's east-west gateway.

It is also the mesh's certificate authority: a plug-in CA from the Secret
cacerts (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) or else a
self-signed root kept in istio-ca-secret. Proxies of every cluster get
certificates for spiffe://<trust-domain>/ns/<ns>/sa/<sa> on --secure-addr
(Istio's IstioCertificateService), after a TokenReview in their own cluster,
and every namespace of every cluster gets the ConfigMap istio-ca-root-cert.

In a cluster it uses its service account; out of cluster, --kubeconfig.
Monitoring on --monitoring-addr: /metrics, /ready, /debug/clusterz (clusters and
their sync state), /debug/syncz (proxies: sent vs acknowledged), /debug/registryz.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rc, err := restConfig(kubeconfig, kubeContext)
			if err != nil {
				return err
			}
			cfg.Client, cfg.Reviews, err = discovery.Clients(rc)
			if err != nil {
				return err
			}
			rc.QPS, rc.Burst = 100, 200
			cfg.IstioClient, err = istioclient.NewForConfig(rc)
			if err != nil {
				return err
			}
			cfg.Log = slog.Default()
			if cfg.Instance = os.Getenv("POD_NAME"); cfg.Instance == "" {
				cfg.Instance, _ = os.Hostname()
			}
			return discovery.Run(cmd.Context(), cfg)
		},
	}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "istio-system"
	}
	clusterID := os.Getenv("CLUSTER_ID")
	if clusterID == "" {
		clusterID = "Kubernetes"
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig (default: in-cluster, then $KUBECONFIG)")
	f.StringVar(&kubeContext, "context", "", "kubeconfig context")
	f.StringVar(&cfg.ClusterID, "cluster-id", clusterID, "this cluster's ID (env CLUSTER_ID), the install's multiCluster.clusterName")
	f.StringVar(&cfg.Network, "network", os.Getenv("NETWORK"), "default network of this cluster's endpoints (env NETWORK; else meshNetworks of the ConfigMap istio)")
	f.StringVar(&cfg.Namespace, "namespace", ns, "mesh namespace, where remote secrets live (env POD_NAMESPACE)")
	f.StringVar(&cfg.Domain, "domain", "cluster.local", "cluster DNS domain")
	f.StringVar(&cfg.XDSAddr, "xds-addr", ":15010", "plaintext xDS (ADS) address; empty turns it off")
	f.StringVar(&cfg.SecureAddr, "secure-addr", ":15012", "xDS and certificate service over TLS (callers present a service-account token)")
	f.StringVar(&cfg.TrustDomain, "trust-domain", "", "trust domain of workload identities (default: meshConfig.trustDomain of the ConfigMap istio, else cluster.local)")
	f.StringVar(&cfg.WebhookAddr, "webhook-addr", ":15017", "sidecar injection webhook over TLS (/inject, /inject/cluster/CLUSTER/net/NETWORK); empty turns it off")
	f.StringVar(&cfg.ProxyImage, "proxy-image", "isthmus/isthmus:"+version.String(), "image of injected containers (they run its /usr/local/bin/isthmus-proxy: proxy init, proxy sidecar, proxy router)")
	f.BoolVar(&cfg.ProxyPrivileged, "proxy-privileged", false, "run injected istio-proxy containers privileged (values.global.proxy.privileged)")
	f.StringVar(&cfg.SidecarDiscoveryAddress, "sidecar-discovery-address", "", "the control plane as injected proxies reach it (default istiod.<namespace>.svc:15012)")
	f.DurationVar(&cfg.WorkloadCertTTL, "workload-cert-ttl", 24*time.Hour, "lifetime of a workload certificate when the proxy asks for none")
	f.StringVar(&cfg.MonitoringAddr, "monitoring-addr", ":15014", "metrics and debug address")
	f.DurationVar(&cfg.RemoteSyncTimeout, "remote-sync-timeout", 30*time.Second, "how long an unsynced remote cluster holds back readiness")
	return cmd
}
