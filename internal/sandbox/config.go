package sandbox

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// DefaultStateDir holds every sandbox's certificates, data, logs and kubeconfig.
const DefaultStateDir = "/var/lib/isthmus/sandbox"

// Config is the set of clusters a sandbox runs. The zero value is not
// usable; start from DefaultConfig or LoadConfig.
type Config struct {
	// Clusters lists the clusters in order; a cluster's position decides
	// its addresses on the internet segment, so keep the order stable.
	Clusters []ClusterConfig `json:"clusters"`
}

// ClusterConfig names one cluster and the network it sits on.
type ClusterConfig struct {
	// Name is the kubeconfig context and the mesh's cluster ID, a DNS-1123 label.
	Name string `json:"name"`
	// Network is the isolated L3 network the cluster's pods live on.
	Network string `json:"network"`
	// Region and Zone label the cluster's node (topology.kubernetes.io/*),
	// which the mesh reads as locality; optional.
	Region string `json:"region,omitempty"`
	Zone   string `json:"zone,omitempty"`
	// LoadBalancer is how the cluster publishes `type: LoadBalancer`
	// Services, as its cloud would: "ip" (the default, like AKS and GKE:
	// status.loadBalancer.ingress[].ip) or "hostname" (like EKS's load
	// balancers: only a DNS name under elb.isthmus.test, which the
	// sandbox's internet DNS at 198.18.0.2 answers).
	LoadBalancer string `json:"loadBalancer,omitempty"`
}

// Load balancer kinds of ClusterConfig.LoadBalancer.
const (
	LoadBalancerIP       = "ip"
	LoadBalancerHostname = "hostname"
)

// Hostnames reports whether the cluster's load balancers are known by name only.
func (c ClusterConfig) Hostnames() bool { return c.LoadBalancer == LoadBalancerHostname }

// DefaultConfig is the seed walkthrough's pair: cluster-eks on network1
// (the primary) and cluster-aks on network2 (the remote). cluster-eks's
// load balancers have hostnames, as the seed's EKS network load balancers
// do (it resolves the east-west gateway's name to get an address).
func DefaultConfig() Config {
	return Config{Clusters: []ClusterConfig{
		{Name: "cluster-eks", Network: "network1", Region: "us-east-1", Zone: "us-east-1a", LoadBalancer: LoadBalancerHostname},
		{Name: "cluster-aks", Network: "network2", Region: "eastus", Zone: "eastus-1", LoadBalancer: LoadBalancerIP},
	}}
}

// LoadConfig reads a YAML cluster list; an empty path means the default pair.
func LoadConfig(path string) (Config, error) {
	if path == "" {
		return DefaultConfig(), nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read sandbox config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return Config{}, fmt.Errorf("parse sandbox config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("sandbox config %s: %w", path, err)
	}
	return c, nil
}

// maxClusters keeps every cluster's pod and service /16 inside 100.64.0.0/10.
const maxClusters = 32

// Validate reports the first problem with the cluster list.
func (c Config) Validate() error {
	if len(c.Clusters) == 0 {
		return fmt.Errorf("clusters: at least one cluster is required")
	}
	if len(c.Clusters) > maxClusters {
		return fmt.Errorf("clusters: %d clusters given, at most %d are supported", len(c.Clusters), maxClusters)
	}
	names := map[string]bool{}
	networks := map[string]string{}
	for i, cl := range c.Clusters {
		if errs := validation.IsDNS1123Label(cl.Name); len(errs) > 0 {
			return fmt.Errorf("clusters[%d].name %q: %s", i, cl.Name, errs[0])
		}
		// The network namespace name "isthmus-<name>" must stay short enough for tools.
		if len(cl.Name) > 40 {
			return fmt.Errorf("clusters[%d].name %q: at most 40 characters", i, cl.Name)
		}
		if names[cl.Name] {
			return fmt.Errorf("clusters[%d].name %q: duplicate cluster name", i, cl.Name)
		}
		names[cl.Name] = true
		if cl.Network == "" {
			return fmt.Errorf("clusters[%d].network: required (for example network%d)", i, i+1)
		}
		if other, ok := networks[cl.Network]; ok {
			return fmt.Errorf("clusters[%d].network %q: already used by cluster %q; each sandbox cluster has its own network", i, cl.Network, other)
		}
		networks[cl.Network] = cl.Name
		switch cl.LoadBalancer {
		case "", LoadBalancerIP, LoadBalancerHostname:
		default:
			return fmt.Errorf("clusters[%d].loadBalancer %q: want %q (addresses in the Service's status, like AKS; the default) or %q (a DNS name only, like EKS)", i, cl.LoadBalancer, LoadBalancerIP, LoadBalancerHostname)
		}
	}
	return nil
}

// Cluster returns the named cluster's settings and position.
func (c Config) Cluster(name string) (ClusterConfig, int, error) {
	for i, cl := range c.Clusters {
		if cl.Name == name {
			return cl, i, nil
		}
	}
	known := make([]string, len(c.Clusters))
	for i, cl := range c.Clusters {
		known[i] = cl.Name
	}
	return ClusterConfig{}, -1, fmt.Errorf("unknown cluster %q; the sandbox has %v", name, known)
}

// Layout is where one sandbox keeps its files.
type Layout struct{ Dir string }

// Kubeconfig is the admin kubeconfig with one context per cluster.
func (l Layout) Kubeconfig() string { return filepath.Join(l.Dir, "kubeconfig") }

// ConfigFile is the cluster list the running sandbox was started with.
func (l Layout) ConfigFile() string { return filepath.Join(l.Dir, "config.yaml") }

// ClusterDir holds one cluster's pki, data, logs and pid files.
func (l Layout) ClusterDir(name string) string { return filepath.Join(l.Dir, "clusters", name) }

// Addresses of one cluster on the internet segment. Cluster i (0-based)
// owns 198.18.(i+1).0/24: .1 is its node namespace and API server, .10
// upwards are LoadBalancer addresses.
//
// Private ranges differ per cluster (pods 100.(64+i).0.0/16, services
// 100.(96+i).0.0/16), so a test that a pod address of one cluster is
// unreachable from another cannot be fooled by a local pod of that address.
type Addresses struct {
	Node      netip.Addr
	LBPrefix  netip.Prefix
	APIServer string // host:port
	PodCIDR   netip.Prefix
	Services  netip.Prefix
}

// AddressesOf returns the addresses of the cluster at position i.
func AddressesOf(i int) Addresses {
	node := netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1})
	return Addresses{
		Node:      node,
		LBPrefix:  netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 0}), 24),
		APIServer: netip.AddrPortFrom(node, 6443).String(),
		PodCIDR:   netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(64 + i), 0, 0}), 16),
		Services:  netip.PrefixFrom(netip.AddrFrom4([4]byte{100, byte(96 + i), 0, 0}), 16),
	}
}
