package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
	"github.com/isthmus-mesh/isthmus/internal/sandbox"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// sandboxEnv is a running sandbox and the means to drive it like a user.
type sandboxEnv struct {
	t          *testing.T
	state      string
	kubeconfig string
	kubectlBin string
	clients    map[string]*kubernetes.Clientset
}

// upSandbox starts a sandbox for one test and stops it at the end.
func upSandbox(t *testing.T) *sandboxEnv {
	t.Helper()
	state := t.TempDir()
	e := &sandboxEnv{t: t, state: state, kubeconfig: filepath.Join(state, "kubeconfig"),
		kubectlBin: kubebin.Set{Dir: filepath.Join(kubebin.CacheDir(), "kube", kubebin.Version, "bin")}.Path("kubectl"),
		clients:    map[string]*kubernetes.Clientset{}}
	t.Cleanup(func() { isthmus(t, 2*time.Minute, "sandbox", "--state-dir", state, "down") })
	if r := isthmus(t, 10*time.Minute, "sandbox", "--state-dir", state, "up"); r.err != nil {
		t.Fatalf("sandbox up: %v", r.err)
	}
	if r := isthmus(t, 2*time.Minute, "sandbox", "--state-dir", state, "load", filepath.Join(imageDir, "oci")); r.err != nil {
		t.Fatalf("sandbox load: %v", r.err)
	}
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: e.kubeconfig},
			&clientcmd.ConfigOverrides{CurrentContext: c}).ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		e.clients[c] = kubernetes.NewForConfigOrDie(cfg)
	}
	return e
}

// sandboxDNS resolves through the sandbox's internet DNS, as a cloud user's
// resolver would; the host's own resolver does not know the sandbox.
var sandboxDNS = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
	return (&net.Dialer{}).DialContext(ctx, network, sandbox.DNSAddr.String())
}}

// lbAddress waits for a LoadBalancer Service's address and returns it: the
// IP in its status, or what its hostname resolves to now through the
// sandbox's DNS (cluster-eks's load balancers have names only, as EKS's).
func (e *sandboxEnv) lbAddress(t *testing.T, cluster, ns, name string) string {
	t.Helper()
	var addr string
	eventually(t, fmt.Sprintf("a load balancer address for %s/%s in %s", ns, name, cluster), func() bool {
		svc, err := e.clients[cluster].CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil || len(svc.Status.LoadBalancer.Ingress) == 0 {
			return false
		}
		in := svc.Status.LoadBalancer.Ingress[0]
		if in.IP != "" {
			addr = in.IP
			return true
		}
		if in.Hostname == "" {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		ips, err := sandboxDNS.LookupNetIP(ctx, "ip4", in.Hostname)
		if err != nil || len(ips) == 0 {
			return false
		}
		addr = ips[0].String()
		return true
	})
	return addr
}

// kubectl runs the sandbox's kubectl against a cluster.
func (e *sandboxEnv) kubectl(cluster string, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectlBin, append([]string{"--kubeconfig", e.kubeconfig, "--context", cluster}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("kubectl %v: %w: %s", args, err, errb.String())
	}
	return out.String(), nil
}

func (e *sandboxEnv) apply(cluster, manifest string) {
	e.t.Helper()
	if out, err := e.kubectl(cluster, manifest, "apply", "-f", "-"); err != nil {
		e.t.Fatalf("apply in %s: %v\n%s", cluster, err, out)
	}
}

// applyWarned applies a manifest and returns what kubectl printed,
// warnings from admission included.
func (e *sandboxEnv) applyWarned(cluster, manifest string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.kubectlBin, "--kubeconfig", e.kubeconfig, "--context", cluster, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	if err != nil {
		e.t.Fatalf("apply in %s: %v\n%s", cluster, err, out)
	}
	return string(out)
}

func (e *sandboxEnv) waitReady(cluster, ns, selector string, n int) []corev1.Pod {
	e.t.Helper()
	var pods []corev1.Pod
	eventually(e.t, fmt.Sprintf("%d ready pods %s in %s", n, selector, cluster), func() bool {
		pods = e.readyPods(cluster, ns, selector)
		return len(pods) == n
	})
	return pods
}

// readyPods are the pods matching selector that are Ready and not being
// deleted (none if the API server does not answer).
func (e *sandboxEnv) readyPods(cluster, ns, selector string) []corev1.Pod {
	list, err := e.clients[cluster].CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil
	}
	var pods []corev1.Pod
	for _, p := range list.Items {
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
	}
	return pods
}

const profileManifest = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: profile, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: profile}}
  template:
    metadata: {labels: {app: profile}}
    spec:
      containers:
      - name: profile
        image: isthmus/demo-app
        args: [profile]
        env:
        - {name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {port: http, path: /healthz}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: profile, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: profile}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: default, labels: {app: sleep}}
spec:
  containers:
  - name: sleep
    image: curlimages/curl
    command: [sleep, "3650d"]
    securityContext: {runAsUser: 1337}
`

func TestSandboxNodes(t *testing.T) {
	e := upSandbox(t)
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		e.apply(c, profileManifest)
	}
	eks := e.waitReady("cluster-eks", "default", "app=profile", 2)
	e.waitReady("cluster-eks", "default", "app=sleep", 1)
	aks := e.waitReady("cluster-aks", "default", "app=profile", 2)
	curl := func(url string) (string, error) {
		return e.kubectl("cluster-eks", "", "exec", "sleep", "--", "curl", "-sS", "--connect-timeout", "2", "-m", "5", url)
	}

	t.Run("the EndpointSlice lists both replicas", func(t *testing.T) {
		eventually(t, "2 ready endpoints", func() bool {
			sl, err := e.clients["cluster-eks"].DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=profile"})
			if err != nil || len(sl.Items) != 1 {
				return false
			}
			ready := 0
			for _, ep := range sl.Items[0].Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
					ready++
				}
			}
			return ready == 2
		})
	})

	t.Run("a pod the node controller marked not ready is Ready again: its node agent writes its own status back, as the kubelet", func(t *testing.T) {
		// What the node lifecycle controller does to every pod of a node
		// whose lease it found stale (after a frozen API server, say).
		pods := e.clients["cluster-eks"].CoreV1().Pods("default")
		p, err := pods.Get(context.Background(), eks[0].Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				p.Status.Conditions[i].Status, p.Status.Conditions[i].Reason = corev1.ConditionFalse, "NodeNotReady"
			}
		}
		if _, err := pods.UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		e.waitReady("cluster-eks", "default", "app=profile", 2)
	})

	t.Run("a node the node controller marked Unknown is Ready again within 20 s: its agent posts its status when the API's is not Ready, as the kubelet", func(t *testing.T) {
		// What the node lifecycle controller does to a node whose lease
		// went stale (its API server away longer than the lease); the
		// agent used to post its Ready condition once a minute only, and
		// the node's pods were marked not ready again until it did.
		nodes := e.clients["cluster-eks"].CoreV1().Nodes()
		p, err := e.clients["cluster-eks"].CoreV1().Pods("default").Get(context.Background(), eks[0].Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n, err := nodes.Get(context.Background(), p.Spec.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				n.Status.Conditions[i].Status, n.Status.Conditions[i].Reason = corev1.ConditionUnknown, "NodeStatusUnknown"
			}
		}
		if _, err := nodes.UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		marked := time.Now()
		eventually(t, "node "+n.Name+" Ready again", func() bool {
			got, err := nodes.Get(context.Background(), n.Name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			for _, c := range got.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					return true
				}
			}
			return false
		})
		if took := time.Since(marked); took > 20*time.Second {
			t.Errorf("node %s Ready again after %s, want <= 20 s (the agent checks every 10 s)", n.Name, took.Round(time.Second))
		}
		e.waitReady("cluster-eks", "default", "app=profile", 2)
	})

	t.Run("a client pod reaches the Service by DNS name and ClusterIP, and both backends answer", func(t *testing.T) {
		svc, err := e.clients["cluster-eks"].CoreV1().Services("default").Get(context.Background(), "profile", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// kube-proxy programs a Service shortly after its endpoints are
		// ready, as in any cluster: wait for the first answer.
		eventually(t, "kube-proxy forwards the Service", func() bool {
			_, err := curl("http://" + svc.Spec.ClusterIP + ":8080/profile?id=4")
			return err == nil
		})
		seen := map[string]bool{}
		for i := 0; i < 30 && len(seen) < 2; i++ {
			for _, url := range []string{"http://profile.default.svc.cluster.local:8080/profile?id=4", "http://profile:8080/profile?id=4", "http://" + svc.Spec.ClusterIP + ":8080/profile?id=4"} {
				out, err := curl(url)
				if err != nil {
					t.Fatalf("%s: %v", url, err)
				}
				var p struct {
					Name     string
					ServedBy struct{ Pod, Node string }
				}
				if err := json.Unmarshal([]byte(out), &p); err != nil || p.Name != demoapp.NameOf(4) {
					t.Fatalf("%s answered %q", url, out)
				}
				if p.ServedBy.Node != "cluster-eks-node" {
					t.Fatalf("answered from node %q", p.ServedBy.Node)
				}
				seen[p.ServedBy.Pod] = true
			}
		}
		if !seen[eks[0].Name] || !seen[eks[1].Name] {
			t.Fatalf("not both backends answered: %v (pods %s, %s)", seen, eks[0].Name, eks[1].Name)
		}
	})

	t.Run("containers run as their securityContext user", func(t *testing.T) {
		out, err := e.kubectl("cluster-eks", "", "exec", "sleep", "--", "id", "-u")
		if err != nil || strings.TrimSpace(out) != "1337" {
			t.Fatalf("id -u = %q, %v", out, err)
		}
	})

	t.Run("another cluster's pod and service addresses are unreachable, its load balancer is reachable", func(t *testing.T) {
		svc, err := e.clients["cluster-aks"].CoreV1().Services("default").Get(context.Background(), "profile", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, url := range []string{"http://" + aks[0].Status.PodIP + ":8080/healthz", "http://" + svc.Spec.ClusterIP + ":8080/healthz"} {
			if out, err := curl(url); err == nil {
				t.Errorf("cluster-eks reached cluster-aks's private address %s: %s", url, out)
			}
		}
		lb := e.lbAddress(t, "cluster-aks", "default", "profile")
		if !strings.HasPrefix(lb, "198.18.2.") {
			t.Fatalf("cluster-aks load balancer address %s is not in its pool 198.18.2.0/24", lb)
		}
		// The address is in the Service's status before cluster-aks's
		// kube-proxy has programmed it (a cloud LB lags the same way):
		// wait for the first answer, then insist on where it came from.
		var out string
		eventually(t, "cluster-aks's kube-proxy forwards its load balancer address", func() bool {
			out, err = curl("http://" + lb + ":8080/profile?id=4")
			return err == nil
		})
		if !strings.Contains(out, "cluster-aks-node") {
			t.Fatalf("cluster-eks pod -> cluster-aks load balancer answered from elsewhere: %q", out)
		}
		// The host reaches it too, as an operator's laptop reaches a cloud LB.
		resp, err := http.Get("http://" + lb + ":8080/healthz")
		if err != nil {
			t.Fatalf("host -> load balancer: %v", err)
		}
		resp.Body.Close()
	})

	t.Run("kubectl logs returns the container's output", func(t *testing.T) {
		out, err := e.kubectl("cluster-eks", "", "logs", eks[0].Name)
		if err != nil || !strings.Contains(out, "serving") {
			t.Fatalf("logs: %q %v", out, err)
		}
	})

	t.Run("a projected token passes TokenReview with its audience", func(t *testing.T) {
		e.apply("cluster-aks", `
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: default}
---
apiVersion: v1
kind: Pod
metadata: {name: tokened, namespace: default, labels: {app: tokened}}
spec:
  serviceAccountName: reader
  containers:
  - name: main
    image: busybox
    command: [sleep, "3650d"]
    volumeMounts: [{name: istio-token, mountPath: /var/run/secrets/tokens}]
  volumes:
  - name: istio-token
    projected:
      sources:
      - serviceAccountToken: {audience: istio-ca, expirationSeconds: 43200, path: istio-token}
`)
		e.waitReady("cluster-aks", "default", "app=tokened", 1)
		token, err := e.kubectl("cluster-aks", "", "exec", "tokened", "--", "cat", "/var/run/secrets/tokens/istio-token")
		if err != nil {
			t.Fatal(err)
		}
		rev, err := e.clients["cluster-aks"].AuthenticationV1().TokenReviews().Create(context.Background(), &authenticationv1.TokenReview{
			Spec: authenticationv1.TokenReviewSpec{Token: strings.TrimSpace(token), Audiences: []string{"istio-ca"}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !rev.Status.Authenticated || rev.Status.User.Username != "system:serviceaccount:default:reader" {
			t.Fatalf("token review: %+v", rev.Status)
		}
		if got := rev.Status.User.Extra["authentication.kubernetes.io/pod-name"]; len(got) != 1 || got[0] != "tokened" {
			t.Fatalf("token not bound to the pod: %v", rev.Status.User.Extra)
		}
	})

	t.Run("a failing readiness probe takes the pod out of its EndpointSlice; a failing liveness probe restarts it", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: v1
kind: Pod
metadata: {name: flaky, namespace: default, labels: {app: flaky}}
spec:
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "touch /state/ready /state/alive; exec sleep 3650d"]
    volumeMounts: [{name: state, mountPath: /state}]
    readinessProbe: {exec: {command: [cat, /state/ready]}, periodSeconds: 1, failureThreshold: 1}
    livenessProbe: {exec: {command: [cat, /state/alive]}, periodSeconds: 1, failureThreshold: 2}
  volumes: [{name: state, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: flaky, namespace: default}
spec:
  selector: {app: flaky}
  ports: [{port: 80}]
`)
		e.waitReady("cluster-eks", "default", "app=flaky", 1)
		endpointReady := func() (bool, bool) {
			sl, err := e.clients["cluster-eks"].DiscoveryV1().EndpointSlices("default").List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=flaky"})
			if err != nil || len(sl.Items) == 0 || len(sl.Items[0].Endpoints) == 0 {
				return false, false
			}
			r := sl.Items[0].Endpoints[0].Conditions.Ready
			return r != nil && *r, true
		}
		eventually(t, "flaky ready in its EndpointSlice", func() bool { r, ok := endpointReady(); return ok && r })
		if _, err := e.kubectl("cluster-eks", "", "exec", "flaky", "--", "rm", "/state/ready"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "flaky not ready in its EndpointSlice", func() bool { r, _ := endpointReady(); return !r })

		if _, err := e.kubectl("cluster-eks", "", "exec", "flaky", "--", "rm", "/state/alive"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a restart after the liveness probe failed", func() bool {
			p, err := e.clients["cluster-eks"].CoreV1().Pods("default").Get(context.Background(), "flaky", metav1.GetOptions{})
			return err == nil && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1
		})
	})

	t.Run("an unknown image waits with a reason naming it", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: v1
kind: Pod
metadata: {name: unknown-image, namespace: default}
spec:
  containers: [{name: main, image: "nginx:1.25"}]
`)
		eventually(t, "ErrImagePull or ImagePullBackOff naming nginx:1.25", func() bool {
			p, err := e.clients["cluster-eks"].CoreV1().Pods("default").Get(context.Background(), "unknown-image", metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) == 0 {
				return false
			}
			w := p.Status.ContainerStatuses[0].State.Waiting
			return w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") && strings.Contains(w.Message, "nginx:1.25")
		})
		eventually(t, "a Failed event saying what the sandbox can run", func() bool {
			evs, err := e.clients["cluster-eks"].CoreV1().Events("default").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=unknown-image"})
			if err != nil {
				return false
			}
			for _, ev := range evs.Items {
				if ev.Reason == "Failed" && ev.Source.Component == "kubelet" && strings.Contains(ev.Message, "nginx:1.25") && strings.Contains(ev.Message, "not found") && strings.Contains(ev.Message, "curlimages/curl") {
					return true
				}
			}
			return false
		})
	})

	t.Run("deleting a pod stops its processes and removes its network", func(t *testing.T) {
		pod := eks[0]
		ns := "isthmus-pod-" + string(pod.UID)
		if _, err := os.Stat("/run/netns/" + ns); err != nil {
			t.Fatalf("pod network namespace %s missing while it runs", ns)
		}
		if _, err := e.kubectl("cluster-eks", "", "delete", "pod", pod.Name, "--wait=true", "--timeout=60s"); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the pod's namespace removed", func() bool {
			_, err := os.Stat("/run/netns/" + ns)
			return os.IsNotExist(err)
		})
	})

	t.Run("init containers run first and share volumes; env comes from the downward API and ConfigMaps", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: default}
data: {greeting: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: initialized, namespace: default, labels: {app: initialized}}
spec:
  initContainers:
  - name: prepare
    image: busybox
    command: [sh, -c, "echo prepared-by-init > /work/note"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: busybox
    command: [sh, -c, "cat /work/note; echo $GREETING from $POD_NAME in $POD_NS; cat /config/greeting; echo; exec sleep 3650d"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: settings, key: greeting}}}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: config, mountPath: /config}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: config, configMap: {name: settings}}
`)
		e.waitReady("cluster-eks", "default", "app=initialized", 1)
		eventually(t, "main container output", func() bool {
			out, err := e.kubectl("cluster-eks", "", "logs", "initialized", "-c", "main")
			return err == nil && strings.Contains(out, "prepared-by-init") && strings.Contains(out, "hello from initialized in default\nhello")
		})
	})

	t.Run("a crashed node agent is replaced by up and its pods come back", func(t *testing.T) {
		r := isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "status")
		var pid string
		for _, line := range strings.Split(r.stdout, "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[0] == "cluster-eks" && f[2] == "node" {
				pid = f[3]
			}
		}
		if out, err := exec.Command("kill", "-9", pid).CombinedOutput(); err != nil {
			t.Fatalf("kill node agent %s: %v %s", pid, err, out)
		}
		if r := isthmus(t, 3*time.Minute, "sandbox", "--state-dir", e.state, "up"); r.err != nil {
			t.Fatalf("up after a crash: %v", r.err)
		}
		// The new agent restarts the pods afresh; the Service answers again.
		eventually(t, "profile answering after the agent restart", func() bool {
			out, err := curl("http://profile:8080/healthz")
			return err == nil && strings.Contains(out, "ok")
		})
	})

	t.Run("down leaves no namespace, link or iptables rule", func(t *testing.T) {
		if r := isthmus(t, 2*time.Minute, "sandbox", "--state-dir", e.state, "down"); r.err != nil {
			t.Fatalf("down: %v", r.err)
		}
		entries, _ := os.ReadDir("/run/netns")
		for _, en := range entries {
			if strings.HasPrefix(en.Name(), "isthmus-") {
				t.Errorf("namespace %s left", en.Name())
			}
		}
		links, _ := exec.Command("ip", "-o", "link").Output()
		for _, l := range strings.Split(string(links), "\n") {
			if strings.Contains(l, "isthmus0") || strings.Contains(l, ": vp") {
				t.Errorf("link left: %s", l)
			}
		}
		rules, _ := exec.Command("iptables-save").Output()
		if bytes.Contains(rules, []byte("ISTHMUS")) || bytes.Contains(rules, []byte("KUBE-")) {
			t.Error("iptables rules left in the host namespace")
		}
	})
}

// TestSandboxHostnameLoadBalancers plays EKS's load balancers: cluster-eks
// publishes a LoadBalancer Service under a DNS name only, the sandbox's
// internet DNS answers it, the address serves every port from the host,
// the internet and the other cluster's pods (through their cluster DNS),
// and when the address changes under the name, everyone follows and the
// old address stops serving. cluster-aks keeps IP load balancers (AKS).
func TestSandboxHostnameLoadBalancers(t *testing.T) {
	e := upSandbox(t)
	ctx := context.Background()
	e.apply("cluster-eks", `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: isthmus/demo-app
        args: [profile]
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {port: http, path: /healthz}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: alt, port: 8080, targetPort: 8080}]
`)
	clientPod := `
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec:
  containers: [{name: client, image: curlimages/curl, command: [sleep, "3650d"]}]
`
	e.apply("cluster-aks", clientPod+`---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: default}
spec:
  type: LoadBalancer
  ports: [{port: 80}]
`)
	e.apply("cluster-eks", clientPod)
	e.waitReady("cluster-eks", "default", "app=web", 1)
	e.waitReady("cluster-eks", "default", "app=client", 1)
	e.waitReady("cluster-aks", "default", "app=client", 1)

	var host string
	eventually(t, "web in cluster-eks published", func() bool {
		svc, err := e.clients["cluster-eks"].CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err == nil && len(svc.Status.LoadBalancer.Ingress) > 0 {
			host = svc.Status.LoadBalancer.Ingress[0].Hostname
		}
		return host != ""
	})
	published := func(t *testing.T) {
		t.Helper()
		svc, err := e.clients["cluster-eks"].CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		uid := strings.ReplaceAll(string(svc.UID), "-", "")[:8]
		want := []corev1.LoadBalancerIngress{{Hostname: "web-default-" + uid + ".cluster-eks.elb.isthmus.test"}}
		if !equality.Semantic.DeepEqual(svc.Status.LoadBalancer.Ingress, want) {
			t.Fatalf("web is published as %+v, want the name only: %+v", svc.Status.LoadBalancer.Ingress, want)
		}
	}
	resolve := func() string {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		ips, err := sandboxDNS.LookupNetIP(ctx, "ip4", host)
		if err != nil || len(ips) != 1 {
			return fmt.Sprintf("%v %v", ips, err)
		}
		return ips[0].String()
	}
	hostClient := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	inetClient := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: network.Dialer(network.InternetNS), DisableKeepAlives: true}}
	answers := func(c *http.Client, addr, port string) error {
		resp, err := c.Get("http://" + net.JoinHostPort(addr, port) + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("HTTP %d", resp.StatusCode)
		}
		return nil
	}
	var addr string

	t.Run("cluster-eks publishes a name and no address; cluster-aks an address", func(t *testing.T) {
		published(t)
		eventually(t, "plain in cluster-aks gets an address", func() bool {
			svc, err := e.clients["cluster-aks"].CoreV1().Services("default").Get(ctx, "plain", metav1.GetOptions{})
			return err == nil && len(svc.Status.LoadBalancer.Ingress) > 0
		})
		svc, _ := e.clients["cluster-aks"].CoreV1().Services("default").Get(ctx, "plain", metav1.GetOptions{})
		if in := svc.Status.LoadBalancer.Ingress; len(in) != 1 || !strings.HasPrefix(in[0].IP, "198.18.2.") || in[0].Hostname != "" {
			t.Fatalf("cluster-aks's load balancer is published as %+v, want an address of 198.18.2.0/24", in)
		}
	})

	t.Run("from the host, the name resolves through 198.18.0.2 and every port answers", func(t *testing.T) {
		addr = e.lbAddress(t, "cluster-eks", "default", "web")
		if !netip.MustParsePrefix("198.18.1.0/24").Contains(netip.MustParseAddr(addr)) {
			t.Fatalf("%s resolves to %s, outside cluster-eks's pool", host, addr)
		}
		for _, port := range []string{"80", "8080"} {
			eventually(t, "the host reaches "+addr+":"+port, func() bool { return answers(hostClient, addr, port) == nil })
		}
		if _, err := sandboxDNS.LookupNetIP(ctx, "ip4", "nothing-default-00000000.cluster-eks.elb.isthmus.test"); !isNotFound(err) {
			t.Errorf("an unknown name in the zone: %v, want not found", err)
		}
	})

	t.Run("from the internet namespace, the address answers", func(t *testing.T) {
		if err := answers(inetClient, addr, "80"); err != nil {
			t.Fatal(err)
		}
	})

	// podReaches resolves the name in a pod through its cluster DNS and
	// calls the load balancer by it.
	podReaches := func(cluster, want string) error {
		out, err := e.kubectl(cluster, "", "exec", "client", "--", "getent", "hosts", host)
		if err != nil {
			return err
		}
		if f := strings.Fields(out); len(f) == 0 || f[0] != want {
			return fmt.Errorf("getent hosts %s in %s: %q, want %s", host, cluster, out, want)
		}
		_, err = e.kubectl(cluster, "", "exec", "client", "--", "curl", "-sS", "--fail", "--connect-timeout", "2", "-m", "5", "http://"+host+"/healthz")
		return err
	}

	t.Run("a pod in cluster-aks resolves the name through its cluster DNS and reaches it", func(t *testing.T) {
		if err := podReaches("cluster-aks", addr); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a pod in cluster-eks reaches its own cluster's load balancer by name", func(t *testing.T) {
		if err := podReaches("cluster-eks", addr); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("spec.loadBalancerIP moves the address under the same name; the old one stops serving", func(t *testing.T) {
		moved := "198.18.1.200"
		if moved == addr {
			moved = "198.18.1.201"
		}
		if _, err := e.clients["cluster-eks"].CoreV1().Services("default").Patch(ctx, "web", types.MergePatchType,
			[]byte(fmt.Sprintf(`{"spec":{"loadBalancerIP":%q}}`, moved)), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var last string
		for {
			got := resolve()
			newErr := answers(hostClient, moved, "80")
			c, oldErr := net.DialTimeout("tcp", net.JoinHostPort(addr, "80"), 2*time.Second)
			if c != nil {
				c.Close()
			}
			if got == moved && newErr == nil && oldErr != nil {
				break
			}
			last = fmt.Sprintf("the name resolves to %s, %s:80 answers %v, %s:80 dials %v", got, moved, newErr, addr, oldErr)
			if time.Since(start) > 15*time.Second {
				t.Fatalf("15 s after the move from %s to %s: %s", addr, moved, last)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("the name, the new address and the old one followed the move in %s", time.Since(start).Round(10*time.Millisecond))
		published(t)
		if err := answers(hostClient, moved, "8080"); err != nil {
			t.Errorf("port 8080 at the new address: %v", err)
		}
		if err := answers(inetClient, addr, "80"); err == nil {
			t.Errorf("the old address still answers from the internet namespace")
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			err := podReaches("cluster-aks", moved)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster-aks's pod 15 s after the move: %v", err)
			}
			time.Sleep(500 * time.Millisecond)
		}
	})
}

// isNotFound reports whether a lookup failed because the name does not exist.
func isNotFound(err error) bool {
	var dnsErr *net.DNSError
	return errors.As(err, &dnsErr) && dnsErr.IsNotFound
}
