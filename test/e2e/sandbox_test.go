package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// TestSandboxControlPlanes walks the life of a sandbox: a port conflict
// stops `up` with a clear message, `up` then succeeds and is idempotent,
// both clusters work and are independent, and `down` leaves nothing behind.
func TestSandboxControlPlanes(t *testing.T) {
	state := t.TempDir()
	sb := func(timeout time.Duration, args ...string) result {
		return isthmus(t, timeout, append([]string{"sandbox", "--state-dir", state}, args...)...)
	}
	t.Cleanup(func() { sb(2*time.Minute, "down") })

	t.Run("a port already taken stops up and names the port", func(t *testing.T) {
		// Something foreign listens on the API server port inside cluster-eks's network.
		if out, err := exec.Command("ip", "netns", "add", "isthmus-cluster-eks").CombinedOutput(); err != nil {
			t.Fatalf("ip netns add: %v %s", err, out)
		}
		l, err := network.Listen("isthmus-cluster-eks", "tcp", "0.0.0.0:6443")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		r := sb(15*time.Minute, "up")
		if r.err == nil {
			t.Fatal("sandbox up succeeded although port 6443 was taken")
		}
		if !strings.Contains(r.stderr, "port 6443") || !strings.Contains(r.stderr, "kube-apiserver") {
			t.Fatalf("error does not name the port and component:\n%s", r.stderr)
		}
	})

	t.Run("up succeeds once the port is free and prints progress", func(t *testing.T) {
		r := sb(5*time.Minute, "up")
		if r.err != nil {
			t.Fatalf("sandbox up: %v", r.err)
		}
		for _, want := range []string{"cluster-eks: kube-apiserver ready", "cluster-aks: ready at https://198.18.2.1:6443", "sandbox ready"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("progress lacks %q", want)
			}
		}
	})

	t.Run("up again leaves running components alone", func(t *testing.T) {
		r := sb(2*time.Minute, "up")
		if r.err != nil {
			t.Fatalf("second sandbox up: %v", r.err)
		}
		if !strings.Contains(r.stderr, "cluster-eks: kube-apiserver already running") {
			t.Errorf("second up did not reuse the running API server:\n%s", r.stderr)
		}
	})

	t.Run("status shows every component healthy", func(t *testing.T) {
		r := sb(time.Minute, "status")
		if r.err != nil {
			t.Fatalf("status exit: %v", r.err)
		}
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			for _, comp := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node", "kube-proxy"} {
				found := false
				for _, line := range strings.Split(r.stdout, "\n") {
					f := strings.Fields(line)
					if len(f) >= 5 && f[0] == c && f[2] == comp && f[4] == "healthy" {
						found = true
					}
				}
				if !found {
					t.Errorf("status has no healthy row for %s %s", c, comp)
				}
			}
		}
		for _, comp := range []string{"registry", "cloud"} {
			if !regexp.MustCompile(`\(sandbox\)\s+internet\s+` + comp + `\s+\d+\s+healthy`).MatchString(r.stdout) {
				t.Errorf("status has no healthy %s row:\n%s", comp, r.stdout)
			}
		}
	})

	t.Run("load pushes the built images into the registry the nodes pull from", func(t *testing.T) {
		r := sb(2*time.Minute, "load", filepath.Join(imageDir, "oci"))
		if r.err != nil || !strings.Contains(r.stdout, "docker.io/isthmus/demo-app:latest@sha256:") {
			t.Fatalf("sandbox load: %v\n%s", r.err, r.stdout)
		}
		if r := sb(time.Minute, "load", t.TempDir()); r.err == nil || !strings.Contains(r.stderr, "make image") {
			t.Errorf("loading a directory that is no layout: %v %s", r.err, r.stderr)
		}
	})

	t.Run("kubeconfig names an unknown cluster clearly", func(t *testing.T) {
		r := sb(time.Minute, "kubeconfig", "--cluster", "cluster-gke")
		if r.err == nil || !strings.Contains(r.stderr, `unknown cluster "cluster-gke"`) || !strings.Contains(r.stderr, "cluster-eks") {
			t.Fatalf("want an error naming the unknown and the known clusters, got %v %s", r.err, r.stderr)
		}
	})

	kubeconfig := filepath.Join(state, "kubeconfig")
	clients := map[string]*kubernetes.Clientset{}
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: c}).ClientConfig()
		if err != nil {
			t.Fatalf("kubeconfig context %s: %v", c, err)
		}
		clients[c], err = kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
	}

	for name, cs := range clients {
		t.Run(name+" runs its controllers", func(t *testing.T) {
			ctx := t.Context()
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}
			if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "default ServiceAccount in namespace demo", func() bool {
				_, err := cs.CoreV1().ServiceAccounts("demo").Get(ctx, "default", metav1.GetOptions{})
				return err == nil
			})

			labels := map[string]string{"app": "web"}
			replicas := int32(2)
			dep := &appsv1.Deployment{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
				Spec: appsv1.DeploymentSpec{
					Replicas: &replicas,
					Selector: &metav1.LabelSelector{MatchLabels: labels},
					Template: corev1.PodTemplateSpec{
						ObjectMeta: metav1.ObjectMeta{Labels: labels},
						Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "isthmus/demo-app", Args: []string{"sleep"}}}},
					},
				},
			}
			if _, err := cs.AppsV1().Deployments("demo").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a ReplicaSet and 2 Pods for Deployment web", func() bool {
				rs, err := cs.AppsV1().ReplicaSets("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
				if err != nil || len(rs.Items) != 1 {
					return false
				}
				pods, err := cs.CoreV1().Pods("demo").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
				return err == nil && len(pods.Items) == 2
			})

			svc := &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "demo"},
				Spec: corev1.ServiceSpec{
					Selector: labels,
					Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
				},
			}
			if _, err := cs.CoreV1().Services("demo").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "an EndpointSlice for Service web", func() bool {
				sl, err := cs.DiscoveryV1().EndpointSlices("demo").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
				return err == nil && len(sl.Items) == 1
			})

			tr, err := cs.CoreV1().ServiceAccounts("demo").CreateToken(ctx, "default", &authenticationv1.TokenRequest{
				Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"istio-ca"}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("TokenRequest: %v", err)
			}
			rev, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
				Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token, Audiences: []string{"istio-ca"}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("TokenReview: %v", err)
			}
			if !rev.Status.Authenticated || rev.Status.User.Username != "system:serviceaccount:demo:default" {
				t.Fatalf("TokenReview did not accept the token: %+v", rev.Status)
			}
		})
	}

	t.Run("the clusters are independent", func(t *testing.T) {
		ctx := t.Context()
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "only-in-eks", Namespace: "default"}}
		if _, err := clients["cluster-eks"].CoreV1().ConfigMaps("default").Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err := clients["cluster-aks"].CoreV1().ConfigMaps("default").Get(ctx, "only-in-eks", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Fatalf("cluster-aks sees cluster-eks's ConfigMap (err=%v)", err)
		}
		// A token of one cluster means nothing to the other.
		tr, err := clients["cluster-eks"].CoreV1().ServiceAccounts("default").CreateToken(ctx, "default", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rev, err := clients["cluster-aks"].AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: tr.Status.Token},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if rev.Status.Authenticated {
			t.Fatal("cluster-aks accepted a token signed by cluster-eks")
		}
	})

	t.Run("down leaves no process, namespace or link behind", func(t *testing.T) {
		pids := map[string]bool{}
		for _, line := range strings.Split(sb(time.Minute, "status").stdout, "\n")[1:] {
			if f := strings.Fields(line); len(f) >= 4 && f[3] != "-" {
				pids[f[3]] = true
			}
		}
		// Six per cluster, the sandbox's registry and its cloud.
		if len(pids) != 14 {
			t.Fatalf("expected 14 running components before down, found %d", len(pids))
		}
		if r := sb(2*time.Minute, "down"); r.err != nil {
			t.Fatalf("down: %v", r.err)
		}
		for pid := range pids {
			if b, err := os.ReadFile("/proc/" + pid + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
				t.Errorf("process %s still runs after down", pid)
			}
		}
		entries, _ := os.ReadDir("/run/netns")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "isthmus-") {
				t.Errorf("network namespace %s left behind", e.Name())
			}
		}
		if _, err := net.InterfaceByName("isthmus0"); err == nil {
			t.Error("host link isthmus0 left behind")
		}
		if _, err := os.Stat(filepath.Join(state, "clusters")); !os.IsNotExist(err) {
			t.Errorf("state directory not removed: %v", err)
		}
	})
}

// eventually polls cond for up to a minute.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !eventuallyOK(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// eventuallyOK polls cond for up to a minute and says whether it held.
func eventuallyOK(cond func() bool) bool {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
