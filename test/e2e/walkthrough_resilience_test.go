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
	"github.com/isthmus-mesh/isthmus/internal/discovery/remotesecret"
	"github.com/isthmus-mesh/isthmus/internal/discovery/rootcert"
)

// resilienceArea: the mesh as a platform team runs it, losing parts of
// itself while sleep calls profile in both clusters (the remote's answers
// through the east-west gateways). Each case counts the failed calls and
// the time to recover and logs them as a row (report) of BENCHMARKS.md's
// reliability table: the control plane's only replica SIGKILLed; two
// replicas (Istio's autoscaler with a floor of two) and the leader
// SIGKILLed (every proxy must be on a live replica within 5 s, and the
// writes go on from the next leader); cluster-aks's east-west gateway
// SIGKILLed; its API server frozen for 60 s, then stopped for 60 s (its
// last-known endpoints served, the cluster said to be stale where an
// operator looks); its remote secret rotated to a new token and to a
// revoked one; the whole control plane gone for 60 s. While a failure
// lasts, isthmus check names it (RemoteClusterStale, RemoteClusterRefused,
// ControlPlaneUnavailable). It leaves two replicas behind.
func resilienceArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("the only control plane replica SIGKILLed under load: no failed call, every proxy back when it restarts", func(t *testing.T) {
		istiod := e.waitReady("cluster-eks", "istio-system", "app=istiod", 1)[0]
		want := proxyCount(t, e)
		eventually(t, "every proxy connected", func() bool { return connected(t, e) >= want })
		calls := w.load(t, 20*time.Second)
		time.Sleep(4 * time.Second)
		killed := time.Now()
		signalPod(t, istiod.Name, "discovery", syscall.SIGKILL)
		back := within(60*time.Second, func() bool { return connected(t, e) >= want })
		r := calls()
		report(t, "control plane's only replica SIGKILLed (restarted by its node)", r, fmt.Sprintf("every proxy reconnected %s after the kill", back(killed)), "0 failed")
		if r.err != nil || r.calls < 50 || r.failed() > 0 {
			t.Errorf("calls while the control plane restarted: %v (%v), want only 200s", r.codes, r.err)
		}
		if back(killed) == 0 {
			t.Error("the proxies did not all reconnect within a minute of the restart")
		}
	})

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

	t.Run("the leader SIGKILLed under load: no failed call, every proxy on a live replica within 5 s, the writes go on", func(t *testing.T) {
		holder := leaseHolder(t, e)
		victim, survivor := istiods[0], istiods[1]
		if strings.HasPrefix(holder, survivor.Name+"_") {
			victim, survivor = survivor, victim
		}
		want := proxyCount(t, e)
		calls := w.load(t, 25*time.Second)
		time.Sleep(5 * time.Second)
		killed := time.Now()
		signalPod(t, victim.Name, "discovery", syscall.SIGKILL)
		// Its proxies reconnect through the istiod Service (the remote's
		// through the east-west gateway) to a live replica: the survivor,
		// or the victim once its container restarts.
		moved := within(30*time.Second, func() bool { return connected(t, e) >= want })(killed)
		r := calls()
		report(t, "control plane leader of 2 replicas SIGKILLed", r, fmt.Sprintf("every proxy (%d) on a live replica after %s", want, moved), "0 failed, <= 5 s")
		if r.err != nil || r.calls < 50 || r.failed() > 0 {
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
		took := within(time.Minute, func() bool { h := leaseHolder(t, e); return h != "" && h != holder })(killed)
		report(t, "(the same) the killed leader's Lease taken over", loadResult{}, fmt.Sprintf("a new leader after %s (lease %s, not released)", took, leader.LeaseDuration), "-")
		if took == 0 {
			t.Fatal("no new leader within a minute")
		}
		for _, cluster := range []string{"cluster-eks", "cluster-aks"} {
			ns := "resilience-" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
			if _, err := e.clients[cluster].CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_ = e.clients[cluster].CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
			}()
			eventually(t, "the new leader's "+rootcert.ConfigMapName+" in a new namespace of "+cluster, func() bool {
				cm, err := e.clients[cluster].CoreV1().ConfigMaps(ns).Get(context.Background(), rootcert.ConfigMapName, metav1.GetOptions{})
				return err == nil && bytes.Equal([]byte(cm.Data[rootcert.Key]), e.rootOf("cluster-eks"))
			})
		}
		e.waitReady("cluster-eks", "istio-system", "app=istiod", 2)
	})

	t.Run("cluster-aks's east-west gateway SIGKILLed under load: no failed call but the one in flight, its answers back when it restarts", func(t *testing.T) {
		gw := e.waitReady("cluster-aks", "istio-system", "istio=eastwestgateway", 1)[0]
		calls := w.load(t, 20*time.Second)
		time.Sleep(4 * time.Second)
		killed := time.Now()
		signalPod(t, gw.Name, "router", syscall.SIGKILL)
		restarted := within(time.Minute, func() bool {
			p, err := e.clients["cluster-aks"].CoreV1().Pods("istio-system").Get(context.Background(), gw.Name, metav1.GetOptions{})
			return err == nil && len(p.Status.ContainerStatuses) > 0 && p.Status.ContainerStatuses[0].RestartCount > 0 && p.Status.ContainerStatuses[0].Ready
		})(killed)
		r := calls()
		report(t, "cluster-aks's east-west gateway SIGKILLed", r, fmt.Sprintf("restarted and ready after %s", restarted), "<= 1 failed (the call in flight)")
		// The call in flight through the gateway when it dies is reset
		// mid-exchange: Istio's default retry policy (connect-failure,
		// refused-stream, unavailable, cancelled, 503) does not retry a
		// reset, and neither does isthmus's; every other call must pass
		// (new connections to the dead gateway are retried elsewhere).
		if r.err != nil || r.calls < 50 || r.failed() > 1 {
			t.Errorf("calls while the gateway restarted: %v (%v), want at most the one in flight to fail", r.codes, r.err)
		}
		if by := w.servedBy(t, 30, ""); by["cluster-aks"] == 0 {
			t.Errorf("cluster-aks no longer answers through its restarted gateway: %v", by)
		}
	})

	t.Run("cluster-aks's remote secret rotated to a new token, the old one revoked, then a revoked one: no failed call, the refusal named", func(t *testing.T) {
		const secretName, account = "istio-remote-secret-cluster-aks", "istio-reader-service-account"
		secrets := e.clients["cluster-eks"].CoreV1().Secrets("istio-system")
		remote, err := secrets.Get(context.Background(), secretName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kubeconfig := string(remote.Data["cluster-aks"])
		oldToken := regexp.MustCompile(`(?m)^\s+token: (\S+)$`).FindStringSubmatch(kubeconfig)
		if oldToken == nil {
			t.Fatalf("no token in the remote secret's kubeconfig:\n%s", kubeconfig)
		}
		// A second long-lived token of the reader account in cluster-aks.
		aksSecrets := e.clients["cluster-aks"].CoreV1().Secrets("istio-system")
		if _, err := aksSecrets.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "reader-rotated",
			Annotations: map[string]string{corev1.ServiceAccountNameKey: account}}, Type: corev1.SecretTypeServiceAccountToken}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var newToken string
		eventually(t, "the new token", func() bool {
			s, err := aksSecrets.Get(context.Background(), "reader-rotated", metav1.GetOptions{})
			newToken = string(s.Data[corev1.ServiceAccountTokenKey])
			return err == nil && newToken != ""
		})
		write := func(token string) {
			t.Helper()
			cur, err := secrets.Get(context.Background(), secretName, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cur.Data["cluster-aks"] = []byte(strings.Replace(kubeconfig, oldToken[1], token, 1))
			if _, err := secrets.Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		clusters := func() string { return w.remoteClusters(t) }
		state := func(want string) func() bool {
			re := regexp.MustCompile(`(?m)^cluster-aks\s+\S+\s+` + want + `\s`)
			return func() bool { time.Sleep(500 * time.Millisecond); return re.MatchString(clusters()) }
		}

		calls := w.load(t, 30*time.Second)
		time.Sleep(3 * time.Second)
		write(newToken)
		// The old token stops working: its Secret deleted, as a user
		// revokes a leaked token. The control plane already uses the new.
		list, err := aksSecrets.List(context.Background(), metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeServiceAccountToken)})
		if err != nil {
			t.Fatal(err)
		}
		revoked := ""
		for _, s := range list.Items {
			if string(s.Data[corev1.ServiceAccountTokenKey]) == oldToken[1] {
				revoked = s.Name
				if err := aksSecrets.Delete(context.Background(), s.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		if revoked == "" {
			t.Fatal("no token Secret in cluster-aks holds the remote secret's token")
		}
		time.Sleep(2 * remotesecret.ProbeEvery)
		stillSynced := state("synced")()
		r := calls()
		report(t, "cluster-aks's remote secret rotated to a new token, the old one revoked", r, fmt.Sprintf("synced throughout: %v", stillSynced), "0 failed")
		if r.err != nil || r.calls < 50 || r.failed() > 0 || !stillSynced {
			t.Errorf("rotation: calls %v (%v), synced %v:\n%s", r.codes, r.err, stillSynced, clusters())
		}

		// A remote secret with the revoked token: refused and said so; the
		// cluster's last-known endpoints are still served.
		calls = w.load(t, 30*time.Second)
		write(oldToken[1])
		wrote := time.Now()
		refused := within(40*time.Second, state(`error\s+\S+\s+the API server refuses the secret's credentials`))(wrote)
		r = calls()
		report(t, "cluster-aks's remote secret given a revoked token", r, fmt.Sprintf("refusal reported after %s; last-known endpoints served", refused), "0 failed")
		if refused == 0 {
			t.Errorf("a revoked token is not reported:\n%s", clusters())
		} else {
			w.unhealthy(t, []string{"RemoteClusterRefused@cluster-aks"}, "--probe=false", "--timeout", "40s")
		}
		if r.err != nil || r.calls < 50 || r.failed() > 0 {
			t.Errorf("calls with a revoked remote secret: %v (%v), want only 200s", r.codes, r.err)
		}
		if by := w.servedBy(t, 30, ""); by["cluster-aks"] == 0 {
			t.Errorf("cluster-aks's endpoints were dropped with the revoked secret: %v", by)
		}
		// Past the sync timeout (30 s) the previous secret's client still
		// watches cluster-aks: a second profile pod there reaches every
		// replica's registry.
		time.Sleep(time.Until(wrote.Add(35 * time.Second)))
		if out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "scale", "deployment", "profile", "--replicas=2"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		defer func() {
			_, _ = e.kubectl("cluster-aks", "", "-n", "multicluster", "scale", "deployment", "profile", "--replicas=1")
		}()
		watched := within(90*time.Second, func() bool {
			time.Sleep(500 * time.Millisecond)
			return registeredEndpoints(t, e, "profile.multicluster.svc.cluster.local", "cluster-aks") == 2
		})(time.Time{})
		if watched == 0 {
			t.Error("with a revoked token in the new secret, cluster-aks's changes no longer reach the control plane: the previous secret's client was stopped")
		}
		write(newToken)
		if within(time.Minute, state("synced"))(time.Time{}) == 0 {
			t.Errorf("the good secret back: cluster-aks not synced:\n%s", clusters())
		}
	})

	t.Run("cluster-aks's API server frozen for 60 s under load: no failed call, the cluster said to be stale, then synced again", func(t *testing.T) {
		var pid int
		w.remoteAPIDown(t, "cluster-aks's API server frozen (SIGSTOP) for 60 s", func() {
			pid = apiServerPID(t, e, "cluster-aks")
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}, func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	})

	t.Run("cluster-aks's API server stopped for 60 s under load: no failed call, the cluster said to be stale, then synced again once restarted", func(t *testing.T) {
		w.remoteAPIDown(t, "cluster-aks's API server stopped (SIGKILL) for 60 s, then restarted by sandbox up", func() {
			if err := syscall.Kill(apiServerPID(t, e, "cluster-aks"), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}, func() {
			// The cluster's other components may have exited meanwhile
			// (a controller manager that cannot renew its lease does):
			// up again until status finds every one running, as a
			// supervisor would restart them.
			ok := eventuallyOK(func() bool {
				if r := isthmus(t, 5*time.Minute, "sandbox", "--state-dir", e.state, "up"); r.err != nil {
					return false
				}
				time.Sleep(5 * time.Second)
				return isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "status").err == nil
			})
			if !ok {
				t.Error("cluster-aks's control plane not whole again after sandbox up")
			}
		})
	})

	t.Run("the whole control plane gone for 60 s under load: no failed call, a new remote pod refused as the injector's failurePolicy says, every proxy back within 5 s of its return", func(t *testing.T) {
		want := proxyCount(t, e)
		eventually(t, "every proxy connected", func() bool { return connected(t, e) >= want })
		// Its autoscaler would bring it back (and cannot scale from zero):
		// it goes too, and the install below makes it again.
		for _, args := range [][]string{{"delete", "hpa", "istiod"}, {"scale", "deployment", "istiod", "--replicas=0"}} {
			if out, err := e.kubectl("cluster-eks", "", append([]string{"-n", "istio-system"}, args...)...); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		restored := false
		restore := func() {
			if !restored {
				restored = true
				w.installPrimary(t, "values.pilot.autoscaleMin=2")
			}
		}
		defer restore()
		calls := w.load(t, 80*time.Second)
		eventually(t, "no control plane pod", func() bool {
			l, err := e.clients["cluster-eks"].CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=istiod"})
			return err == nil && len(l.Items) == 0
		})
		gone := time.Now()
		// A pod made in the remote meanwhile: its injector (failurePolicy
		// Fail) cannot be called, so it is refused rather than run
		// without a sidecar.
		time.Sleep(5 * time.Second)
		out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "run", "while-gone", "--image=busybox", "--restart=Never", "--", "sleep", "3650d")
		if err == nil || !strings.Contains(err.Error(), "sidecar-injector.istio.io") {
			t.Errorf("a pod created in cluster-aks without a control plane: %v\n%s; want refused by the injection webhook", err, out)
			_, _ = e.kubectl("cluster-aks", "", "-n", "multicluster", "delete", "pod", "while-gone", "--ignore-not-found")
		}
		w.unhealthy(t, []string{"ControlPlaneUnavailable@cluster-eks", "InjectionUnavailable@cluster-aks"}, "--probe=false", "--timeout", "40s")
		time.Sleep(time.Until(gone.Add(60 * time.Second)))
		if out, err := e.kubectl("cluster-eks", "", "-n", "istio-system", "scale", "deployment", "istiod", "--replicas=2"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		// The first replica ready (both may be ready at once: not waitReady's
		// exactly one).
		eventually(t, "a control plane replica ready", func() bool { return len(e.readyPods("cluster-eks", "istio-system", "app=istiod")) > 0 })
		back := time.Now()
		resynced := within(time.Minute, func() bool { return connected(t, e) >= want })(back)
		r := calls()
		report(t, "the whole control plane gone (scaled to 0) for 60 s", r, fmt.Sprintf("every proxy back %s after a replica was ready", resynced), "0 failed, <= 5 s")
		if r.err != nil || r.calls < 100 || r.failed() > 0 {
			t.Errorf("calls without a control plane: %v (%v), want only 200s", r.codes, r.err)
		}
		if resynced == 0 || resynced > 5*time.Second {
			t.Errorf("every proxy back %s after the control plane returned, want within 5 s", resynced)
		}
		restore()
		e.waitReady("cluster-eks", "istio-system", "app=istiod", 2)
		// The remote injects again.
		if out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "run", "after-return", "--image=busybox", "--restart=Never", "--", "sleep", "3650d"); err != nil {
			t.Errorf("a pod created in cluster-aks after the control plane returned: %v\n%s", err, out)
		} else {
			defer func() {
				_, _ = e.kubectl("cluster-aks", "", "-n", "multicluster", "delete", "pod", "after-return", "--ignore-not-found", "--wait=false")
			}()
			if c, _ := e.kubectl("cluster-aks", "", "-n", "multicluster", "get", "pod", "after-return", "-o", "jsonpath={.spec.containers[*].name}"); !strings.Contains(c, "istio-proxy") {
				t.Errorf("after the return a new pod in cluster-aks has containers %q, want istio-proxy injected", c)
			}
		}
	})
}

// report logs one case as a row of BENCHMARKS.md's reliability table
// (bench/parts/50-resilience.sh collects the lines): the case, the calls
// from sleep to profile during it and how many failed, how the mesh
// recovered, the goal.
func report(t *testing.T, what string, r loadResult, recovery, goal string) {
	t.Helper()
	calls, failed := "-", "-"
	if r.codes != nil {
		calls, failed = strconv.Itoa(r.calls), strconv.Itoa(r.failed())
	}
	t.Logf("resilience| %s | %s | %s | %s | %s |", what, calls, failed, recovery, goal)
}

// apiServerPID is the process of a sandbox cluster's kube-apiserver.
func apiServerPID(t *testing.T, e *sandboxEnv, cluster string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.state, "clusters", cluster, "run", "kube-apiserver.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b) + " ")[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// remoteAPIDown takes cluster-aks's API server away (down) for 60 s under
// calls from sleep and brings it back (up): the calls go on with its
// last-known endpoints, the control plane says the cluster is stale
// (remote-clusters, its metric, proxy-status) and synced again once it
// answers, and its pods are Ready afterwards (its node's lease went stale
// meanwhile).
func (w *walkthrough) remoteAPIDown(t *testing.T, what string, down, up func()) {
	t.Helper()
	e := w.e
	calls := w.load(t, 75*time.Second)
	time.Sleep(3 * time.Second)
	down()
	downAt := time.Now()
	restored := false
	restore := func() {
		if !restored {
			restored = true
			up()
		}
	}
	defer restore()
	clusters := func() string { return w.remoteClusters(t) }
	stale := regexp.MustCompile(`(?m)^cluster-aks\s+\S+\s+stale\s+\S+\s+API server not answering since`)
	seen := within(50*time.Second, func() bool { time.Sleep(500 * time.Millisecond); return stale.MatchString(clusters()) })(downAt)
	if seen == 0 {
		t.Errorf("cluster-aks not stale in remote-clusters 50 s after its API server went away:\n%s", clusters())
	} else {
		// The gauge follows the state every second.
		istiods := e.waitReady("cluster-eks", "istio-system", "app=istiod", 2)
		if within(10*time.Second, func() bool {
			for _, p := range istiods {
				out, _ := controlPlaneGet(e, p.Name, "/metrics")
				if !strings.Contains(out, `istiod_remote_cluster_sync_status{cluster="cluster-aks",status="stale"} 1`) {
					return false
				}
			}
			return true
		})(downAt) == 0 {
			t.Errorf("istiod_remote_cluster_sync_status of cluster-aks is not stale in both replicas")
		}
		if out := isthmus(t, time.Minute, append([]string{"proxy-status", "--context", "cluster-eks"}, w.kc...)...).stdout; !strings.Contains(out, "cluster cluster-aks is stale: API server not answering since") {
			t.Errorf("proxy-status does not say cluster-aks is stale:\n%s", out)
		}
		w.unhealthy(t, []string{"RemoteClusterStale@cluster-aks"}, "--probe=false", "--timeout", "40s")
	}
	time.Sleep(time.Until(downAt.Add(60 * time.Second)))
	restore()
	upAt := time.Now()
	synced := within(time.Minute, func() bool {
		return regexp.MustCompile(`(?m)^cluster-aks\s+\S+\s+synced\s`).MatchString(clusters())
	})(upAt)
	r := calls()
	report(t, what, r, fmt.Sprintf("stale after %s; synced %s after it was back", seen, synced), "0 failed, synced <= 5 s after")
	if r.err != nil || r.calls < 100 || r.failed() > 0 {
		t.Errorf("calls while cluster-aks's API server was away: %v (%v), want only 200s", r.codes, r.err)
	}
	if synced == 0 {
		t.Errorf("cluster-aks not synced a minute after its API server was back:\n%s", clusters())
	}
	// In the subtest (waitReady fails the whole walkthrough), with what
	// the pod and its node said when it did not come back.
	if !eventuallyOK(func() bool { return len(e.readyPods("cluster-aks", "multicluster", "app=profile")) == 1 }) {
		pods, _ := e.kubectl("cluster-aks", "", "-n", "multicluster", "get", "pods", "-l", "app=profile", "-o", "yaml")
		nodes, _ := e.kubectl("cluster-aks", "", "get", "nodes", "-o", "yaml")
		t.Fatalf("profile in cluster-aks not ready a minute after its API server was back; pods:\n%s\nnodes:\n%s", pods, nodes)
	}
	if by := w.servedBy(t, 30, ""); by["cluster-aks"] == 0 {
		t.Errorf("cluster-aks left the mesh after its API server came back: %v", by)
	}
}

// loadResult is what a run of calls from sleep to profile got.
type loadResult struct {
	codes map[string]int // by HTTP status (000: no answer)
	calls int
	err   error
}

func (r loadResult) failed() int { return r.calls - r.codes["200"] }

// load calls profile from sleep in cluster-eks for d, one call at a
// time, in the background; what it returns waits for the calls and
// counts them.
func (w *walkthrough) load(t *testing.T, d time.Duration) func() loadResult {
	t.Helper()
	done := make(chan loadResult, 1)
	go func() {
		out, err := w.e.kubectl("cluster-eks", "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
			fmt.Sprintf(`end=$(($(date +%%s)+%d)); while [ $(date +%%s) -lt $end ]; do curl -s -o /dev/null -w '%%{http_code}\n' --max-time 5 http://profile:8080/profile?id=4; done`, int(d.Seconds())))
		r := loadResult{codes: map[string]int{}, err: err}
		for _, c := range strings.Fields(out) {
			r.codes[c]++
			r.calls++
		}
		done <- r
	}()
	return func() loadResult { return <-done }
}

// within polls cond every 100 ms for up to limit; what it returns is the
// time from a start to when cond first held (0: it never did).
func within(limit time.Duration, cond func() bool) func(start time.Time) time.Duration {
	deadline := time.Now().Add(limit)
	var at time.Time
	for time.Now().Before(deadline) {
		if cond() {
			at = time.Now()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func(start time.Time) time.Duration {
		if at.IsZero() {
			return 0
		}
		return max(at.Sub(start).Round(10*time.Millisecond), time.Millisecond) // held at once: not 0
	}
}

// controlPlaneGet GETs path on a control plane pod's monitoring port
// (15014) through cluster-eks's API server.
func controlPlaneGet(e *sandboxEnv, pod, path string) (string, error) {
	return e.kubectl("cluster-eks", "", "get", "--raw", "/api/v1/namespaces/istio-system/pods/"+pod+":15014/proxy"+path)
}

// remoteClusters is what isthmus remote-clusters prints for the mesh.
func (w *walkthrough) remoteClusters(t *testing.T) string {
	t.Helper()
	return isthmus(t, time.Minute, append([]string{"remote-clusters", "--context", "cluster-eks"}, w.kc...)...).stdout
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
	out, err := controlPlaneGet(e, pod, "/debug/syncz")
	var list []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &list) != nil {
		return nil
	}
	return list
}

// registeredEndpoints counts the ready endpoints of a service from one
// cluster in the registry of every control plane replica (the fewest).
func registeredEndpoints(t *testing.T, e *sandboxEnv, hostname, cluster string) int {
	t.Helper()
	list, err := e.clients["cluster-eks"].CoreV1().Pods("istio-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app=istiod"})
	if err != nil || len(list.Items) == 0 {
		return -1
	}
	fewest := -1
	for _, p := range list.Items {
		out, err := controlPlaneGet(e, p.Name, "/debug/registryz")
		var dump struct {
			Services []struct {
				Hostname  string
				Endpoints []struct {
					Cluster string
					Ready   bool
				} `json:"endpoints"`
			} `json:"services"`
		}
		if err != nil || json.Unmarshal([]byte(out), &dump) != nil {
			return -1
		}
		n := 0
		for _, s := range dump.Services {
			for _, ep := range s.Endpoints {
				if s.Hostname == hostname && ep.Cluster == cluster && ep.Ready {
					n++
				}
			}
		}
		if fewest < 0 || n < fewest {
			fewest = n
		}
	}
	return fewest
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
