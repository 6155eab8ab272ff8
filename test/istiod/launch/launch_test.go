package launch

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/kubernetes/scheme"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// admin is a sandbox-like admin kubeconfig: a context per cluster, named
// by its ID, with client certificates the readers must not inherit.
func admin(servers map[string]string) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	for id, server := range servers {
		cfg.Clusters["kc-"+id] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: []byte("ca of " + id)}
		cfg.AuthInfos["admin-"+id] = &clientcmdapi.AuthInfo{ClientCertificateData: []byte("admin cert")}
		cfg.Contexts[id] = &clientcmdapi.Context{Cluster: "kc-" + id, AuthInfo: "admin-" + id}
	}
	return cfg
}

func TestReaderKubeconfig(t *testing.T) {
	cfg, err := readerKubeconfig(admin(map[string]string{"cluster-eks": "https://10.0.0.1:6443", "cluster-aks": "https://10.0.0.2:6443"}),
		"cluster-aks", "istiod-diff", "TOKEN")
	if err != nil {
		t.Fatal(err)
	}
	// Istio names a remote by its cluster entry: it must be the ID.
	if len(cfg.Clusters) != 1 || cfg.Clusters["cluster-aks"] == nil {
		t.Fatalf("clusters %v, want only cluster-aks", cfg.Clusters)
	}
	if c := cfg.Clusters["cluster-aks"]; c.Server != "https://10.0.0.2:6443" || string(c.CertificateAuthorityData) != "ca of cluster-aks" {
		t.Errorf("cluster-aks: server %s, CA %q", c.Server, c.CertificateAuthorityData)
	}
	if len(cfg.AuthInfos) != 1 || cfg.AuthInfos["istiod-diff"] == nil || cfg.AuthInfos["istiod-diff"].Token != "TOKEN" ||
		cfg.AuthInfos["istiod-diff"].ClientCertificateData != nil {
		t.Errorf("users %v, want only istiod-diff with the token", cfg.AuthInfos)
	}
	if c := cfg.Contexts["cluster-aks"]; cfg.CurrentContext != "cluster-aks" || c == nil || c.Cluster != "cluster-aks" || c.AuthInfo != "istiod-diff" {
		t.Errorf("current context %q: %v", cfg.CurrentContext, c)
	}
	if _, err := readerKubeconfig(admin(map[string]string{"cluster-eks": "https://x"}), "cluster-gke", "r", "t"); err == nil {
		t.Error("no error for a cluster the admin kubeconfig lacks")
	}
}

func bench(dir string) *Istiod {
	return &Istiod{Binary: "/cache/pilot-discovery", Dir: dir, Name: "istiod-bench", Role: "istiod-bench", CAName: "cpscale",
		Clusters: []Cluster{{ID: "cluster-eks"}, {ID: "cluster-aks"}, {ID: "cluster-gke"}},
		Addrs: Addrs{GRPC: "127.0.0.1:26010", HTTP: "127.0.0.1:26080", SecureGRPC: "127.0.0.1:26012",
			HTTPS: "127.0.0.1:26017", Monitoring: "127.0.0.1:26014"}}
}

// The command line and environment both callers ran before they shared
// this package.
func TestArgvEnv(t *testing.T) {
	o := bench("/d")
	want := []string{"/cache/pilot-discovery", "discovery",
		"--kubeconfig", "/d/kubeconfig",
		"--meshConfig", "/d/mesh", "--networksConfig", "/d/meshNetworks",
		"--clusterID", "cluster-eks", "--domain", "cluster.local",
		"--grpcAddr", "127.0.0.1:26010", "--httpAddr", "127.0.0.1:26080",
		"--secureGRPCAddr", "127.0.0.1:26012", "--httpsAddr", "127.0.0.1:26017", "--monitoringAddr", "127.0.0.1:26014",
		"--shutdownDuration", "1s"}
	if got := o.Argv(); !slices.Equal(got, want) {
		t.Errorf("argv\n got %q\nwant %q", got, want)
	}
	wantEnv := []string{"POD_NAMESPACE=istio-system", "POD_NAME=istiod-bench", "CLUSTER_ID=cluster-eks",
		"ROOT_CA_DIR=/d/cacerts", "PILOT_MULTICLUSTER_KUBECONFIG_PATH=/d/remotes",
		"INJECT_ENABLED=false", "INJECTION_WEBHOOK_CONFIG_NAME=", "VALIDATION_WEBHOOK_CONFIG_NAME=",
		"PILOT_ENABLE_GATEWAY_API=false", "PILOT_ENABLE_GATEWAY_API_STATUS=false",
		"PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false", "PILOT_ENABLE_GATEWAY_API_GATEWAYCLASS_CONTROLLER=false",
		"PILOT_ENABLE_ANALYSIS=false", "PILOT_ENABLE_IP_AUTOALLOCATE=false", "PILOT_ENABLE_NODE_UNTAINT_CONTROLLERS=false",
		"ENABLE_CLUSTER_TRUST_BUNDLE_API=false"}
	if got := o.Env(); !slices.Equal(got, wantEnv) {
		t.Errorf("env\n got %q\nwant %q", got, wantEnv)
	}
	if got, want := o.Kubeconfigs(), []string{"/d/kubeconfig", "/d/remotes/cluster-aks.yaml", "/d/remotes/cluster-gke.yaml"}; !slices.Equal(got, want) {
		t.Errorf("kubeconfigs %q, want %q", got, want)
	}
	if got := o.ReadyURL(); got != "http://127.0.0.1:26080/ready" {
		t.Errorf("ready URL %s", got)
	}
}

func TestPluggedCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cacerts")
	if err := pluggedCA(dir, "cpscale"); err != nil {
		t.Fatal(err)
	}
	read := func(name string) *pem.Block {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", name, fi.Mode())
		}
		b, _ := os.ReadFile(filepath.Join(dir, name))
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: no PEM", name)
		}
		return blk
	}
	certBlk := read("ca-cert.pem")
	for _, name := range []string{"root-cert.pem", "cert-chain.pem"} {
		if string(read(name).Bytes) != string(certBlk.Bytes) {
			t.Errorf("%s differs from ca-cert.pem: the root signs itself", name)
		}
	}
	cert, err := x509.ParseCertificate(certBlk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA || cert.Subject.CommonName != "cpscale root" || !slices.Equal(cert.Subject.Organization, []string{"cpscale"}) ||
		cert.KeyUsage&x509.KeyUsageCertSign == 0 || time.Until(cert.NotAfter) < 23*time.Hour {
		t.Errorf("root: CA %v, subject %v, usage %v, until %v", cert.IsCA, cert.Subject, cert.KeyUsage, cert.NotAfter)
	}
	key, err := x509.ParseECPrivateKey(read("ca-key.pem").Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(cert.PublicKey.(*ecdsa.PublicKey)) {
		t.Error("ca-key.pem is not the root's key")
	}
}

// fakeCluster is a clientset that issues tokens, as an API server does.
func fakeCluster(id string) Cluster {
	cs := fake.NewClientset()
	cs.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{Token: "token of " + id}}, nil
	})
	return Cluster{ID: id, Client: cs}
}

func TestPrepare(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	adminPath := filepath.Join(dir, "admin.kubeconfig")
	if err := clientcmd.WriteToFile(*admin(map[string]string{"cluster-eks": "https://eks", "cluster-aks": "https://aks"}), adminPath); err != nil {
		t.Fatal(err)
	}
	o := &Istiod{Dir: filepath.Join(dir, "istiod"), AdminKubeconfig: adminPath, Name: "istiod-diff", Role: "istiod-diff-read", CAName: "istiod-diff",
		Mesh: "trustDomain: cluster.local\n", Clusters: []Cluster{fakeCluster("cluster-eks"), fakeCluster("cluster-aks")}}
	// Twice: a second run over the first's accounts must not fail.
	for range 2 {
		if err := o.Prepare(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range o.Clusters {
		if _, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "istiod-diff", metav1.GetOptions{}); err != nil {
			t.Errorf("%s: %v", c.ID, err)
		}
		role, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "istiod-diff-read", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.ID, err)
		}
		want := []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{"*"}, Verbs: []string{"get", "list", "watch"}}}
		if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].Verbs, want[0].Verbs) || !slices.Equal(role.Rules[0].APIGroups, want[0].APIGroups) ||
			!slices.Equal(role.Rules[0].Resources, want[0].Resources) {
			t.Errorf("%s: rules %v, want %v", c.ID, role.Rules, want)
		}
		b, err := c.Client.RbacV1().ClusterRoleBindings().Get(ctx, "istiod-diff-read", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: %v", c.ID, err)
		}
		if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "istiod-diff-read"}) ||
			len(b.Subjects) != 1 || b.Subjects[0] != (rbacv1.Subject{Kind: "ServiceAccount", Name: "istiod-diff", Namespace: "default"}) {
			t.Errorf("%s: binding %v %v", c.ID, b.RoleRef, b.Subjects)
		}
		kc, err := clientcmd.LoadFromFile(o.Kubeconfigs()[i])
		if err != nil {
			t.Fatal(err)
		}
		if kc.CurrentContext != c.ID || kc.AuthInfos["istiod-diff"].Token != "token of "+c.ID {
			t.Errorf("%s's kubeconfig: context %s, users %v", c.ID, kc.CurrentContext, kc.AuthInfos)
		}
	}
	for name, want := range map[string]string{"mesh": "trustDomain: cluster.local\n", "meshNetworks": "networks: {}\n"} {
		if b, err := os.ReadFile(filepath.Join(o.Dir, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q %v, want %q", name, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(o.Dir, "cacerts", "ca-key.pem")); err != nil {
		t.Error(err)
	}

	for range 2 {
		if err := o.RemoveReaders(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range o.Clusters {
		if _, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "istiod-diff-read", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s: role left: %v", c.ID, err)
		}
	}
}

// accessReviews answers SelfSubjectAccessReviews, allowing what allow says.
func accessReviews(t *testing.T, allow func(verb string) bool) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The client sends protobuf.
		body, _ := io.ReadAll(r.Body)
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
		rev, ok := obj.(*authorizationv1.SelfSubjectAccessReview)
		if err != nil || !ok || !strings.HasSuffix(r.URL.Path, "/selfsubjectaccessreviews") {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusBadRequest)
			return
		}
		rev.Status.Allowed = allow(rev.Spec.ResourceAttributes.Verb)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(rev)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestCheckReadOnly(t *testing.T) {
	for _, tc := range []struct {
		name  string
		allow func(verb string) bool
		fail  string
	}{
		{"reader", func(v string) bool { return v == "get" || v == "list" || v == "watch" }, ""},
		{"writer", func(string) bool { return true }, "may create configmaps"},
		{"nothing", func(string) bool { return false }, "cannot list pods"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &Istiod{Dir: t.TempDir(), Name: "r", Clusters: []Cluster{{ID: "c1"}}}
			cfg, err := readerKubeconfig(admin(map[string]string{"c1": accessReviews(t, tc.allow)}), "c1", "r", "t")
			if err != nil {
				t.Fatal(err)
			}
			cfg.Clusters["c1"].CertificateAuthorityData = nil
			if err := clientcmd.WriteToFile(*cfg, o.Kubeconfigs()[0]); err != nil {
				t.Fatal(err)
			}
			err = o.CheckReadOnly(context.Background())
			if tc.fail == "" && err != nil || tc.fail != "" && (err == nil || !strings.Contains(err.Error(), tc.fail)) {
				t.Errorf("got %v, want %q", err, tc.fail)
			}
		})
	}
}

func TestProcess(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	var starts atomic.Int32
	// Ready once this start has written its line.
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if b, _ := os.ReadFile(log); int32(strings.Count(string(b), "\n")) < starts.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer ready.Close()
	p := &Process{Dir: dir, Log: log, Ready: ready.URL, Env: []string{"GREETING=hi"},
		Argv: []string{"sh", "-c", `echo "$GREETING from $PWD"; exec sleep 60`}}
	// Started twice, as the reconnect storm restarts it: the log keeps both.
	for range 2 {
		starts.Add(1)
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := p.WaitReady(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		p.Kill()
		select {
		case <-p.Exited():
		default:
			t.Fatal("Kill returned before the process exited")
		}
	}
	if b, _ := os.ReadFile(p.Log); strings.Count(string(b), "hi from "+dir+"\n") != 2 {
		t.Errorf("log %q", b)
	}

	// One that ignores SIGTERM (sleep inherits the ignored signal) is
	// killed after the grace.
	p = &Process{Dir: dir, Log: filepath.Join(dir, "log2"), Argv: []string{"sh", "-c", `trap "" TERM; sleep 60`}}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.Stop(200 * time.Millisecond)
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Stop took %s", d)
	}

	// One that exits is not waited on for the whole timeout.
	p = &Process{Dir: dir, Log: filepath.Join(dir, "log3"), Ready: "http://127.0.0.1:1/ready", Argv: []string{"sh", "-c", "exit 3"}}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(time.Minute); err == nil || !strings.Contains(err.Error(), "exited (exit status 3)") {
		t.Errorf("WaitReady: %v", err)
	}
	p.Stop(time.Second) // after it exited: returns
}
