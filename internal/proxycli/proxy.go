//go:build linux

package proxycli

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/proxy"
	"github.com/isthmus-mesh/isthmus/internal/proxy/apphealth"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/proxy/iptables"
	"github.com/isthmus-mesh/isthmus/internal/proxy/mergedmetrics"
)

// Command is `proxy` and its subcommands: init, sidecar and router. level
// is the process's log level, the one the root's handler logs at: the
// admin port's /logging changes it.
func Command(level *slog.LevelVar) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "The data plane: sidecar, east-west gateway and the pod's traffic capture",
	}
	cmd.AddCommand(newInitCmd(), newRunCmd("sidecar", level), newRunCmd("router", level))
	return cmd
}

func newInitCmd() *cobra.Command {
	cfg := iptables.Default()
	var inbound, outbound, excludeCIDRs string
	var excludeIn, excludeOut, includeOut string
	var dryRun, redirectDNS bool
	resolvConf := "/etc/resolv.conf"
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Redirect the pod's TCP traffic through its sidecar (istio-init's role)",
		Long: `Write the pod's iptables rules, Istio's scheme: inbound TCP goes to the
sidecar's 15006, outbound TCP to its 15001; the proxy's own traffic (uid and
gid 1337), loopback, and excluded ports and ranges are left alone. Run it in
the pod's network namespace (an init container with NET_ADMIN and NET_RAW).
Running it again gives the same rules.

With --redirect-dns (the injector adds it when proxyMetadata sets
ISTIO_META_DNS_CAPTURE=true) the app's DNS queries to the resolvers of the
pod's resolv.conf, UDP and TCP, go to the sidecar's DNS on 15053, which
answers for mesh services and forwards the rest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			cfg.InboundPorts = splitList(inbound)
			cfg.OutboundCIDRs = splitList(outbound)
			cfg.ExcludeOutboundCIDRs = splitList(excludeCIDRs)
			if cfg.ExcludeInboundPorts, err = ports(append([]string{"15090", "15021", "15020"}, splitList(excludeIn)...)); err != nil {
				return fmt.Errorf("--exclude-inbound-ports: %w", err)
			}
			if cfg.ExcludeOutboundPorts, err = ports(splitList(excludeOut)); err != nil {
				return fmt.Errorf("--exclude-outbound-ports: %w", err)
			}
			if cfg.IncludeOutboundPorts, err = ports(splitList(includeOut)); err != nil {
				return fmt.Errorf("--include-outbound-ports: %w", err)
			}
			if redirectDNS {
				// Without an IPv4 resolver (IPv4 capture only) the pod
				// starts, its DNS not captured: a failing init container
				// would keep every pod of the mesh from starting.
				if cfg.DNSServers, err = nameservers(resolvConf); err != nil {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: --redirect-dns: %v; DNS is not captured\n", err)
				}
				cfg.DNSPort = 15053
			}
			if dryRun {
				fmt.Fprint(cmd.OutOrStdout(), cfg.Rules())
				return nil
			}
			return cfg.Apply()
		},
	}
	f := cmd.Flags()
	f.StringVarP(&inbound, "inbound-ports", "b", "*", "inbound ports to capture, comma-separated, or * (traffic.sidecar.istio.io/includeInboundPorts)")
	f.StringVarP(&excludeIn, "exclude-inbound-ports", "d", "", "inbound ports not to capture; 15090, 15021 and 15020 always are not")
	f.StringVarP(&outbound, "outbound-ranges", "i", "*", "outbound CIDRs to capture, or * (traffic.sidecar.istio.io/includeOutboundIPRanges)")
	f.StringVarP(&excludeCIDRs, "exclude-outbound-ranges", "x", "", "outbound CIDRs not to capture")
	f.StringVarP(&excludeOut, "exclude-outbound-ports", "o", "", "outbound ports not to capture")
	f.StringVarP(&includeOut, "include-outbound-ports", "q", "", "outbound ports to capture even outside the captured ranges")
	f.IntVarP(&cfg.ProxyUID, "proxy-uid", "u", 1337, "uid of the proxy, whose traffic is not captured")
	f.IntVarP(&cfg.ProxyGID, "proxy-gid", "g", 1337, "gid of the proxy")
	f.BoolVar(&dryRun, "dry-run", false, "print the rules (iptables-restore format) instead of applying them")
	f.BoolVar(&redirectDNS, "redirect-dns", false, "send the app's DNS queries (to the resolv.conf nameservers) to the sidecar's DNS on 15053")
	f.StringVar(&resolvConf, "resolv-conf", resolvConf, "where --redirect-dns reads the pod's nameservers")
	return cmd
}

// nameservers are the IPv4 resolvers of a resolv.conf: the addresses the
// pod's DNS queries go to.
func nameservers(path string) ([]string, error) {
	rc, err := dns.ClientConfigFromFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range rc.Servers {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			out = append(out, ip.String())
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s names no IPv4 nameserver (IPv6 resolvers are not captured yet)", path)
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func ports(list []string) ([]int, error) {
	var out []int
	for _, p := range list {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is not a port", p)
		}
		out = append(out, n)
	}
	return out, nil
}

func newRunCmd(kind string, level *slog.LevelVar) *cobra.Command {
	cfg := proxy.RunConfig{}
	var labelsFile string
	short := map[string]string{
		"sidecar": "Run a sidecar proxy next to a workload (Envoy's role)",
		"router":  "Run a gateway, east-west (SNI passthrough between networks) or ingress (HTTP and HTTPS from outside)",
	}[kind]
	cmd := &cobra.Command{
		Use:   kind,
		Short: short,
		Long: short + `.

The proxy connects to the control plane (--discovery-address), gets its
workload certificate with the pod's service-account token, and follows the
listeners, routes, clusters and endpoints it is sent. Node identity comes from
the environment the injector sets, as for Istio's proxy: POD_NAME,
POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT, and every ISTIO_META_* variable
as node metadata (ISTIO_META_CLUSTER_ID, ISTIO_META_NETWORK,
ISTIO_META_REQUESTED_NETWORK_VIEW, ...). With ISTIO_META_DNS_CAPTURE=true a
sidecar answers the app's DNS on 127.0.0.1:15053 (where proxy init
--redirect-dns sends it) from the control plane's name table: mesh services,
in every cluster, resolve; other names go to the pod's resolvers.

Ports: admin 127.0.0.1:15000 (/config_dump, /clusters, /listeners, /stats,
/ready), readiness 15021 /healthz/ready, Prometheus 15090 /stats/prometheus,
and 15020 /app-health/CONTAINER/readyz|livez|startupz: the application's own
probes (ISTIO_KUBE_APP_PROBERS, which the injector writes when it rewrites
them) run over localhost.
SIGTERM drains: no new connections, open ones get --drain-duration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Node.Type = kind
			cfg.Node.Metadata = metadataFromEnv()
			if v := os.Getenv("SERVICE_ACCOUNT"); v != "" {
				cfg.Node.Metadata["SERVICE_ACCOUNT"] = v
			}
			labels, err := readLabels(labelsFile)
			if err != nil {
				return err
			}
			cfg.Node.Labels = labels
			if cfg.AppProbers, err = apphealth.Parse(os.Getenv("ISTIO_KUBE_APP_PROBERS")); err != nil {
				return err
			}
			if cfg.AppMetrics, err = mergedmetrics.Parse(os.Getenv("ISTIO_PROMETHEUS_ANNOTATIONS")); err != nil {
				// The app's metrics are not merged; the proxy serves.
				slog.Warn("application metrics not merged on 15020", "err", err)
			}
			cfg.AccessLogEncoding = strings.ToUpper(cfg.AccessLogEncoding)
			if cfg.AccessLogEncoding != "TEXT" && cfg.AccessLogEncoding != "JSON" {
				return fmt.Errorf("--access-log-encoding %q: want TEXT or JSON", cfg.AccessLogEncoding)
			}
			if cfg.Node.IP == "" || cfg.Node.Pod == "" || cfg.Node.Namespace == "" {
				return fmt.Errorf("the proxy needs its pod IP, name and namespace (env INSTANCE_IP, POD_NAME, POD_NAMESPACE, or --ip --pod --namespace)")
			}
			if cfg.CAAddr == "" && !cfg.Plaintext {
				cfg.CAAddr = cfg.DiscoveryAddr
			}
			if kind == "sidecar" && cfg.Node.Metadata["DNS_CAPTURE"] == "true" {
				cfg.DNSAddr = "127.0.0.1:15053"
			}
			cfg.Log, cfg.LogLevel = slog.Default(), level
			return proxy.Run(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DiscoveryAddr, "discovery-address", envOr("DISCOVERY_ADDRESS", "istiod.istio-system.svc:15012"), "control plane xDS address (host:port, or a gRPC target such as unix:///path)")
	f.BoolVar(&cfg.Plaintext, "plaintext", false, "xDS without TLS or token (the control plane's 15010; development only)")
	f.StringVar(&cfg.CAAddr, "ca-address", os.Getenv("CA_ADDR"), "certificate service address (default: the discovery address; with --plaintext, none: no mTLS)")
	f.StringVar(&cfg.ServerName, "server-name", "", "name on the control plane's certificate (default: the host of the CA address)")
	f.StringVar(&cfg.RootCertFile, "root-cert", identity.DefaultRootFile, "trust bundle to verify the control plane (ConfigMap istio-ca-root-cert)")
	f.StringVar(&cfg.TokenFile, "token", identity.DefaultTokenFile, "projected service-account token, audience istio-ca")
	f.DurationVar(&cfg.CertTTL, "cert-ttl", envDuration("SECRET_TTL", 24*time.Hour), "workload certificate lifetime to ask for (env SECRET_TTL)")
	f.StringVar(&cfg.Node.IP, "ip", os.Getenv("INSTANCE_IP"), "pod IP (env INSTANCE_IP)")
	f.StringVar(&cfg.Node.Pod, "pod", os.Getenv("POD_NAME"), "pod name (env POD_NAME)")
	f.StringVar(&cfg.Node.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "pod namespace (env POD_NAMESPACE)")
	f.StringVar(&cfg.Node.Domain, "domain", "cluster.local", "cluster DNS domain")
	f.StringVar(&labelsFile, "labels-file", "/etc/istio/pod/labels", "pod labels from the downward API (key=\"value\" lines); missing is fine")
	f.StringVar(&cfg.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin interface")
	f.StringVar(&cfg.StatusAddr, "status-addr", ":15021", "readiness (/healthz/ready)")
	f.StringVar(&cfg.StatsAddr, "stats-addr", ":15090", "Prometheus metrics (/stats/prometheus)")
	f.StringVar(&cfg.AppHealthAddr, "app-health-addr", ":15020", "the application's rewritten kubelet probes (/app-health/...) and the merged metrics (/stats/prometheus: the proxy's and, from env ISTIO_PROMETHEUS_ANNOTATIONS, the app's); empty turns it off")
	f.StringVar(&cfg.AccessLog, "access-log", os.Getenv("ACCESS_LOG_FILE"), "write a line per request or connection (Istio's text format) to this file, /dev/stdout for the log stream (env ACCESS_LOG_FILE); a listener's access_log from the control plane (meshConfig.accessLogFile) takes precedence")
	f.StringVar(&cfg.AccessLogEncoding, "access-log-encoding", envOr("ACCESS_LOG_ENCODING", "TEXT"), "TEXT (Istio's default line) or JSON (Istio's JSON keys) (env ACCESS_LOG_ENCODING)")
	f.DurationVar(&cfg.DrainDuration, "drain-duration", 5*time.Second, "how long open connections get after SIGTERM (terminationDrainDuration)")
	return cmd
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func envDuration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(k)); err == nil {
		return d
	}
	return def
}

// metadataFromEnv turns ISTIO_META_X=v into node metadata X=v, as Istio's
// agent does; ISTIO_METAJSON_X holds JSON (labels) and is skipped here.
func metadataFromEnv() map[string]string {
	md := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if name, ok := strings.CutPrefix(k, "ISTIO_META_"); ok {
			md[name] = v
		}
	}
	return md
}

// readLabels parses the downward API labels file; ISTIO_METAJSON_LABELS wins.
func readLabels(path string) (map[string]string, error) {
	if j := os.Getenv("ISTIO_METAJSON_LABELS"); j != "" {
		out := map[string]string{}
		if err := json.Unmarshal([]byte(j), &out); err != nil {
			return nil, fmt.Errorf("ISTIO_METAJSON_LABELS: %w", err)
		}
		return out, nil
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		}
		out[k] = v
	}
	return out, sc.Err()
}
