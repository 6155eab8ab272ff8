package check

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
	"github.com/isthmus-mesh/isthmus/internal/inspect"
)

// fakePods answers pods' ports from a table: "ns/pod:port/path".
type fakePods struct {
	mu      sync.Mutex
	answers map[string]func() ([]byte, error)
}

func (f *fakePods) Get(_ context.Context, pod *corev1.Pod, port int, path string) ([]byte, error) {
	f.mu.Lock()
	fn := f.answers[fmt.Sprintf("%s/%s:%d%s", pod.Namespace, pod.Name, port, path)]
	f.mu.Unlock()
	if fn == nil {
		return nil, fmt.Errorf("port-forward to %s/%s:%d: connection refused", pod.Namespace, pod.Name, port)
	}
	return fn()
}

func (f *fakePods) set(key string, b []byte, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[key] = func() ([]byte, error) { return b, err }
}

func (f *fakePods) setJSON(t *testing.T, key string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	f.set(key, b, nil)
}

// cert is a certificate's PEM: a self-signed CA (signer nil) or a leaf
// signed by signer.
type certKey struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCert(t *testing.T, cn string, notAfter time.Time, signer *certKey) *certKey {
	t.Helper()
	return newCertLife(t, cn, notAfter.Add(-48*time.Hour), notAfter, signer)
}

// newCertLife is newCert valid from notBefore.
func newCertLife(t *testing.T, cn string, notBefore, notAfter time.Time, signer *certKey) *certKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter}
	parent, signKey := tmpl, key
	if signer == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		parent, signKey = signer.cert, signer.key
		u, _ := url.Parse("spiffe://cluster.local/ns/multicluster/sa/" + cn)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &certKey{cert: c, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// configDump is a proxy's config_dump holding its workload certificate.
func configDump(t *testing.T, chain []byte) []byte {
	t.Helper()
	sec, err := anypb.New(&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: chain}}}}})
	if err != nil {
		t.Fatal(err)
	}
	sd, err := anypb.New(&adminv3.SecretsConfigDump{DynamicActiveSecrets: []*adminv3.SecretsConfigDump_DynamicSecret{{Name: "default", Secret: sec}}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := protojson.Marshal(&adminv3.ConfigDump{Configs: []*anypb.Any{sd}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	eks = "cluster-eks"
	aks = "cluster-aks"
	ns  = "istio-system"
)

// env is a healthy two-cluster, two-network mesh; each case breaks one thing.
type env struct {
	t                *testing.T
	now              time.Time
	primary, remote  *fake.Clientset
	pPods, rPods     *fakePods
	mesh             *Mesh
	root             *certKey
	probe            bool
	logs             map[*fake.Clientset]string
	dryRun           map[*fake.Clientset]func(*corev1.Pod) (*corev1.Pod, error)
	syncz            [][]inspect.ProxyStatus // successive readings (the last repeats)
	clusterz         []remotesecret.Status
	opts             Options
	remoteSecretName string
	// ctx is what Run gets (context.Background()).
	ctx context.Context
	// serverNotReady: the probe Deployment never gets ready there.
	serverNotReady map[*fake.Clientset]bool
}

func proxy(cluster, id, network string) inspect.ProxyStatus {
	return inspect.ProxyStatus{SyncStatus: xds.SyncStatus{ClusterID: cluster, ProxyID: id, Network: network,
		ClusterSent: "1", ClusterAcked: "1", ListenerSent: "1", ListenerAcked: "1", EndpointSent: "1", EndpointAcked: "1", RouteSent: "1", RouteAcked: "1"}}
}

func injectedPod(ns, name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": name},
		Annotations: map[string]string{"sidecar.istio.io/status": "{}"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name}, {Name: "istio-proxy"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{
			{Name: name, Ready: true}, {Name: "istio-proxy", Ready: true}}}}
}

func gatewayObjects(network, ip string) []runtime.Object {
	return []runtime.Object{
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "istio-eastwestgateway", Namespace: ns,
			Labels: map[string]string{"app": "istio-eastwestgateway", "topology.istio.io/network": network}},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "istio-eastwestgateway"},
				Ports: []corev1.ServicePort{{Name: "status-port", Port: 15021}, {Name: "tls", Port: 15443}}},
			Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: ip}}}}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "istio-eastwestgateway-abc", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: "istio-eastwestgateway"}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}}},
		injectedPod(ns, "istio-eastwestgateway-1"),
	}
}

func rootConfigMaps(rootPEM []byte, namespaces ...string) []runtime.Object {
	var out []runtime.Object
	for _, n := range namespaces {
		out = append(out, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert", Namespace: n}, Data: map[string]string{"root-cert.pem": string(rootPEM)}})
	}
	return out
}

func remoteKubeconfig(server string) []byte {
	return []byte(`apiVersion: v1
kind: Config
clusters:
- name: cluster-aks
  cluster: {server: ` + server + `}
contexts:
- name: cluster-aks
  context: {cluster: cluster-aks, user: cluster-aks}
current-context: cluster-aks
users:
- name: cluster-aks
  user: {token: abc}
`)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	now := time.Now()
	e := &env{t: t, now: now, pPods: &fakePods{answers: map[string]func() ([]byte, error){}}, rPods: &fakePods{answers: map[string]func() ([]byte, error){}},
		logs: map[*fake.Clientset]string{}, dryRun: map[*fake.Clientset]func(*corev1.Pod) (*corev1.Pod, error){}, remoteSecretName: "istio-remote-secret-cluster-aks",
		ctx: context.Background(), serverNotReady: map[*fake.Clientset]bool{}}
	e.root = newCert(t, "mesh root", now.Add(10*365*24*time.Hour), nil)
	e.opts = Options{StaleAfter: 20 * time.Millisecond, Poll: time.Millisecond, Now: func() time.Time { return now }}
	istiodPod := func(name string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": "istiod"}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning}}
	}
	primaryObjs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "multicluster", Labels: map[string]string{"istio-injection": "enabled"}}},
		&appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "istiod", Namespace: ns},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{
				Name: "discovery", Image: "isthmus/isthmus:test", Env: []corev1.EnvVar{{Name: "POD_NAME"}, {Name: "CLUSTER_ID", Value: eks}, {Name: "NETWORK", Value: "network1"}}}}}}},
			Status: appsv1.DeploymentStatus{ReadyReplicas: 2}},
		istiodPod("istiod-a"), istiodPod("istiod-b"),
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "isthmus-leader", Namespace: ns},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("istiod-a_0b7e2a3c-1111-2222-3333-444455556666"), LeaseDurationSeconds: ptr.To[int32](15),
				RenewTime: &metav1.MicroTime{Time: now.Add(-2 * time.Second)}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-secret", Namespace: ns}, Data: map[string][]byte{"ca-cert.pem": e.root.pem, "root-cert.pem": {}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: e.remoteSecretName, Namespace: ns, Labels: map[string]string{"istio/multiCluster": "true"}},
			Data: map[string][]byte{aks: remoteKubeconfig("https://aks.example:6443")}},
		injectedPod("multicluster", "sleep-1"), injectedPod("multicluster", "dashboard-1"),
	}
	primaryObjs = append(primaryObjs, gatewayObjects("network1", "198.18.1.10")...)
	primaryObjs = append(primaryObjs, rootConfigMaps(e.root.pem, ns, "multicluster")...)
	remoteObjs := []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"topology.istio.io/network": "network2"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "multicluster", Labels: map[string]string{"istio-injection": "enabled"}}},
		injectedPod("multicluster", "profile-1"),
	}
	remoteObjs = append(remoteObjs, gatewayObjects("network2", "198.18.2.10")...)
	remoteObjs = append(remoteObjs, rootConfigMaps(e.root.pem, ns, "multicluster")...)
	e.primary, e.remote = fake.NewClientset(primaryObjs...), fake.NewClientset(remoteObjs...)
	for _, c := range []*fake.Clientset{e.primary, e.remote} {
		c.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
			ca := a.(k8stesting.CreateAction)
			pod := ca.GetObject().(*corev1.Pod)
			if a.GetNamespace() == ProbeNamespace {
				// The probe client: its container ends at once.
				pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: ProbeContainer, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}}}
				return false, nil, nil
			}
			if fn := e.dryRun[c]; fn != nil {
				got, err := fn(pod.DeepCopy())
				return true, got, err
			}
			out := pod.DeepCopy()
			out.Spec.Containers = append(out.Spec.Containers, corev1.Container{Name: "istio-proxy"})
			return true, out, nil
		})
		c.PrependReactor("create", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if !e.serverNotReady[c] {
				a.(k8stesting.CreateAction).GetObject().(*appsv1.Deployment).Status.ReadyReplicas = 1
			}
			return false, nil, nil
		})
		c.PrependReactor("get", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if a.GetSubresource() != "log" {
				return false, nil, nil
			}
			return true, &runtime.Unknown{Raw: []byte(e.logs[c])}, nil
		})
	}
	for _, p := range []string{"istiod-a", "istiod-b"} {
		e.pPods.set(ns+"/"+p+":15014/ready", []byte("ok\n"), nil)
	}
	e.syncz = [][]inspect.ProxyStatus{{proxy(eks, "sleep-1.multicluster", "network1"), proxy(eks, "dashboard-1.multicluster", "network1"),
		proxy(eks, "istio-eastwestgateway-1.istio-system", "network1"), proxy(aks, "profile-1.multicluster", "network2"), proxy(aks, "istio-eastwestgateway-1.istio-system", "network2")}}
	e.clusterz = []remotesecret.Status{{ID: eks, State: "synced"}, {ID: aks, Secret: ns + "/" + e.remoteSecretName, State: "synced"}}
	leaf := func(name string) []byte { return newCert(t, name, now.Add(20*time.Hour), e.root).pem }
	for _, p := range []string{"multicluster/sleep-1", "multicluster/dashboard-1", ns + "/istio-eastwestgateway-1"} {
		e.pPods.set(p+":15000/config_dump", configDump(t, leaf(p)), nil)
	}
	for _, p := range []string{"multicluster/profile-1", ns + "/istio-eastwestgateway-1"} {
		e.rPods.set(p+":15000/config_dump", configDump(t, leaf(p)), nil)
	}
	e.logs[e.primary] = `{"answered":{"cluster-eks":4,"cluster-aks":3},"failed":2,"lastError":"connection refused"}`
	e.logs[e.remote] = "starting\n" + `{"answered":{"cluster-eks":1,"cluster-aks":1},"failed":0,"lastError":""}` + "\n"
	e.mesh = &Mesh{Namespace: ns,
		Primary: &Cluster{Context: eks, Server: "https://eks.example", Client: e.primary, Pods: e.pPods},
		Remotes: []*Cluster{{ID: aks, Context: aks, Server: "https://aks.example:6443", Secret: ns + "/" + e.remoteSecretName, Matched: "server", Client: e.remote, Pods: e.rPods}}}
	return e
}

// run answers the control plane's debug views, then checks.
func (e *env) run() *Report {
	e.t.Helper()
	for _, p := range []string{"istiod-a", "istiod-b"} {
		e.pPods.setJSON(e.t, ns+"/"+p+":15014/debug/clusterz", e.clusterz)
		// The proxies are split over the replicas: a to the first, b the rest.
		readings := e.syncz
		var n int
		var mu sync.Mutex
		half := func(list []inspect.ProxyStatus) []inspect.ProxyStatus {
			if p == "istiod-a" {
				return list[:min(1, len(list))]
			}
			return list[min(1, len(list)):]
		}
		e.pPods.mu.Lock()
		e.pPods.answers[ns+"/"+p+":15014/debug/syncz"] = func() ([]byte, error) {
			mu.Lock()
			i := min(n, len(readings)-1)
			n++
			mu.Unlock()
			return json.Marshal(half(readings[i]))
		}
		e.pPods.mu.Unlock()
	}
	e.opts.Probe = e.probe
	rep, err := Run(e.ctx, e.mesh, e.opts)
	if err != nil {
		e.t.Fatal(err)
	}
	return rep
}

func codes(r *Report) []string {
	var out []string
	for _, f := range r.Findings {
		out = append(out, f.Code)
	}
	sort.Strings(out)
	return out
}

func finding(r *Report, code string) *Finding {
	for i := range r.Findings {
		if r.Findings[i].Code == code {
			return &r.Findings[i]
		}
	}
	return nil
}

func row(r *Report, check, cluster string) *Row {
	for i := range r.Checks {
		if r.Checks[i].Check == check && r.Checks[i].Cluster == cluster {
			return &r.Checks[i]
		}
	}
	return nil
}

func dump(r *Report) string {
	var b bytes.Buffer
	_ = r.WriteTable(&b)
	return b.String()
}

func TestHealthyMesh(t *testing.T) {
	for _, probe := range []bool{false, true} {
		t.Run(fmt.Sprintf("probe=%v", probe), func(t *testing.T) {
			e := newEnv(t)
			e.probe = probe
			rep := e.run()
			if len(rep.Findings) != 0 || !rep.Healthy || rep.ExitCode() != 0 {
				t.Fatalf("a healthy mesh: findings %v, exit %d\n%s", codes(rep), rep.ExitCode(), dump(rep))
			}
			if got, want := rep.Verdict(), "mesh healthy: 2 clusters on 2 networks, 5 proxies synced"; got != want {
				t.Errorf("verdict %q, want %q", got, want)
			}
			for _, r := range rep.Checks {
				if r.Status != StatusOK && (probe || r.Check != CheckCrossNetwork) {
					t.Errorf("row %+v is not ok", r)
				}
			}
			for _, check := range checkOrder {
				for _, c := range []string{eks, aks} {
					primaryOnly, remoteOnly := check == CheckControlPlane, check == CheckRemoteCluster
					if row(rep, check, c) == nil && !(primaryOnly && c == aks) && !(remoteOnly && c == eks) {
						t.Errorf("no %s row for %s\n%s", check, c, dump(rep))
					}
				}
			}
			if r := row(rep, CheckGateway, aks); r == nil || !strings.Contains(r.Detail, "network2: istio-system/istio-eastwestgateway at 198.18.2.10 (1 ready)") {
				t.Errorf("gateway row %+v", r)
			}
			if r := row(rep, CheckControlPlane, eks); r == nil || !strings.Contains(r.Detail, "2/2 replicas ready, leader istiod-a") {
				t.Errorf("control plane row %+v", r)
			}
			if probe {
				if r := row(rep, CheckCrossNetwork, eks); !strings.Contains(r.Detail, "cluster-eks 4, cluster-aks 3") {
					t.Errorf("probe row %+v", r)
				}
				// The probe's namespace is gone from both clusters.
				for _, c := range []*fake.Clientset{e.primary, e.remote} {
					if _, err := c.CoreV1().Namespaces().Get(context.Background(), ProbeNamespace, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
						t.Errorf("the probe namespace is left: %v", err)
					}
				}
				// Its server ran the control plane's image with the cluster's ID,
				// and a Service per cluster selects only that cluster's pods.
				var created []string
				for _, a := range e.remote.Actions() {
					if ca, ok := a.(k8stesting.CreateAction); ok && a.GetNamespace() == ProbeNamespace {
						switch o := ca.GetObject().(type) {
						case *appsv1.Deployment:
							ctr := o.Spec.Template.Spec.Containers[0]
							created = append(created, fmt.Sprintf("deployment %s %v %s=%s uid %d pods %s", ctr.Image, ctr.Args, ctr.Env[0].Name, ctr.Env[0].Value, *ctr.SecurityContext.RunAsUser, selector(o.Spec.Template.Labels)))
							if !reflect.DeepEqual(o.Spec.Selector.MatchLabels, o.Spec.Template.Labels) {
								t.Errorf("deployment selector %v, pods %v", o.Spec.Selector.MatchLabels, o.Spec.Template.Labels)
							}
							checkHardened(t, "deployment", o.Spec.Template.Spec)
						case *corev1.Service:
							created = append(created, fmt.Sprintf("service %s selects %s", o.Name, selector(o.Spec.Selector)))
						case *corev1.Pod:
							created = append(created, fmt.Sprintf("pod %s %v %s", o.Spec.Containers[0].Image, o.Spec.Containers[0].Args, o.Spec.RestartPolicy))
							checkHardened(t, "client pod", o.Spec)
						}
					}
				}
				want := []string{
					"service probe-cluster-eks selects app=probe,isthmus.io/check-cluster=cluster-eks",
					"service probe-cluster-aks selects app=probe,isthmus.io/check-cluster=cluster-aks",
					"deployment isthmus/isthmus:test [demo-app profile] CLUSTER_NAME=cluster-aks uid 65532 pods app=probe,isthmus.io/check-cluster=cluster-aks",
					"pod isthmus/isthmus:test [check probe --url http://probe-{cluster}.isthmus-check:8080/profile?id=1 --want cluster-eks,cluster-aks --timeout 2m0s] Never"}
				if !slices.Equal(created, want) {
					t.Errorf("probe objects:\n%q\nwant\n%q", created, want)
				}
			}
			var b bytes.Buffer
			if err := rep.WriteJSON(&b); err != nil {
				t.Fatal(err)
			}
			var j map[string]any
			if err := json.Unmarshal(b.Bytes(), &j); err != nil {
				t.Fatal(err)
			}
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range j {
					if !yield(k) {
						return
					}
				}
			})
			if !slices.Equal(keys, []string{"checks", "findings", "healthy"}) || j["healthy"] != true {
				t.Errorf("json %s", b.String())
			}
		})
	}
}

// TestFailureModes plays each failure mode and checks the finding it names.
func TestFailureModes(t *testing.T) {
	staleProxy := func(e *env, synced bool) {
		p := proxy(aks, "profile-1.multicluster", "network2")
		p.ListenerSent, p.ListenerAcked = "2", "1"
		later := p
		if synced {
			later.ListenerAcked = "2"
		}
		first := slices.Clone(e.syncz[0])
		second := slices.Clone(e.syncz[0])
		first[3], second[3] = p, later
		e.syncz = [][]inspect.ProxyStatus{first, second}
	}
	otherRoot := newCert(t, "other root", time.Now().Add(365*24*time.Hour), nil)
	for _, tc := range []struct {
		name  string
		setup func(e *env)
		want  []string // codes, sorted
		// healthy: only warnings.
		healthy bool
		check   func(t *testing.T, r *Report)
	}{
		{name: "no ready replica", setup: func(e *env) {
			e.pPods.set(ns+"/istiod-a:15014/ready", nil, errors.New("503 local cluster not synced"))
			e.pPods.set(ns+"/istiod-b:15014/ready", nil, errors.New("503 local cluster not synced"))
			d, _ := e.primary.AppsV1().Deployments(ns).Get(context.Background(), "istiod", metav1.GetOptions{})
			d.Status.ReadyReplicas = 0
			_, _ = e.primary.AppsV1().Deployments(ns).UpdateStatus(context.Background(), d, metav1.UpdateOptions{})
			e.probe = true
		}, want: []string{CodeControlPlaneUnavailable}, check: func(t *testing.T, r *Report) {
			if row := row(r, CheckRemoteCluster, aks); row == nil || row.Status != StatusUnknown || row.Detail != "control plane not answering" {
				t.Errorf("remote row %+v", row)
			}
			if row := row(r, CheckCrossNetwork, aks); row == nil || row.Status != StatusUnknown {
				t.Errorf("probe row %+v", row)
			}
			if r.Verdict() != "mesh unhealthy: 1 error, 0 warnings" || r.ExitCode() != ExitUnhealthy {
				t.Errorf("verdict %q exit %d", r.Verdict(), r.ExitCode())
			}
		}},
		{name: "no istiod deployment", setup: func(e *env) {
			_ = e.primary.AppsV1().Deployments(ns).Delete(context.Background(), "istiod", metav1.DeleteOptions{})
		}, want: []string{CodeControlPlaneUnavailable}},
		{name: "one of two replicas ready", setup: func(e *env) {
			e.pPods.set(ns+"/istiod-b:15014/ready", nil, errors.New("503"))
			d, _ := e.primary.AppsV1().Deployments(ns).Get(context.Background(), "istiod", metav1.GetOptions{})
			d.Status.ReadyReplicas = 1
			_, _ = e.primary.AppsV1().Deployments(ns).UpdateStatus(context.Background(), d, metav1.UpdateOptions{})
		}, want: []string{CodeControlPlaneDegraded}, healthy: true},
		{name: "expired lease", setup: func(e *env) {
			l, _ := e.primary.CoordinationV1().Leases(ns).Get(context.Background(), "isthmus-leader", metav1.GetOptions{})
			l.Spec.RenewTime = &metav1.MicroTime{Time: e.now.Add(-time.Minute)}
			_, _ = e.primary.CoordinationV1().Leases(ns).Update(context.Background(), l, metav1.UpdateOptions{})
		}, want: []string{CodeNoLeader}, healthy: true, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeNoLeader); !strings.Contains(f.Message, "last renewed 1m0s ago") {
				t.Error(f.Message)
			}
			if !strings.HasSuffix(r.Verdict(), "; 1 warning") {
				t.Error(r.Verdict())
			}
		}},
		{name: "lease held by a gone pod", setup: func(e *env) {
			l, _ := e.primary.CoordinationV1().Leases(ns).Get(context.Background(), "isthmus-leader", metav1.GetOptions{})
			l.Spec.HolderIdentity = ptr.To("istiod-old_abc")
			_, _ = e.primary.CoordinationV1().Leases(ns).Update(context.Background(), l, metav1.UpdateOptions{})
		}, want: []string{CodeNoLeader}, healthy: true},
		{name: "NACK", setup: func(e *env) {
			e.syncz[0][3].Nacked = map[string]string{"lds": "listener 0.0.0.0_8080: unknown filter"}
		}, want: []string{CodeProxyConfigRejected}, check: func(t *testing.T, r *Report) {
			f := finding(r, CodeProxyConfigRejected)
			if f.Cluster != aks || f.Subject != "profile-1.multicluster" || !strings.Contains(f.Message, "LDS: listener 0.0.0.0_8080: unknown filter") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "stale for long", setup: func(e *env) { staleProxy(e, false) }, want: []string{CodeProxyNotSynced}, healthy: true},
		{name: "stale then synced", setup: func(e *env) { staleProxy(e, true) }, want: nil, healthy: true},
		{name: "the probe's own proxies starting", setup: func(e *env) {
			p := proxy(aks, "probe-7d4-x.isthmus-check", "network2")
			p.ListenerSent, p.ListenerAcked = "2", ""
			e.syncz[0] = append(e.syncz[0], p)
		}, want: nil, healthy: true, check: func(t *testing.T, r *Report) {
			if r.Summary.ProxiesSynced != 5 {
				t.Errorf("%d proxies synced", r.Summary.ProxiesSynced)
			}
		}},
		{name: "stale cluster", setup: func(e *env) {
			since := e.now.Add(-90 * time.Second)
			e.clusterz[1].State, e.clusterz[1].StaleSince = "stale", &since
		}, want: []string{CodeRemoteClusterStale}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeRemoteClusterStale); f.Cluster != aks || !strings.Contains(f.Message, "(1m30s ago)") || !strings.Contains(f.Fix, "https://aks.example:6443") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "refused cluster", setup: func(e *env) {
			e.clusterz[1].State = "error"
			e.clusterz[1].Error = "the API server refuses the secret's credentials (Unauthorized): the token is revoked, expired or not of this cluster"
		}, want: []string{CodeRemoteClusterRefused}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeRemoteClusterRefused); f.Fix != "isthmus create-remote-secret --context cluster-aks --name cluster-aks | kubectl apply --context cluster-eks -f -" {
				t.Errorf("fix %q", f.Fix)
			}
		}},
		{name: "refused cluster 401", setup: func(e *env) {
			e.clusterz[1].State, e.clusterz[1].Error = "error", "list pods: the server has asked for the client to provide credentials (401)"
		}, want: []string{CodeRemoteClusterRefused}},
		{name: "cluster timeout", setup: func(e *env) { e.clusterz[1].State = "timeout" }, want: []string{CodeRemoteClusterNotSynced}},
		{name: "broken secret", setup: func(e *env) {
			e.clusterz[1].State, e.clusterz[1].Error = "error", "kubeconfig uses an exec credential plugin, which the control plane does not run"
		}, want: []string{CodeRemoteClusterNotSynced}},
		{name: "cluster not in clusterz", setup: func(e *env) { e.clusterz = e.clusterz[:1] }, want: []string{CodeRemoteClusterNotSynced}},
		{name: "missing secret", setup: func(e *env) {
			gke := fake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"topology.istio.io/network": "network2"}}})
			e.mesh.Remotes = append(e.mesh.Remotes, &Cluster{Context: "cluster-gke", Server: "https://gke.example", Matched: "--remote-contexts", Client: gke})
			e.mesh.ExplicitContexts = true
		}, want: []string{CodeRemoteSecretMissing}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeRemoteSecretMissing); f.Cluster != "cluster-gke" || !strings.HasPrefix(f.Fix, "isthmus create-remote-secret --context cluster-gke --name CLUSTER_ID | kubectl apply --context cluster-eks -f -") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "secret without context", setup: func(e *env) {
			e.mesh.Remotes[0].Client, e.mesh.Remotes[0].Pods, e.mesh.Remotes[0].Context = nil, nil, ""
			e.probe = true
		}, want: []string{CodeRemoteContextUnknown}, healthy: true, check: func(t *testing.T, r *Report) {
			for _, check := range []string{CheckGateway, CheckRootCert, CheckWorkloadCert, CheckInjection, CheckCrossNetwork} {
				if row := row(r, check, aks); row == nil || row.Status != StatusSkipped {
					t.Errorf("%s row %+v", check, row)
				}
			}
			// Its network is still known from its proxies.
			if r.Summary.Networks != 2 {
				t.Errorf("%d networks", r.Summary.Networks)
			}
		}},
		{name: "remote API server unreachable", setup: func(e *env) {
			e.remote.PrependReactor("get", "version", func(k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, errors.New("dial tcp 10.1.1.1:6443: i/o timeout")
			})
		}, want: []string{CodeClusterUnreachable}},
		{name: "gateway without address", setup: func(e *env) {
			svc, _ := e.remote.CoreV1().Services(ns).Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{})
			svc.Status.LoadBalancer.Ingress = nil
			_, _ = e.remote.CoreV1().Services(ns).UpdateStatus(context.Background(), svc, metav1.UpdateOptions{})
		}, want: []string{CodeEastWestGatewayNoAddr}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeEastWestGatewayNoAddr); f.Cluster != aks || f.Subject != "istio-system/istio-eastwestgateway" {
				t.Errorf("%+v", f)
			}
		}},
		{name: "gateway without ready endpoints", setup: func(e *env) {
			s, _ := e.remote.DiscoveryV1().EndpointSlices(ns).Get(context.Background(), "istio-eastwestgateway-abc", metav1.GetOptions{})
			s.Endpoints[0].Conditions.Ready = ptr.To(false)
			_, _ = e.remote.DiscoveryV1().EndpointSlices(ns).Update(context.Background(), s, metav1.UpdateOptions{})
		}, want: []string{CodeEastWestGatewayNotReady}},
		{name: "network without gateway", setup: func(e *env) {
			_ = e.remote.CoreV1().Services(ns).Delete(context.Background(), "istio-eastwestgateway", metav1.DeleteOptions{})
		}, want: []string{CodeEastWestGatewayMissing}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeEastWestGatewayMissing); f.Subject != "network network2" || f.Cluster != aks {
				t.Errorf("%+v", f)
			}
		}},
		{name: "root mismatch", setup: func(e *env) {
			cm, _ := e.remote.CoreV1().ConfigMaps("multicluster").Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
			cm.Data["root-cert.pem"] = string(otherRoot.pem)
			_, _ = e.remote.CoreV1().ConfigMaps("multicluster").Update(context.Background(), cm, metav1.UpdateOptions{})
		}, want: []string{CodeRootCertMismatch}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeRootCertMismatch); f.Cluster != aks || f.Subject != "multicluster/istio-ca-root-cert" || !strings.Contains(f.Message, "other root") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "root missing", setup: func(e *env) {
			_ = e.remote.CoreV1().ConfigMaps("multicluster").Delete(context.Background(), "istio-ca-root-cert", metav1.DeleteOptions{})
		}, want: []string{CodeRootCertMissing}},
		{name: "CA has no root", setup: func(e *env) {
			_ = e.primary.CoreV1().Secrets(ns).Delete(context.Background(), "istio-ca-secret", metav1.DeleteOptions{})
		}, want: []string{CodeRootCertMissing}},
		{name: "plug-in CA", setup: func(e *env) {
			_, _ = e.primary.CoreV1().Secrets(ns).Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: ns},
				Data: map[string][]byte{"root-cert.pem": otherRoot.pem}}, metav1.CreateOptions{})
		}, want: []string{CodeRootCertMismatch, CodeRootCertMismatch, CodeRootCertMismatch, CodeRootCertMismatch}},
		{name: "root expiring", setup: func(e *env) {
			soon := newCert(t, "old root", e.now.Add(10*24*time.Hour), nil)
			both := append(append([]byte{}, e.root.pem...), soon.pem...)
			_, _ = e.primary.CoreV1().Secrets(ns).Update(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-secret", Namespace: ns},
				Data: map[string][]byte{"ca-cert.pem": e.root.pem, "root-cert.pem": both}}, metav1.UpdateOptions{})
			for _, c := range []*fake.Clientset{e.primary, e.remote} {
				for _, n := range []string{ns, "multicluster"} {
					_, _ = c.CoreV1().ConfigMaps(n).Update(context.Background(), rootConfigMaps(both, n)[0].(*corev1.ConfigMap), metav1.UpdateOptions{})
				}
			}
		}, want: []string{CodeRootCertExpiring}, healthy: true},
		{name: "workload cert expiring", setup: func(e *env) {
			e.rPods.set("multicluster/profile-1:15000/config_dump", configDump(t, newCert(t, "profile", e.now.Add(40*time.Minute), e.root).pem), nil)
		}, want: []string{CodeWorkloadCertExpiring}, healthy: true, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeWorkloadCertExpiring); f.Subject != "profile-1.multicluster" || f.Severity != SeverityWarning {
				t.Errorf("%+v", f)
			}
		}},
		{name: "workload cert with less than 20% of its life left", setup: func(e *env) {
			// 3h of 24h left: more than an hour, but a proxy renews at 80%.
			e.rPods.set("multicluster/profile-1:15000/config_dump", configDump(t, newCertLife(t, "profile", e.now.Add(-21*time.Hour), e.now.Add(3*time.Hour), e.root).pem), nil)
		}, want: []string{CodeWorkloadCertExpiring}, healthy: true, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeWorkloadCertExpiring); f.Severity != SeverityWarning || !strings.Contains(f.Message, "12% of its 24h0m0s lifetime left") {
				t.Errorf("%+v", f)
			}
			if row := row(r, CheckWorkloadCert, aks); row.Status != StatusWarning {
				t.Errorf("%+v", row)
			}
		}},
		{name: "short-lived workload cert renewed on time", setup: func(e *env) {
			// 30m of 1h left: under an hour, as every 1h certificate is.
			e.rPods.set("multicluster/profile-1:15000/config_dump", configDump(t, newCertLife(t, "profile", e.now.Add(-30*time.Minute), e.now.Add(30*time.Minute), e.root).pem), nil)
		}, want: nil, healthy: true},
		{name: "workload cert expired", setup: func(e *env) {
			e.rPods.set("multicluster/profile-1:15000/config_dump", configDump(t, newCert(t, "profile", e.now.Add(-time.Minute), e.root).pem), nil)
		}, want: []string{CodeWorkloadCertExpiring}},
		{name: "dry run refused by the webhook", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewInternalError(errors.New(`failed calling webhook "namespace.sidecar-injector.istio.io": failed to call webhook: Post "https://istiod.istio-system.svc:443/inject/cluster/cluster-aks/net/network2?timeout=10s": dial tcp 198.18.1.10:15017: connect: connection refused`))
			}
		}, want: []string{CodeInjectionUnavailable}, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeInjectionUnavailable); f.Cluster != aks || !strings.Contains(f.Message, "failed calling webhook") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "dry run: the injector's webhook timed out", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewInternalError(errors.New(`failed calling webhook "object.sidecar-injector.istio.io": failed to call webhook: Post "https://istiod.istio-system.svc:443/inject?timeout=10s": context deadline exceeded`))
			}
		}, want: []string{CodeInjectionUnavailable}},
		{name: "dry run denied by a webhook of the injector's configuration", setup: func(e *env) {
			_, _ = e.remote.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(context.Background(), &admissionregistrationv1.MutatingWebhookConfiguration{
				ObjectMeta: metav1.ObjectMeta{Name: "istio-sidecar-injector-canary"}, Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "inject.mesh.example.com"}}}, metav1.CreateOptions{})
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New(`admission webhook "inject.mesh.example.com" denied the request: no proxy image`))
			}
		}, want: []string{CodeInjectionUnavailable}},
		{name: "dry run refused by Pod Security admission", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "isthmus-check-abcde", errors.New(`violates PodSecurity "baseline:latest": non-default capabilities (container "istio-init" must not include "NET_ADMIN", "NET_RAW" in securityContext.capabilities.add)`))
			}
		}, want: []string{CodeCheckFailed}, healthy: true, check: func(t *testing.T, r *Report) {
			f := finding(r, CodeCheckFailed)
			if f.Severity != SeverityWarning || f.Cluster != aks || f.Subject != "namespace multicluster" || !strings.Contains(f.Message, `violates PodSecurity "baseline:latest"`) ||
				!strings.Contains(f.Message, "not for the injection webhook") {
				t.Errorf("%+v", f)
			}
			if row := row(r, CheckInjection, aks); row.Status != StatusWarning {
				t.Errorf("%+v", row)
			}
		}},
		{name: "dry run refused by a ResourceQuota", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "isthmus-check-abcde", errors.New(`exceeded quota: pods, requested: pods=1, used: pods=10, limited: pods=10`))
			}
		}, want: []string{CodeCheckFailed}, healthy: true, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeCheckFailed); !strings.Contains(f.Message, "exceeded quota") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "dry run refused by another policy webhook", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewBadRequest(`admission webhook "validate.kyverno.svc-fail" denied the request: resource Pod/multicluster/isthmus-check-x was blocked: require-labels`)
			}
		}, want: []string{CodeCheckFailed}, healthy: true},
		{name: "dry run: another webhook cannot be called", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewInternalError(errors.New(`failed calling webhook "mutate.kyverno.svc-fail": failed to call webhook: Post "https://kyverno-svc.kyverno.svc:443/mutate": dial tcp 10.96.0.12:443: connect: connection refused`))
			}
		}, want: []string{CodeCheckFailed}, healthy: true},
		{name: "dry run: the credentials may not create pods", setup: func(e *env) {
			e.dryRun[e.remote] = func(*corev1.Pod) (*corev1.Pod, error) {
				return nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New(`User "viewer" cannot create resource "pods" in API group "" in the namespace "multicluster"`))
			}
		}, want: []string{CodeCheckFailed}, healthy: true, check: func(t *testing.T, r *Report) {
			if f := finding(r, CodeCheckFailed); f.Severity != SeverityWarning || !strings.Contains(f.Message, "may not create pods in namespace multicluster") {
				t.Errorf("%+v", f)
			}
		}},
		{name: "dry run without sidecar", setup: func(e *env) {
			e.dryRun[e.primary] = func(p *corev1.Pod) (*corev1.Pod, error) { return p, nil }
		}, want: []string{CodeInjectionNotApplied}},
		{name: "probe log missing a cluster", setup: func(e *env) {
			e.probe = true
			e.logs[e.primary] = `{"answered":{"cluster-eks":9},"failed":7,"lastError":"503 Service Unavailable: no healthy upstream"}`
		}, want: []string{CodeCrossNetworkUnreachable}, check: func(t *testing.T, r *Report) {
			f := finding(r, CodeCrossNetworkUnreachable)
			if f.Cluster != eks || f.Subject != "cluster-eks -> cluster-aks" || !strings.Contains(f.Message, "network network1") ||
				!strings.Contains(f.Message, "(network network2)") || !strings.Contains(f.Fix, "east-west gateway of network network2") {
				t.Errorf("%+v", f)
			}
			if row := row(r, CheckCrossNetwork, aks); row.Status != StatusOK {
				t.Errorf("%+v", row)
			}
		}},
		{name: "probe without result", setup: func(e *env) {
			e.probe = true
			e.logs[e.remote] = "exec /usr/local/bin/isthmus: exec format error"
		}, want: []string{CodeProbeFailed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.setup(e)
			rep := e.run()
			t.Log("\n" + dump(rep))
			got := codes(rep)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("codes %v, want %v\n%s", got, tc.want, dump(rep))
			}
			if rep.Healthy != tc.healthy || (rep.ExitCode() == 0) != tc.healthy {
				t.Errorf("healthy %v exit %d, want healthy %v\n%s", rep.Healthy, rep.ExitCode(), tc.healthy, dump(rep))
			}
			for _, f := range rep.Findings {
				if f.Message == "" || f.Fix == "" || f.Cluster == "" || f.Subject == "" {
					t.Errorf("incomplete finding %+v", f)
				}
			}
			// The table carries every finding and the verdict.
			out := dump(rep)
			for _, c := range tc.want {
				if !strings.Contains(out, " "+c+" [cluster ") {
					t.Errorf("table lacks %s:\n%s", c, out)
				}
			}
			if !strings.HasSuffix(strings.TrimSpace(out), rep.Verdict()) {
				t.Errorf("table does not end with the verdict:\n%s", out)
			}
			if tc.check != nil {
				tc.check(t, rep)
			}
		})
	}
}

func TestWorkloadCertCap(t *testing.T) {
	e := newEnv(t)
	e.opts.CertCap = 1
	rep := e.run()
	if r := row(rep, CheckWorkloadCert, eks); r == nil || !strings.HasPrefix(r.Detail, "1 of 3 proxies checked (capped at 1)") {
		t.Errorf("%+v", r)
	}
}

func TestInjectionSkippedWithoutLabelledNamespace(t *testing.T) {
	e := newEnv(t)
	_ = e.remote.CoreV1().Namespaces().Delete(context.Background(), "multicluster", metav1.DeleteOptions{})
	rep := e.run()
	if r := row(rep, CheckInjection, aks); r == nil || r.Status != StatusSkipped || r.Detail != "no namespace labelled istio-injection=enabled" {
		t.Errorf("%+v", r)
	}
	if len(rep.Findings) != 0 {
		t.Errorf("findings %v", codes(rep))
	}
}

// checkHardened: the probe's pods mount no API token, and their container
// runs as non-root without privilege escalation or capabilities, under
// the runtime's default seccomp profile.
func checkHardened(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken %v, want false", what, spec.AutomountServiceAccountToken)
	}
	sc := spec.Containers[0].SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: securityContext %+v", what, sc)
	}
}

func namespaceDeletes(c *fake.Clientset) int {
	var deletes int
	for _, a := range c.Actions() {
		if a.GetVerb() == "delete" && a.GetResource().Resource == "namespaces" {
			deletes++
		}
	}
	return deletes
}

// TestProbeDeletesLeftoverNamespace: a namespace isthmus-check with the
// check's label is a previous check's: deleted before and after.
func TestProbeDeletesLeftoverNamespace(t *testing.T) {
	e := newEnv(t)
	e.probe = true
	_, _ = e.remote.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ProbeNamespace,
		Labels: map[string]string{"app.kubernetes.io/managed-by": "isthmus-check"}}}, metav1.CreateOptions{})
	rep := e.run()
	if len(rep.Findings) != 0 {
		t.Fatalf("findings %v\n%s", codes(rep), dump(rep))
	}
	if deletes := namespaceDeletes(e.remote); deletes != 2 {
		t.Errorf("%d namespace deletions, want the leftover's and the cleanup's", deletes)
	}
}

// TestProbeLeavesForeignNamespace: a namespace isthmus-check without the
// check's label is someone else's: never deleted nor changed, and the
// probe says so in that cluster.
func TestProbeLeavesForeignNamespace(t *testing.T) {
	e := newEnv(t)
	e.probe = true
	_, _ = e.remote.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ProbeNamespace,
		Labels: map[string]string{"team": "payments"}}}, metav1.CreateOptions{})
	_, _ = e.remote.CoreV1().ConfigMaps(ProbeNamespace).Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "theirs", Namespace: ProbeNamespace}}, metav1.CreateOptions{})
	rep := e.run()
	if got := codes(rep); !slices.Equal(got, []string{CodeProbeFailed}) || rep.Healthy {
		t.Fatalf("codes %v\n%s", got, dump(rep))
	}
	f := finding(rep, CodeProbeFailed)
	if f.Cluster != aks || !strings.Contains(f.Message, "a namespace isthmus-check exists in cluster cluster-aks that the check did not create") ||
		!strings.Contains(f.Message, "app.kubernetes.io/managed-by=isthmus-check") || !strings.Contains(f.Fix, "--probe=false") {
		t.Errorf("%+v", f)
	}
	if d := namespaceDeletes(e.remote); d != 0 {
		t.Errorf("%d namespace deletions in the cluster whose namespace is not the check's", d)
	}
	for _, a := range e.remote.Actions() {
		if a.GetNamespace() == ProbeNamespace && a.GetVerb() != "get" && a.GetVerb() != "list" && !(a.GetVerb() == "create" && a.GetResource().Resource == "configmaps") {
			t.Errorf("the check touched the foreign namespace: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	ns, err := e.remote.CoreV1().Namespaces().Get(context.Background(), ProbeNamespace, metav1.GetOptions{})
	if err != nil || ns.Labels["team"] != "payments" {
		t.Errorf("the foreign namespace: %+v %v", ns, err)
	}
	if _, err := e.remote.CoreV1().ConfigMaps(ProbeNamespace).Get(context.Background(), "theirs", metav1.GetOptions{}); err != nil {
		t.Errorf("its ConfigMap: %v", err)
	}
	// The other cluster probed, and cleaned up, as usual.
	if d := namespaceDeletes(e.primary); d != 1 {
		t.Errorf("%d namespace deletions in the primary, want the cleanup's", d)
	}
	if r := row(rep, CheckCrossNetwork, aks); r == nil || r.Status != StatusError || !strings.Contains(r.Detail, "not the check's") {
		t.Errorf("%+v", r)
	}
}

// probeClientTimeout is the --timeout the check gave a cluster's probe client.
func probeClientTimeout(t *testing.T, c *fake.Clientset) time.Duration {
	t.Helper()
	for _, a := range c.Actions() {
		if ca, ok := a.(k8stesting.CreateAction); ok && a.GetNamespace() == ProbeNamespace {
			if pod, ok := ca.GetObject().(*corev1.Pod); ok {
				args := pod.Spec.Containers[0].Args
				i := slices.Index(args, "--timeout")
				if i < 0 || i+1 >= len(args) {
					t.Fatalf("client args %v", args)
				}
				d, err := time.ParseDuration(args[i+1])
				if err != nil {
					t.Fatal(err)
				}
				return d
			}
		}
	}
	t.Fatal("no probe client pod")
	return 0
}

// TestProbeCallsForTheTimeLeft: each probe client calls for what the
// check's budget leaves, less the margin to start it and read its log.
func TestProbeCallsForTheTimeLeft(t *testing.T) {
	e := newEnv(t)
	e.probe = true
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e.ctx = ctx
	rep := e.run()
	if len(rep.Findings) != 0 {
		t.Fatalf("findings %v\n%s", codes(rep), dump(rep))
	}
	for _, c := range []*fake.Clientset{e.primary, e.remote} {
		if d := probeClientTimeout(t, c); d < 4*time.Minute-probeMargin-10*time.Second || d > 4*time.Minute-probeMargin {
			t.Errorf("client --timeout %s, want about %s", d, 4*time.Minute-probeMargin)
		}
	}
	// Options.ProbeTimeout caps it.
	e = newEnv(t)
	e.probe, e.ctx, e.opts.ProbeTimeout = true, ctx, 20*time.Second
	e.run()
	if d := probeClientTimeout(t, e.remote); d != 20*time.Second {
		t.Errorf("client --timeout %s, want the cap", d)
	}
}

// TestProbeBudgetRunsOut: a probe server that is not ready when the
// check's budget runs out is a ProbeFailed that says so.
func TestProbeBudgetRunsOut(t *testing.T) {
	e := newEnv(t)
	e.probe = true
	e.serverNotReady[e.remote] = true
	ctx, cancel := context.WithTimeout(context.Background(), probeMargin+probeServerShare+1500*time.Millisecond)
	defer cancel()
	e.ctx = ctx
	rep := e.run()
	var server *Finding
	for i, f := range rep.Findings {
		if f.Code == CodeProbeFailed && f.Cluster == aks && strings.HasPrefix(f.Subject, "deployment ") {
			server = &rep.Findings[i]
		}
	}
	if server == nil || !strings.Contains(server.Message, "the check's --timeout ran out while waiting for it to become ready") || !strings.Contains(server.Message, "; raise --timeout") {
		t.Fatalf("%+v\n%s", server, dump(rep))
	}
	if rep.Healthy {
		t.Error("healthy")
	}
}

// TestCheckFailedForbidden: a check the credentials may not run is a
// warning naming the permission (the mesh is not unhealthy for it); any
// other error reading the cluster stays an error.
func TestCheckFailedForbidden(t *testing.T) {
	e := newEnv(t)
	e.probe = true
	e.remote.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetNamespace() != "" {
			return false, nil, nil
		}
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New(`User "reader" cannot list resource "pods" in API group "" at the cluster scope`))
	})
	e.remote.PrependReactor("create", "namespaces", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "namespaces"}, "isthmus-check", errors.New(`User "reader" cannot create resource "namespaces" in API group "" at the cluster scope`))
	})
	rep := e.run()
	if !rep.Healthy || rep.ExitCode() != 0 {
		t.Fatalf("healthy %v exit %d\n%s", rep.Healthy, rep.ExitCode(), dump(rep))
	}
	want := map[string]string{CheckRootCert: "list pods (cluster-wide)", CheckWorkloadCert: "list pods (cluster-wide)", CheckCrossNetwork: "create namespaces (cluster-wide)"}
	for _, f := range rep.Findings {
		perm, ok := want[f.Subject]
		if f.Code != CodeCheckFailed || f.Severity != SeverityWarning || f.Cluster != aks || !ok ||
			!strings.Contains(f.Message, "may not "+perm) || !strings.Contains(f.Fix, "kubectl --context cluster-aks auth can-i") {
			t.Errorf("%+v", f)
		}
		delete(want, f.Subject)
	}
	if len(want) > 0 {
		t.Errorf("no warning for %v\n%s", want, dump(rep))
	}
	if r := row(rep, CheckRootCert, aks); r == nil || r.Status != StatusWarning || r.Detail != "not checked: may not list pods (cluster-wide)" {
		t.Errorf("%+v", r)
	}
	if f := finding(rep, CodeCheckFailed); f != nil && f.Subject == CheckWorkloadCert && !strings.Contains(f.Fix, "auth can-i list pods --all-namespaces") {
		t.Errorf("%+v", f)
	}

	// Not a permission: an error.
	e = newEnv(t)
	e.remote.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInternalError(errors.New("etcdserver: request timed out"))
	})
	rep = e.run()
	if f := finding(rep, CodeCheckFailed); f == nil || f.Severity != SeverityError || rep.Healthy || rep.ExitCode() != ExitUnhealthy {
		t.Errorf("%+v\n%s", f, dump(rep))
	}
}

func TestForbidden(t *testing.T) {
	for _, tc := range []struct {
		err       error
		perm, can string
	}{
		{apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "p", errors.New(`User "u" cannot get resource "pods/log" in API group "" in the namespace "isthmus-check"`)),
			"get pods/log in namespace isthmus-check", "kubectl --context X auth can-i get pods --subresource=log -n isthmus-check"},
		{fmt.Errorf("create: %w", apierrors.NewForbidden(schema.GroupResource{Group: "apps", Resource: "deployments"}, "", errors.New(`User "system:serviceaccount:a:b" cannot create resource "deployments" in API group "apps" in the namespace "isthmus-check": RBAC: clusterrole.rbac.authorization.k8s.io "x" not found`))),
			"create deployments.apps in namespace isthmus-check", "kubectl --context X auth can-i create deployments.apps -n isthmus-check"},
		{apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "isthmus-check-x", errors.New(`violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false`)), "", ""},
		{apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "isthmus-check-x", errors.New(`exceeded quota: compute, requested: pods=1, used: pods=10, limited: pods=10`)), "", ""},
		{apierrors.NewInternalError(errors.New(`User "u" cannot list resource "pods"`)), "", ""},
		{nil, "", ""},
	} {
		perm, ok := forbidden(tc.err)
		if ok != (tc.perm != "") || (ok && (perm.String() != tc.perm || perm.canI("X") != tc.can)) {
			t.Errorf("%v: %v %q %q", tc.err, ok, perm, perm.canI("X"))
		}
	}
}

func TestUnreachable(t *testing.T) {
	nets := map[string]string{"a": "n1", "b": "n2", "c": "n1"}
	res := &ProbeResult{Answered: map[string]int{"a": 3}, Failed: 4, LastError: "503"}
	fs := Unreachable("a", res, []string{"a", "b", "c"}, nets, 45*time.Second)
	if len(fs) != 2 || fs[0].Subject != "a -> b" || fs[1].Subject != "a -> c" || !strings.Contains(fs[1].Message, "both on network n1") {
		t.Errorf("%+v", fs)
	}
	if got := Unreachable("a", &ProbeResult{Answered: map[string]int{"b": 1}}, []string{"a"}, nets, time.Second); len(got) != 1 || !strings.Contains(got[0].Message, "its own probe") {
		t.Errorf("%+v", got)
	}
}

func TestParseProbeLog(t *testing.T) {
	res, err := ParseProbeLog([]byte("time=... msg=starting\n{\"answered\":{\"x\":2},\"failed\":1,\"lastError\":\"e\"}\n"))
	if err != nil || res.Answered["x"] != 2 || res.Failed != 1 || res.LastError != "e" {
		t.Errorf("%+v %v", res, err)
	}
	if _, err := ParseProbeLog([]byte("fake logs")); err == nil {
		t.Error("a log without a result parsed")
	}
}

func TestMatchContexts(t *testing.T) {
	secrets := []RemoteSecret{{Secret: "istio-system/a", ID: "cluster-aks", Server: "https://AKS.example:443/"},
		{Secret: "istio-system/g", ID: "cluster-gke", Server: "https://10.0.0.1:6443"},
		{Secret: "istio-system/x", ID: "cluster-x", Server: "https://x.example"}}
	contexts := []KubeContext{{Name: "cluster-eks", Server: "https://eks.example"}, {Name: "admin@eks", Server: "https://eks.example"},
		{Name: "aks-admin", Server: "https://aks.example"}, {Name: "cluster-aks", Server: "https://aks.example"},
		{Name: "cluster-gke", Server: "https://gke.public.example"}, {Name: "other", Server: "https://other.example"}}
	got, err := MatchContexts(secrets, contexts, "cluster-eks", nil)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, m := range got {
		s = append(s, fmt.Sprintf("%s=%s/%s", m.ID, m.Context, m.How))
	}
	// Two contexts of aks's server: the one named after the cluster; gke's
	// server differs but a context bears its name; x has none.
	if want := []string{"cluster-aks=cluster-aks/server", "cluster-gke=cluster-gke/name", "cluster-x=/"}; !slices.Equal(s, want) {
		t.Errorf("%v, want %v", s, want)
	}
	got, err = MatchContexts(secrets[:1], contexts, "cluster-eks", []string{"aks-admin", "other"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Context != "aks-admin" || got[0].How != "server" || got[1].Context != "other" || got[1].Secret != "" || got[1].How != "--remote-contexts" {
		t.Errorf("%+v", got)
	}
	if _, err := MatchContexts(secrets, contexts, "cluster-eks", []string{"nope"}); err == nil {
		t.Error("an unknown context was accepted")
	}
	if NormalizeServer("https://AKS.example/") != NormalizeServer("https://aks.example:443") {
		t.Error("default port")
	}
}

func TestRemoteSecrets(t *testing.T) {
	c := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-cluster-aks", Namespace: ns, Labels: map[string]string{"istio/multiCluster": "true"}},
		Data: map[string][]byte{aks: remoteKubeconfig("https://aks.example:6443")}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "unrelated", Namespace: ns}, Data: map[string][]byte{"x": []byte("y")}})
	got, err := RemoteSecrets(context.Background(), c, ns)
	if err != nil || len(got) != 1 || got[0] != (RemoteSecret{Secret: ns + "/istio-remote-secret-cluster-aks", ID: aks, Server: "https://aks.example:6443"}) {
		t.Errorf("%+v %v", got, err)
	}
}

// TestPrimaryUnreachable: the only failure that is not a finding.
func TestPrimaryUnreachable(t *testing.T) {
	e := newEnv(t)
	e.primary.PrependReactor("get", "version", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := Run(context.Background(), e.mesh, e.opts); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("%v", err)
	}
}
