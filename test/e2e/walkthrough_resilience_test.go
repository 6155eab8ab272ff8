package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/leader"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
)

// resilienceArea: the control plane as a platform team runs it, with two
// replicas (Istio's autoscaler with a floor of two), and one of them
// SIGKILLed while sleep calls profile in both clusters. The calls must
// not notice, every proxy of both clusters must be on the other replica
// within 5 s, and the writes (root certificates in every cluster) must go
// on from whichever replica leads next.
func resilienceArea(t *testing.T, w *walkthrough) {
	e := w.e
	var istiods []corev1.Pod
	t.Run("two control plane replicas: the autoscaler's floor, a disruption budget, one leader", func(t *testing.T) {
		w.installPrimary(t, "values.pilot.autoscaleMin=2")
		istiods = e.waitReady("cluster-eks", "istio-system", "app=istiod", 2)
		if out, err := e.kubectl("cluster-eks", "", "-n", "istio-system", "get", "pdb", "istiod", "-o", "jsonpath={.spec.minAvailable}"); err != nil || out != "1" {
			t.Errorf("PodDisruptionBudget istiod: minAvailable %q (%v), want 1", out, err)
		}
		holder := leaseHolder(t, e)
		if !strings.HasPrefix(holder, istiods[0].Name+"_") && !strings.HasPrefix(holder, istiods[1].Name+"_") {
			t.Errorf("lease %s held by %q, not by a replica (%s, %s)", leader.LeaseName, holder, istiods[0].Name, istiods[1].Name)
		}
		// The proxies of both clusters, spread over the two.
		eventually(t, "every proxy connected to one of the replicas", func() bool { return connected(t, e) >= proxyCount(t, e) })
	})
	if len(istiods) != 2 {
		t.Fatal("no two replicas to kill one of")
	}

	t.Run("the leader SIGKILLed under load: no failed call, every proxy on the other replica within 5 s, the writes go on", func(t *testing.T) {
		holder := leaseHolder(t, e)
		victim, survivor := istiods[0], istiods[1]
		if strings.HasPrefix(holder, survivor.Name+"_") {
			victim, survivor = survivor, victim
		}
		want := proxyCount(t, e)
		// 25 s of calls from sleep to profile (both clusters answer, the
		// remote's through the east-west gateways), one at a time.
		type result struct {
			codes map[string]int
			err   error
		}
		load := make(chan result, 1)
		go func() {
			out, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
				`end=$(($(date +%s)+25)); while [ $(date +%s) -lt $end ]; do curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 http://profile:8080/profile?id=4; done`)
			codes := map[string]int{}
			for _, c := range strings.Fields(out) {
				codes[c]++
			}
			load <- result{codes, err}
		}()
		time.Sleep(5 * time.Second)
		killed := time.Now()
		signalPod(t, victim.Name, "discovery", syscall.SIGKILL)
		// Its proxies reconnect through the istiod Service (the remote's
		// through the east-west gateway) to a live replica: the survivor,
		// or the victim once its container restarts.
		var moved time.Duration
		for deadline := killed.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if connected(t, e) >= want {
				moved = time.Since(killed)
				break
			}
		}
		r := <-load
		calls := 0
		for _, n := range r.codes {
			calls += n
		}
		t.Logf("replica %s killed: %d calls %v; every proxy (%d) on a live replica (%s, %d of them) after %s", victim.Name, calls, r.codes, want,
			survivor.Name, len(syncz(t, e, survivor.Name)), moved.Round(10*time.Millisecond))
		if r.err != nil || calls < 50 || r.codes["200"] != calls {
			t.Errorf("calls while a control plane replica died: %v (%v), want only 200s", r.codes, r.err)
		}
		if moved == 0 || moved > 5*time.Second {
			t.Errorf("every proxy on a live replica after %s, want within 5 s", moved)
		}

		// A reconnected proxy tells the replica what it holds (delta
		// initial versions): that counts as sent and acknowledged, so
		// proxy-status shows every sidecar SYNCED for all four types, not
		// NOT SENT for what needed no new response.
		sidecars := regexp.MustCompile(`(?m)^\S+\.multicluster\s+cluster-\S+\s+(.*)$`)
		synced := regexp.MustCompile(`^SYNCED\s+SYNCED\s+SYNCED\s+SYNCED\s`)
		var status string
		ok := eventuallyOK(func() bool {
			r := isthmus(t, time.Minute, append([]string{"proxy-status", "--context", "cluster-eks"}, w.kc...)...)
			status = r.stdout
			rows := sidecars.FindAllStringSubmatch(status, -1)
			for _, row := range rows {
				if !synced.MatchString(row[1]) {
					return false
				}
			}
			return r.err == nil && len(rows) > 0
		})
		if !ok {
			t.Errorf("after the reconnect not every sidecar is SYNCED for CDS, LDS, EDS and RDS:\n%s", status)
		}

		// The killed replica held the Lease without releasing it: it
		// expires, and a replica (the survivor, or the victim's restarted
		// container under a new identity) leads and writes to both clusters.
		eventually(t, "a new leader", func() bool { return leaseHolder(t, e) != holder })
		for _, cluster := range []string{"cluster-eks", "cluster-aks"} {
			ns := "resilience-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
			if _, err := e.clients[cluster].CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			defer func() { _ = e.clients[cluster].CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) }()
			eventually(t, "the new leader's "+rootcert.ConfigMapName+" in a new namespace of "+cluster, func() bool {
				cm, err := e.clients[cluster].CoreV1().ConfigMaps(ns).Get(context.Background(), rootcert.ConfigMapName, metav1.GetOptions{})
				return err == nil && bytes.Equal([]byte(cm.Data[rootcert.Key]), e.rootOf("cluster-eks"))
			})
		}
		e.waitReady("cluster-eks", "istio-system", "app=istiod", 2)
	})
}

// leaseHolder is who holds the control plane's leader Lease.
func leaseHolder(t *testing.T, e *sandboxEnv) string {
	t.Helper()
	l, err := e.clients["cluster-eks"].CoordinationV1().Leases("istio-system").Get(context.Background(), leader.LeaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// syncz is the proxies connected to one control plane replica (its
// /debug/syncz through the API server); none if it does not answer.
func syncz(t *testing.T, e *sandboxEnv, pod string) []map[string]any {
	t.Helper()
	out, err := e.kubectl("cluster-eks", "", "get", "--raw", fmt.Sprintf("/api/v1/namespaces/istio-system/pods/%s:15014/proxy/debug/syncz", pod))
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil {
		return nil
	}
	return list
}

// connected counts the proxies connected to the control plane's replicas
// that answer.
func connected(t *testing.T, e *sandboxEnv) int {
	t.Helper()
	list, err := e.clients["cluster-eks"].CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range list.Items {
		n += len(syncz(t, e, p.Name))
	}
	return n
}

// proxyCount is the running pods with a sidecar or a gateway proxy in
// both clusters: every one holds an xDS stream.
func proxyCount(t *testing.T, e *sandboxEnv) int {
	t.Helper()
	n := 0
	for _, cluster := range []string{"cluster-eks", "cluster-aks"} {
		pods, err := e.clients[cluster].CoreV1().Pods("").List(context.Background(), metav1.ListOptions{FieldSelector: "status.phase=Running"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			for _, c := range p.Spec.Containers {
				if c.Name == "istio-proxy" && p.DeletionTimestamp == nil {
					n++
				}
			}
		}
	}
	return n
}

// signalPod sends sig to the sandbox process of a pod's container: the
// process whose environment names the pod (POD_NAME, which the
// control plane's and every injected container's have) and whose command
// line has arg.
func signalPod(t *testing.T, pod, arg string, sig syscall.Signal) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range procs {
		env, err := os.ReadFile(filepath.Join(dir, "environ"))
		if err != nil || !bytes.Contains(append(env, 0), []byte("\x00POD_NAME="+pod+"\x00")) && !bytes.HasPrefix(env, []byte("POD_NAME="+pod+"\x00")) {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		if !bytes.Contains(cmdline, []byte(arg)) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		if err := syscall.Kill(pid, sig); err != nil {
			t.Fatalf("signal %s's process %d: %v", pod, pid, err)
		}
		return
	}
	t.Fatalf("no process of pod %s running %q", pod, arg)
}
