//go:build linux

package cli

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/rungroup"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/container"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/dns"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/loadbalancer"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/node"
)

// newSandboxNodeCmd is the node process `sandbox up` starts in each
// cluster's node namespace: the node agent, cluster DNS and the
// load-balancer controller. Not for direct use, hence hidden.
func newSandboxNodeCmd() *cobra.Command {
	var (
		cfg                  node.Config
		controllerKubeconfig string
		address, pool, dnsIP string
		lbMode, dnsUpstream  string
		labelKV              []string
	)
	cmd := &cobra.Command{
		Use:    "node",
		Short:  "Run a sandbox node: pods as processes, cluster DNS, load balancers (started by sandbox up)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			log := slog.Default()
			addr, err := netip.ParseAddr(address)
			if err != nil {
				return fmt.Errorf("--address: %w", err)
			}
			lbPool, err := netip.ParsePrefix(pool)
			if err != nil {
				return fmt.Errorf("--lb-pool: %w", err)
			}
			if lbMode != "ip" && lbMode != "hostname" {
				return fmt.Errorf("--lb-mode %q: want ip or hostname", lbMode)
			}
			var upstream netip.AddrPort
			if dnsUpstream != "" {
				if upstream, err = netip.ParseAddrPort(dnsUpstream); err != nil {
					return fmt.Errorf("--dns-upstream: %w", err)
				}
			}
			cfg.Address = addr
			cfg.Labels = map[string]string{}
			for _, kv := range labelKV {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--label %q: want key=value", kv)
				}
				cfg.Labels[k] = v
			}
			cfg.DNSServer = dnsIP
			cfg.ClusterDomain = "cluster.local"
			cfg.KubeletVersion = kubebin.Version
			cfg.Self = container.Self()
			agent, err := node.New(cfg, log)
			if err != nil {
				return err
			}
			rest, err := clientcmd.BuildConfigFromFlags("", controllerKubeconfig)
			if err != nil {
				return fmt.Errorf("controller credentials: %w", err)
			}
			cs, err := kubernetes.NewForConfig(rest)
			if err != nil {
				return err
			}
			factory := informers.NewSharedInformerFactory(cs, 0)
			dnsSrv := &dns.Server{Domain: "cluster.local", Listen: netip.AddrPortFrom(addr, 53), ServiceIP: dnsIP, Upstream: upstream, Client: cs, Log: log}
			dnsSrv.Watch(factory)
			g, gctx := rungroup.New(ctx)
			// Hostname load balancers are the sandbox's cloud's, as EKS's
			// are AWS's: this node leaves them alone.
			if lbMode == "ip" {
				lb := &loadbalancer.Controller{Pool: lbPool, Client: cs, Log: log}
				if err := lb.Watch(factory); err != nil {
					return err
				}
				g.Go("load balancers", lb.Run)
			}
			factory.Start(gctx.Done())
			g.Go("node agent", agent.Run)
			g.Go("cluster DNS", dnsSrv.Run)
			return g.Wait()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.NodeName, "name", "", "node name")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "node credentials")
	f.StringVar(&controllerKubeconfig, "controller-kubeconfig", "", "credentials for DNS and load balancers")
	f.StringVar(&cfg.Dir, "dir", "", "node state directory")
	f.StringVar(&cfg.NodeNS, "netns", "", "node network namespace")
	f.StringVar(&address, "address", "", "node InternalIP")
	f.StringVar(&cfg.ServingCert, "serving-cert", "", "kubelet API certificate")
	f.StringVar(&cfg.ServingKey, "serving-key", "", "kubelet API key")
	f.StringVar(&cfg.ClientCA, "client-ca", "", "CA of kubelet API clients")
	f.StringVar(&pool, "lb-pool", "", "LoadBalancer address pool")
	f.StringVar(&lbMode, "lb-mode", "ip", "ip: give LoadBalancer Services addresses here; hostname: the sandbox's cloud does (EKS-like)")
	f.StringVar(&dnsUpstream, "dns-upstream", "", "DNS server for names outside cluster.local (empty: NXDOMAIN)")
	f.StringVar(&dnsIP, "dns-ip", "", "cluster DNS Service address")
	f.StringVar(&cfg.APIServiceIP, "api-service-ip", "", "kubernetes Service address")
	f.StringArrayVar(&labelKV, "label", nil, "node label key=value (repeatable)")
	f.StringVar(&cfg.ImageDir, "image-dir", "", "image store (empty: containers run as host programs)")
	f.StringToStringVar(&cfg.Mirrors, "mirror", nil, "registry=host:port the node pulls that registry's images from, over plain HTTP (repeatable)")
	return cmd
}

// newSandboxContainerRunCmd is the helper a node starts for each container:
// it runs inside the container's new namespaces and becomes the container.
func newSandboxContainerRunCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "container-run SPEC",
		Short:  "Become a sandbox container (started by the node agent)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		// No logging set-up: the container's output must be its own.
		PersistentPreRun: func(*cobra.Command, []string) {},
		RunE: func(_ *cobra.Command, args []string) error {
			return container.Become(args[0])
		},
	}
}
