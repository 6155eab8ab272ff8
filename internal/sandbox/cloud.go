package sandbox

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/miekg/dns"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/cloud"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/controlplane"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// DNSAddr is the sandbox's internet DNS, on the internet segment:
// authoritative for the hostname load balancers' zone (cloud.Zone), and
// where every cluster DNS forwards names outside cluster.local. The host
// does not use it unless asked (dig @198.18.0.2).
var DNSAddr = netip.AddrPortFrom(network.RouterAddr, 53)

// cloudComponent is the sandbox-wide cloud process, run in the internet
// namespace: hostname load balancers and the internet DNS. It runs even
// with no hostname cluster, since the cluster DNSes forward to it.
func (s *Sandbox) cloudComponent(self string) controlplane.Component {
	return controlplane.Component{
		Name:  "cloud",
		Ports: []int{int(DNSAddr.Port())},
		Spec: process.Spec{
			Name:  "cloud",
			Path:  self,
			Args:  []string{"sandbox", "cloud", "--state-dir=" + s.Layout.Dir},
			Dir:   s.Layout.Dir,
			NetNS: network.InternetNS,
			Log:   filepath.Join(s.Layout.Dir, "logs", "cloud.log"),
			PID:   filepath.Join(s.Layout.Dir, "run", "cloud.pid"),
		},
		Health: dnsHealth,
	}
}

// dnsHealth asks the internet DNS for its zone's SOA, as a resolver would.
func dnsHealth(ctx context.Context) error {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(cloud.Zone), dns.TypeSOA)
	client := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := client.ExchangeContext(ctx, q, DNSAddr.String())
	if err != nil {
		return fmt.Errorf("DNS %s: %w", DNSAddr, err)
	}
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) == 0 {
		return fmt.Errorf("DNS %s answered %s for %s, want its SOA", DNSAddr, dns.RcodeToString[r.Rcode], cloud.Zone)
	}
	return nil
}

// upCloud starts the cloud unless it runs and answers. It reaches the
// hostname clusters through their API servers, so it comes after them.
func (s *Sandbox) upCloud(ctx context.Context, self string) error {
	running, err := ensureRunning(ctx, network.InternetNS, s.cloudComponent(self))
	if err == nil && !running {
		s.say("cloud ready: internet DNS at %s (zone %s)", DNSAddr, cloud.Zone)
	}
	return err
}

// Cloud is what the cloud process runs, from the sandbox's config: every
// hostname cluster, reached at its published API server.
func (s *Sandbox) Cloud(log *slog.Logger) (*cloud.Cloud, error) {
	c := &cloud.Cloud{DNS: DNSAddr, Log: log}
	for i, cp := range s.clusters(kubebin.Set{}) {
		if !s.Config.Clusters[i].Hostnames() {
			continue
		}
		if _, err := os.Stat(cp.CloudKubeconfig()); err != nil {
			return nil, fmt.Errorf("%s: no credentials for the cloud (%w); run `isthmus sandbox up`", cp.Name, err)
		}
		rest, err := clientcmd.BuildConfigFromFlags("", cp.CloudKubeconfig())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cp.Name, err)
		}
		cs, err := kubernetes.NewForConfig(rest)
		if err != nil {
			return nil, err
		}
		a := AddressesOf(i)
		c.Clusters = append(c.Clusters, cloud.Cluster{Name: cp.Name, Pool: a.LBPrefix, Node: a.Node, Client: cs})
	}
	return c, nil
}
