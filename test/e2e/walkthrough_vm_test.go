package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// vmArea: a VM joins the mesh as Istio's VMs on another network do. It is
// a machine outside both clusters on the sandbox's internet segment (a
// network namespace of its own), network vm-net, which no gateway serves:
// pods reach it directly, through their node's NAT, and it reaches pods
// through each network's east-west gateway. A WorkloadEntry in the primary
// names its address, service account and network; its sidecar, started by
// hand as on a VM, gets its certificate and configuration from the control
// plane through cluster-eks's east-west gateway with a token of its service
// account, captures the VM's traffic (proxy init) and answers its DNS for
// mesh names. Under STRICT mTLS, both directions, both clusters.
func vmArea(t *testing.T, w *walkthrough) {
	e := w.e
	defer w.strictWithSleeps(t)()
	const name, vmNet = "vm-1", "vm-net"
	addr := netip.MustParseAddr("198.19.1.10")
	ns := network.HostNSPrefix + name

	// The gateways are fenced to the other cluster's egress
	// (loadBalancerSourceRanges); the VM's address is let in, as a
	// platform team opens its load balancers to a VM's network.
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		svc, err := e.clients[c].CoreV1().Services("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		old := svc.Spec.LoadBalancerSourceRanges
		if len(old) == 0 {
			continue
		}
		patch := func(ranges []string) {
			b, _ := json.Marshal(map[string]any{"spec": map[string]any{"loadBalancerSourceRanges": ranges}})
			if _, err := e.clients[c].CoreV1().Services("istio-system").Patch(context.Background(), "istio-eastwestgateway", types.MergePatchType, b, metav1.PatchOptions{}); err != nil {
				t.Fatalf("patch %s's east-west gateway: %v", c, err)
			}
		}
		patch(append(append([]string{}, old...), addr.String()+"/32"))
		defer patch(old)
	}

	// The VM's machine: its namespace, its resolver (the sandbox's DNS).
	if out, err := exec.Command(bin, "sandbox", "host", "add", name, addr.String()).CombinedOutput(); err != nil {
		t.Fatalf("sandbox host add: %v\n%s", err, out)
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		if out, err := exec.Command(bin, "sandbox", "host", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("sandbox host delete: %v\n%s", err, out)
		}
	}()
	vm := func(args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	}

	// What the VM's owner creates in the primary, Istio's way: a service
	// account, the WorkloadEntry, and a Service selecting it (in both
	// clusters, so cluster-aks's pods resolve its name too; only the
	// config cluster's selects entries, as in Istio).
	e.apply("cluster-eks", fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: vm, namespace: multicluster}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: %s, namespace: multicluster}
spec:
  address: %s
  labels: {app: vmapp}
  serviceAccount: vm
  network: %s
`, name, addr, vmNet))
	defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "workloadentry/"+name, "serviceaccount/vm")
	vmapp := "apiVersion: v1\nkind: Service\nmetadata: {name: vmapp, namespace: multicluster}\nspec:\n  selector: {app: vmapp}\n  ports: [{name: http, port: 8080}]\n"
	for _, c := range []string{"cluster-eks", "cluster-aks"} {
		e.apply(c, vmapp)
		defer e.kubectl(c, "", "-n", "multicluster", "delete", "service/vmapp")
	}

	// The files Istio's `istioctl x workload entry configure` hands a VM:
	// a token of its service account (audience istio-ca), the mesh's root.
	dir, err := os.MkdirTemp("", "isthmus-vm-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755) // the proxy runs as 1337
	exp := int64(3600)
	tr, err := e.clients["cluster-eks"].CoreV1().ServiceAccounts("multicluster").CreateToken(context.Background(), "vm",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root := e.rootOf("cluster-eks")
	if len(root) == 0 {
		t.Fatal("no istio-ca-root-cert in cluster-eks's multicluster namespace")
	}
	for f, b := range map[string][]byte{"istio-token": []byte(tr.Status.Token), "root-cert.pem": root} {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gw, err := e.clients["cluster-eks"].CoreV1().Services("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{})
	if err != nil || len(gw.Status.LoadBalancer.Ingress) == 0 {
		t.Fatalf("cluster-eks's east-west gateway has no load balancer: %v", err)
	}
	discovery := gw.Status.LoadBalancer.Ingress[0].Hostname // EKS: a name
	if discovery == "" {
		discovery = gw.Status.LoadBalancer.Ingress[0].IP
	}

	if out, err := vm(bin, "proxy", "init", "--redirect-dns").CombinedOutput(); err != nil {
		t.Fatalf("proxy init on the VM: %v\n%s", err, out)
	}
	// The logs live apart from dir: dir is removed by a defer, before
	// t.Cleanup runs and shows them for a failed test.
	logs := t.TempDir()
	start := func(what string, cmd *exec.Cmd) {
		log, err := os.Create(filepath.Join(logs, what+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", what, err)
		}
		procs = append(procs, cmd)
		t.Cleanup(func() {
			if t.Failed() {
				b, _ := os.ReadFile(log.Name())
				t.Logf("%s's log:\n%s", what, b)
			}
		})
	}
	app := vm("env", "CLUSTER_NAME=vm", "HOSTNAME="+name, bin, "demo-app", "profile", "--listen", ":8080")
	start("app", app)
	sidecar := vm("setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", bin, "proxy", "sidecar",
		"--discovery-address", discovery+":15012", "--server-name", "istiod.istio-system.svc",
		"--root-cert", filepath.Join(dir, "root-cert.pem"), "--token", filepath.Join(dir, "istio-token"),
		"--labels-file", filepath.Join(dir, "labels"))
	sidecar.Env = append(os.Environ(), "INSTANCE_IP="+addr.String(), "POD_NAME="+name, "POD_NAMESPACE=multicluster", "SERVICE_ACCOUNT=vm",
		"ISTIO_META_CLUSTER_ID=cluster-eks", "ISTIO_META_NETWORK="+vmNet, "ISTIO_META_DNS_CAPTURE=true")
	start("sidecar", sidecar)
	eventually(t, "the VM's sidecar ready (certificate, configuration and name table from the control plane)", func() bool {
		resp, err := http.Get("http://" + addr.String() + ":15021/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	t.Run("sleep in each cluster calls the VM's service over mTLS and is answered by the VM", func(t *testing.T) {
		for _, from := range []string{"cluster-eks", "cluster-aks"} {
			var got []profileAnswer
			eventually(t, "the VM answering from "+from, func() bool {
				got = w.sleepCalls(t, from, "http://vmapp:8080/profile?id=4", 5)
				return len(got) == 5 && got[0].ServedBy.Cluster == "vm"
			})
			for _, a := range got {
				if a.ServedBy.Cluster != "vm" || !strings.Contains(a.Caller, "spiffe://cluster.local/ns/multicluster/sa/sleep") {
					t.Errorf("from %s: served by %q, caller %q; want the VM, called by sleep's identity", from, a.ServedBy.Cluster, a.Caller)
				}
			}
		}
	})

	t.Run("the VM calls profile by name (its sidecar answers DNS) and is answered by both clusters through their gateways, with its own identity", func(t *testing.T) {
		by := map[string]int{}
		eventually(t, "profile from the VM answered by both clusters", func() bool {
			out, _ := vm("sh", "-c", "for i in $(seq 20); do curl -sS --max-time 5 http://profile.multicluster.svc:8080/profile?id=4; echo; done").CombinedOutput()
			for _, a := range answers(string(out)) {
				by[a.ServedBy.Cluster]++
				if !strings.Contains(a.Caller, "spiffe://cluster.local/ns/multicluster/sa/vm") {
					t.Errorf("profile saw caller %q, want the VM's identity", a.Caller)
				}
			}
			return by["cluster-eks"] > 0 && by["cluster-aks"] > 0
		})
		t.Logf("from the VM: %v", by)
	})

	t.Run("ServiceEntries' workloadSelector: the VM's entry from each cluster, the primary's pods (the config cluster's, as Istio)", func(t *testing.T) {
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vm-mesh, namespace: multicluster}
spec:
  hosts: [vm.mesh.example]
  addresses: [240.240.9.9]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vmapp}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: profile-mesh, namespace: multicluster}
spec:
  hosts: [profile.mesh.example]
  addresses: [240.240.9.10]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: profile}}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "serviceentry", "vm-mesh", "profile-mesh")
		for _, from := range []string{"cluster-eks", "cluster-aks"} {
			eventually(t, "vm.mesh.example answered by the VM from "+from, func() bool {
				got := w.sleepCalls(t, from, "--resolve vm.mesh.example:8080:240.240.9.9 http://vm.mesh.example:8080/profile?id=4", 3)
				return len(got) == 3 && got[0].ServedBy.Cluster == "vm" && got[2].ServedBy.Cluster == "vm"
			})
		}
		var by map[string]int
		eventually(t, "profile.mesh.example answered by the primary's profile pods from cluster-eks", func() bool {
			by = map[string]int{}
			for _, a := range w.sleepCalls(t, "cluster-eks", "--resolve profile.mesh.example:8080:240.240.9.10 http://profile.mesh.example:8080/profile?id=4", 10) {
				by[a.ServedBy.Cluster]++
			}
			return by["cluster-eks"] == 10
		})
	})

	t.Run("without mTLS the VM's app is refused (STRICT)", func(t *testing.T) {
		c := http.Client{Timeout: 5 * time.Second}
		if resp, err := c.Get("http://" + addr.String() + ":8080/profile?id=4"); err == nil {
			resp.Body.Close()
			t.Errorf("plaintext from outside the mesh to the VM's app: %s, want refused", resp.Status)
		}
	})
}
