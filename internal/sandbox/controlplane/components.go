package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/process"
)

// Components returns the control plane's processes in start order.
func (c *Cluster) Components() []Component {
	pk := func(name string) string { return filepath.Join(c.pkiDir(), name) }
	spec := func(name string, args ...string) process.Spec {
		return process.Spec{
			Name:  name,
			Path:  c.Bins.Path(name),
			Args:  args,
			Dir:   c.Dir,
			NetNS: c.NS,
			Log:   c.path("logs", name+".log"),
			PID:   c.path("run", name+".pid"),
		}
	}
	etcd := Component{
		Name:  "etcd",
		Ports: []int{2379, 2380},
		Spec: spec("etcd",
			"--name="+c.Name,
			"--data-dir="+c.path("etcd"),
			"--listen-client-urls=http://127.0.0.1:2379",
			"--advertise-client-urls=http://127.0.0.1:2379",
			"--listen-peer-urls=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls=http://127.0.0.1:2380",
			"--initial-cluster="+c.Name+"=http://127.0.0.1:2380",
			// A sandbox trades durability on power loss for far less disk wait.
			"--unsafe-no-fsync",
			"--log-level=warn",
		),
		Health: c.inNodeHealth("http://127.0.0.1:2379/health", `"health":"true"`),
	}
	apiserver := Component{
		Name:  "kube-apiserver",
		Ports: []int{APIPort},
		Spec: spec("kube-apiserver",
			"--etcd-servers=http://127.0.0.1:2379",
			"--bind-address=0.0.0.0",
			fmt.Sprintf("--secure-port=%d", APIPort),
			"--advertise-address="+c.Addr.String(),
			"--tls-cert-file="+pk("apiserver.crt"),
			"--tls-private-key-file="+pk("apiserver.key"),
			"--client-ca-file="+pk("ca.crt"),
			"--service-account-issuer="+Issuer,
			"--service-account-key-file="+pk("sa.pub"),
			"--service-account-signing-key-file="+pk("sa.key"),
			"--service-cluster-ip-range="+c.ServiceCIDR.String(),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--kubelet-client-certificate="+pk("apiserver-kubelet-client.crt"),
			"--kubelet-client-key="+pk("apiserver-kubelet-client.key"),
			"--kubelet-certificate-authority="+pk("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP",
			"--profiling=false",
			"--event-ttl=1h",
			"--v=1",
		),
		Health: c.apiHealth,
	}
	kcm := Component{
		Name:  "kube-controller-manager",
		Ports: []int{10257},
		Spec: spec("kube-controller-manager",
			"--kubeconfig="+c.path("controller-manager.kubeconfig"),
			"--authentication-kubeconfig="+c.path("controller-manager.kubeconfig"),
			"--authorization-kubeconfig="+c.path("controller-manager.kubeconfig"),
			"--bind-address=127.0.0.1",
			"--secure-port=10257",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--controllers=*",
			"--service-account-private-key-file="+pk("sa.key"),
			"--root-ca-file="+pk("ca.crt"),
			"--cluster-signing-cert-file="+pk("ca.crt"),
			"--cluster-signing-key-file="+pk("ca.key"),
			"--allocate-node-cidrs=true",
			"--cluster-cidr="+c.PodCIDR.String(),
			"--node-cidr-mask-size=24",
			"--service-cluster-ip-range="+c.ServiceCIDR.String(),
			"--cluster-name="+c.Name,
			"--profiling=false",
			"--v=1",
		),
		Health: c.inNodeHealth("https://127.0.0.1:10257/healthz", "ok"),
	}
	scheduler := Component{
		Name:  "kube-scheduler",
		Ports: []int{10259},
		Spec: spec("kube-scheduler",
			"--kubeconfig="+c.path("scheduler.kubeconfig"),
			"--authentication-kubeconfig="+c.path("scheduler.kubeconfig"),
			"--authorization-kubeconfig="+c.path("scheduler.kubeconfig"),
			"--bind-address=127.0.0.1",
			"--secure-port=10259",
			"--leader-elect=false",
			"--profiling=false",
			"--v=1",
		),
		Health: c.inNodeHealth("https://127.0.0.1:10259/healthz", "ok"),
	}
	nodeArgs := []string{"sandbox", "node",
		"--name=" + c.NodeName(),
		"--kubeconfig=" + c.path("node.kubeconfig"),
		"--controller-kubeconfig=" + c.path("sandbox-controller.kubeconfig"),
		"--dir=" + c.path("node"),
		"--netns=" + c.NS,
		"--address=" + c.Addr.String(),
		"--serving-cert=" + pk("node-serving.crt"),
		"--serving-key=" + pk("node-serving.key"),
		"--client-ca=" + pk("ca.crt"),
		"--lb-pool=" + c.LBPool.String(),
		"--dns-ip=" + c.DNSServiceIP().String(),
		"--api-service-ip=" + c.APIServiceIP().String(),
	}
	if c.LBHostnames {
		nodeArgs = append(nodeArgs, "--lb-mode=hostname")
	}
	if c.DNSUpstream.IsValid() {
		nodeArgs = append(nodeArgs, "--dns-upstream="+c.DNSUpstream.String())
	}
	for _, k := range sortedKeys(c.NodeLabels) {
		nodeArgs = append(nodeArgs, "--label="+k+"="+c.NodeLabels[k])
	}
	if len(c.Mirrors) > 0 {
		nodeArgs = append(nodeArgs, "--image-dir="+c.path("images"))
		for _, k := range sortedKeys(c.Mirrors) {
			nodeArgs = append(nodeArgs, "--mirror="+k+"="+c.Mirrors[k])
		}
	}
	nodeSpec := spec("node", nodeArgs...)
	nodeSpec.Path = c.Self
	node := Component{
		Name:   "node",
		Ports:  []int{10250, 10248, 53},
		Spec:   nodeSpec,
		Health: c.inNodeHealth("http://127.0.0.1:10248/healthz", "ok"),
	}
	proxy := Component{
		Name:  "kube-proxy",
		Ports: []int{10249, 10256},
		Spec: spec("kube-proxy",
			"--kubeconfig="+c.path("kube-proxy.kubeconfig"),
			"--hostname-override="+c.NodeName(),
			"--proxy-mode=iptables",
			"--cluster-cidr="+c.PodCIDR.String(),
			// A network namespace cannot write nf_conntrack_max; leave conntrack sysctls alone.
			"--conntrack-max-per-core=0",
			"--conntrack-tcp-timeout-established=0",
			"--conntrack-tcp-timeout-close-wait=0",
			"--metrics-bind-address=127.0.0.1:10249",
			"--healthz-bind-address=127.0.0.1:10256",
			"--profiling=false",
			"--v=1",
		),
		Health: c.inNodeHealth("http://127.0.0.1:10256/healthz", ""),
	}
	return []Component{etcd, apiserver, kcm, scheduler, node, proxy}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// inNodeHealth checks an endpoint that listens only inside the node namespace.
// Components' self-signed serving certificates are not verified: the check is
// about liveness, and the connection never leaves the namespace.
func (c *Cluster) inNodeHealth(url, want string) func(ctx context.Context) error {
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext:       network.Dialer(c.NS),
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // liveness probe inside the node namespace
			DisableKeepAlives: true,
		},
	}
	return func(ctx context.Context) error { return HTTPHealth(ctx, client, url, want) }
}

// apiHealth checks /readyz on the published address, as a user would reach it.
func (c *Cluster) apiHealth(ctx context.Context) error {
	caPEM, err := os.ReadFile(filepath.Join(c.pkiDir(), "ca.crt"))
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.pkiDir(), "admin.crt"), filepath.Join(c.pkiDir(), "admin.key"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
			DisableKeepAlives: true,
		},
	}
	return HTTPHealth(ctx, client, c.APIServerURL()+"/readyz", "ok")
}

// HTTPHealth GETs url and wants 200 with want in the body (any body when
// want is empty).
func HTTPHealth(ctx context.Context, client *http.Client, url, want string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("%s: HTTP %d %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}
