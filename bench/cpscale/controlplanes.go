package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// controlPlane is one of the two control planes measured, run out of
// cluster on this host against the sandbox's API servers.
type controlPlane struct {
	name string
	// xds is its plaintext ADS address, ready its readiness URL, pprof
	// its profile endpoint ("" when it has none here).
	xds, ready, pprof string
	dir               string
	argv              []string
	env               []string
	cmd               *exec.Cmd
	exited            chan struct{}
}

func (p *controlPlane) start(ctx context.Context) error {
	p.cmd = exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	p.cmd.Dir = p.dir
	p.cmd.Env = append(os.Environ(), p.env...)
	log, err := os.OpenFile(filepath.Join(p.dir, "log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		log.Close()
		return err
	}
	p.exited = make(chan struct{})
	go func() { _ = p.cmd.Wait(); log.Close(); close(p.exited) }()
	return nil
}

func (p *controlPlane) pid() int { return p.cmd.Process.Pid }

// waitReady waits for the readiness URL to answer 200.
func (p *controlPlane) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(p.ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited; its log ends:\n%s", p.name, p.logTail())
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s; its log ends:\n%s", p.name, timeout, p.logTail())
}

// kill stops it at once (SIGKILL to its process group), as a crash would.
func (p *controlPlane) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.exited
}

func (p *controlPlane) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "log"))
	return tailOf(string(b), 3000)
}

// isthmusControlPlane runs `isthmus discovery` for the first cluster with
// an admin kubeconfig (it keeps its CA Secret and leader Lease there) and
// remote secrets for the others, as the walkthrough installs it.
func isthmusControlPlane(ctx context.Context, dir string, clusters []cluster) (*controlPlane, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	primary := clusters[0]
	kc, err := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", primary.name).Output()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig of %s: %w", primary.name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kubeconfig"), kc, 0o600); err != nil {
		return nil, err
	}
	for _, r := range clusters[1:] {
		rk, err := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", r.name).Output()
		if err != nil {
			return nil, fmt.Errorf("kubeconfig of %s: %w", r.name, err)
		}
		sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-" + r.name, Namespace: "istio-system",
			Labels: map[string]string{"istio/multiCluster": "true"}}, StringData: map[string]string{r.name: string(rk)}}
		if _, err := primary.cs.CoreV1().Secrets("istio-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, err
		}
	}
	return &controlPlane{
		name: "isthmus", dir: dir,
		xds: "127.0.0.1:25010", ready: "http://127.0.0.1:25014/ready", pprof: "http://127.0.0.1:25014/debug/pprof/",
		argv: []string{*isthmusBin, "discovery", "--kubeconfig", filepath.Join(dir, "kubeconfig"), "--cluster-id", primary.name,
			"--network", primary.network, "--xds-addr", "127.0.0.1:25010", "--secure-addr", "127.0.0.1:25012",
			"--webhook-addr", "127.0.0.1:25017", "--monitoring-addr", "127.0.0.1:25014"},
		env: []string{"GOMAXPROCS=2"},
	}, nil
}

// istiodReader is istiod's account in each cluster: it may read anything
// and write nothing, so whatever istiod would write (root certificate
// ConfigMaps, webhook CA bundles, leader-election locks, its CA Secret)
// is refused and costs it nothing here.
func istiodReader(ctx context.Context, c cluster, path string) error {
	const name = "istiod-bench"
	if _, err := c.cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}}}}
	if _, err := c.cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: name},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: "default"}}}
	if _, err := c.cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	tr, err := c.cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	admin, err := clientcmd.LoadFromFile(*kubeconfig)
	if err != nil {
		return err
	}
	ac := admin.Clusters[admin.Contexts[c.name].Cluster]
	cfg := clientcmdapi.NewConfig()
	// Istio takes a remote's cluster ID from its cluster entry's name.
	cfg.Clusters[c.name] = &clientcmdapi.Cluster{Server: ac.Server, CertificateAuthorityData: ac.CertificateAuthorityData}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts[c.name] = &clientcmdapi.Context{Cluster: c.name, AuthInfo: name}
	cfg.CurrentContext = c.name
	return clientcmd.WriteToFile(*cfg, path)
}

// istiodControlPlane runs Istio's own pilot-discovery (built once and
// cached by test/istiod) for the first cluster with read-only accounts in
// every cluster: the remotes' kubeconfigs from a directory, as it reads
// remote secrets, and a CA plugged in from files.
func istiodControlPlane(ctx context.Context, dir string, clusters []cluster) (*controlPlane, error) {
	build := exec.CommandContext(ctx, "go", "run", "./test/istiod", "pilot-discovery")
	build.Stderr = os.Stderr
	out, err := build.Output()
	if err != nil {
		return nil, fmt.Errorf("build pilot-discovery (make istiod): %w", err)
	}
	bin := strings.TrimSpace(string(out))
	remotes := filepath.Join(dir, "remotes")
	if err := os.MkdirAll(remotes, 0o700); err != nil {
		return nil, err
	}
	for i, c := range clusters {
		path := filepath.Join(dir, "kubeconfig")
		if i > 0 {
			path = filepath.Join(remotes, c.name+".yaml")
		}
		if err := istiodReader(ctx, c, path); err != nil {
			return nil, fmt.Errorf("istiod's account in %s: %w", c.name, err)
		}
	}
	if err := pluggedCA(filepath.Join(dir, "cacerts")); err != nil {
		return nil, err
	}
	for name, s := range map[string]string{"mesh": "trustDomain: cluster.local\n", "meshNetworks": "networks: {}\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			return nil, err
		}
	}
	return &controlPlane{
		name: "istiod", dir: dir,
		xds: "127.0.0.1:26010", ready: "http://127.0.0.1:26080/ready", pprof: "http://127.0.0.1:26080/debug/pprof/",
		argv: []string{bin, "discovery",
			"--kubeconfig", filepath.Join(dir, "kubeconfig"),
			"--meshConfig", filepath.Join(dir, "mesh"), "--networksConfig", filepath.Join(dir, "meshNetworks"),
			"--clusterID", clusters[0].name, "--domain", "cluster.local",
			"--grpcAddr", "127.0.0.1:26010", "--httpAddr", "127.0.0.1:26080",
			"--secureGRPCAddr", "127.0.0.1:26012", "--httpsAddr", "127.0.0.1:26017", "--monitoringAddr", "127.0.0.1:26014",
			"--shutdownDuration", "1s"},
		env: []string{"GOMAXPROCS=2",
			"POD_NAMESPACE=istio-system", "POD_NAME=istiod-bench", "CLUSTER_ID=" + clusters[0].name,
			"ROOT_CA_DIR=" + filepath.Join(dir, "cacerts"),
			"PILOT_MULTICLUSTER_KUBECONFIG_PATH=" + remotes,
			// What istiod would write where an environment variable turns
			// it off; the rest its accounts' RBAC refuses.
			"INJECT_ENABLED=false", "INJECTION_WEBHOOK_CONFIG_NAME=", "VALIDATION_WEBHOOK_CONFIG_NAME=",
			"PILOT_ENABLE_GATEWAY_API=false", "PILOT_ENABLE_GATEWAY_API_STATUS=false",
			"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false", "PILOT_ENABLE_GATEWAY_API_GATEWAYCLASS_CONTROLLER=false",
			"PILOT_ENABLE_ANALYSIS=false", "PILOT_ENABLE_IP_AUTOALLOCATE=false", "PILOT_ENABLE_NODE_UNTAINT_CONTROLLERS=false",
			"ENABLE_CLUSTER_TRUST_BUNDLE_API=false"},
	}, nil
}

// pluggedCA writes a root for istiod's CA as cacerts files (Istio's
// plugged-in CA), so it needs no Secret of its own.
func pluggedCA(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cpscale"}, CommonName: "cpscale root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range map[string][]byte{"ca-cert.pem": cert, "root-cert.pem": cert, "cert-chain.pem": cert,
		"ca-key.pem": pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
