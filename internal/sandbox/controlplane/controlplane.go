// Package controlplane runs one sandbox cluster's Kubernetes control plane
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) as
// processes inside the cluster's node namespace, the way a managed control
// plane sits inside its cloud network. The API server is also published on
// the node's internet address, like a public EKS or AKS endpoint.
package controlplane

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/pki"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// Settings every sandbox cluster shares.
const (
	// Issuer of service-account tokens, the Kubernetes default.
	Issuer = "https://kubernetes.default.svc.cluster.local"
	// APIPort is where the API server listens, on every address of the node.
	APIPort = 6443
)

// Cluster is one cluster's control plane.
type Cluster struct {
	Name string
	// Dir holds pki/, etcd/, logs/, run/ and component kubeconfigs.
	Dir string
	// NS is the node network namespace the processes run in.
	NS string
	// Addr is the node's address on the internet segment.
	Addr netip.Addr
	Bins kubebin.Set
	// Self is the isthmus binary, which runs the node agent.
	Self string
	// NodeLabels are put on the cluster's node (topology region and zone).
	NodeLabels map[string]string
	// LBPool is where LoadBalancer addresses come from.
	LBPool netip.Prefix
	// LBHostnames leaves the cluster's load balancers to the sandbox's
	// cloud, which publishes them by hostname, as EKS does; the node then
	// runs no load-balancer controller.
	LBHostnames bool
	// DNSUpstream answers the cluster DNS's names outside cluster.local
	// (the sandbox's internet DNS).
	DNSUpstream netip.AddrPort
	// PodCIDR and ServiceCIDR are the cluster's private ranges.
	PodCIDR, ServiceCIDR netip.Prefix
	// Mirrors maps registries to the plain-HTTP registries the node pulls
	// them from (docker.io: the sandbox's own).
	Mirrors map[string]string

	ca *pki.CA
}

// APIServiceIP is the first address of the service range, the `kubernetes` Service.
func (c *Cluster) APIServiceIP() netip.Addr { return c.ServiceCIDR.Masked().Addr().Next() }

// DNSServiceIP is the cluster DNS Service address pods are given (.10).
func (c *Cluster) DNSServiceIP() netip.Addr {
	b := c.ServiceCIDR.Masked().Addr().As4()
	b[3] = 10
	return netip.AddrFrom4(b)
}

// NodeName is the name of the cluster's single node.
func (c *Cluster) NodeName() string { return c.Name + "-node" }

// Component is one process of the control plane.
type Component struct {
	Name string
	// Ports are the TCP ports it listens on inside the node namespace.
	Ports []int
	Spec  process.Spec
	// Health checks the running component: nil when it is healthy.
	Health func(ctx context.Context) error
}

func (c *Cluster) pkiDir() string { return filepath.Join(c.Dir, "pki") }
func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.Dir}, parts...)...)
}

// CloudKubeconfig is the sandbox controllers' credentials with the API
// server's published address: the sandbox's cloud reaches the cluster
// from the internet namespace, as a cloud's controllers reach EKS.
func (c *Cluster) CloudKubeconfig() string { return c.path("cloud.kubeconfig") }

// APIServerURL is the published address of the API server.
func (c *Cluster) APIServerURL() string {
	return "https://" + netip.AddrPortFrom(c.Addr, APIPort).String()
}

// Prepare creates the cluster's certificates, keys and component kubeconfigs, keeping existing ones.
func (c *Cluster) Prepare() error {
	ca, err := pki.LoadOrCreateCA(c.pkiDir(), "ca", c.Name+"-ca")
	if err != nil {
		return fmt.Errorf("cluster CA: %w", err)
	}
	c.ca = ca
	if _, err := ca.LoadOrIssue(c.pkiDir(), "apiserver", pki.Request{
		CommonName: "kube-apiserver",
		DNSNames:   []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost", c.Name},
		IPs:        []net.IP{net.IP(c.Addr.AsSlice()), net.IP(c.APIServiceIP().AsSlice()), net.ParseIP("127.0.0.1")},
		Server:     true,
	}); err != nil {
		return err
	}
	if _, err := ca.LoadOrIssue(c.pkiDir(), "node-serving", pki.Request{
		CommonName: "system:node:" + c.NodeName(),
		DNSNames:   []string{c.NodeName()},
		IPs:        []net.IP{net.IP(c.Addr.AsSlice())},
		Server:     true,
	}); err != nil {
		return err
	}
	if _, _, err := pki.LoadOrCreateRSAKey(c.pkiDir(), "sa"); err != nil {
		return err
	}
	clients := []struct {
		name, cn string
		org      []string
	}{
		{"admin", "kubernetes-admin", []string{"system:masters"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}},
		{"controller-manager", "system:kube-controller-manager", nil},
		{"scheduler", "system:kube-scheduler", nil},
		{"kube-proxy", "system:kube-proxy", nil},
		{"node", "system:node:" + c.NodeName(), []string{"system:nodes"}},
		// The sandbox's own controllers (DNS, load balancers) are cluster infrastructure.
		{"sandbox-controller", "isthmus-sandbox-controller", []string{"system:masters"}},
	}
	for _, cl := range clients {
		pair, err := ca.LoadOrIssue(c.pkiDir(), cl.name, pki.Request{CommonName: cl.cn, Organization: cl.org, Client: true})
		if err != nil {
			return err
		}
		if cl.name == "admin" || cl.name == "apiserver-kubelet-client" {
			continue
		}
		if cl.name == "sandbox-controller" {
			if err := c.writeKubeconfig(c.CloudKubeconfig(), c.APIServerURL(), pair); err != nil {
				return err
			}
		}
		if err := c.writeKubeconfig(c.path(cl.name+".kubeconfig"), "https://127.0.0.1:6443", pair); err != nil {
			return err
		}
	}
	return nil
}

// AdminConfig returns the admin kubeconfig entries for this cluster, named after it.
func (c *Cluster) AdminConfig() (*clientcmdapi.Config, error) {
	pair := pki.Pair{CertFile: filepath.Join(c.pkiDir(), "admin.crt"), KeyFile: filepath.Join(c.pkiDir(), "admin.key")}
	return c.kubeconfig(c.APIServerURL(), pair)
}

func (c *Cluster) kubeconfig(server string, pair pki.Pair) (*clientcmdapi.Config, error) {
	caPEM, err := os.ReadFile(filepath.Join(c.pkiDir(), "ca.crt"))
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	certPEM, err := os.ReadFile(pair.CertFile)
	if err != nil {
		return nil, fmt.Errorf("read client certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(pair.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("read client key: %w", err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[c.Name] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name}
	cfg.CurrentContext = c.Name
	return cfg, nil
}

func (c *Cluster) writeKubeconfig(path, server string, pair pki.Pair) error {
	cfg, err := c.kubeconfig(server, pair)
	if err != nil {
		return err
	}
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
