package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// meshArea checks the demo on the mesh: injection, calls across both
// clusters through the gateways, proxy-config and proxy-status.
func meshArea(t *testing.T, w *walkthrough) {
	e := w.e
	kc := w.kc
	sleepExec := func(script string) string { t.Helper(); return w.sleepExec(t, script) }

	t.Run("every pod of the demo runs with its sidecar, both containers ready", func(t *testing.T) {
		for cluster, n := range map[string]int{"cluster-eks": 4, "cluster-aks": 1} {
			pods, err := e.clients[cluster].CoreV1().Pods("multicluster").List(context.Background(), metav1.ListOptions{})
			if err != nil || len(pods.Items) != n {
				t.Fatalf("%s: %d pods (%v), want %d", cluster, len(pods.Items), err, n)
			}
			for _, p := range pods.Items {
				ready := 0
				for _, s := range p.Status.ContainerStatuses {
					if s.Ready {
						ready++
					}
				}
				if len(p.Spec.Containers) != 2 || ready != 2 || p.Spec.Containers[1].Name != "istio-proxy" {
					t.Errorf("%s %s: %d containers, %d ready", cluster, p.Name, len(p.Spec.Containers), ready)
				}
			}
		}
		// The gateways were injected with the gateway template: the router.
		for _, cluster := range []string{"cluster-eks", "cluster-aks"} {
			pods := e.waitReady(cluster, "istio-system", "istio=eastwestgateway", 1)
			if args := strings.Join(pods[0].Spec.Containers[0].Args, " "); args != "proxy router" {
				t.Errorf("%s east-west gateway runs %q", cluster, args)
			}
		}
	})

	t.Run("a pod in a namespace without injection is left alone", func(t *testing.T) {
		e.apply("cluster-aks", "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: plain, namespace: plain}\nspec:\n  containers: [{name: c, image: busybox, command: [sleep, \"3650d\"]}]\n")
		p, err := e.clients["cluster-aks"].CoreV1().Pods("plain").Get(context.Background(), "plain", metav1.GetOptions{})
		if err != nil || len(p.Spec.Containers) != 1 || len(p.Spec.InitContainers) != 0 {
			t.Fatalf("a pod outside the mesh was changed: %v", err)
		}
	})

	t.Run("dashboard?id=4 answers with profile's name and accounts' balance", func(t *testing.T) {
		var d struct {
			ID      int     `json:"id"`
			Name    string  `json:"name"`
			Balance float64 `json:"balance"`
		}
		o := sleepExec("curl -sS --max-time 10 http://dashboard:8080/dashboard?id=4")
		if err := json.Unmarshal([]byte(o), &d); err != nil || d.Name != demoapp.NameOf(4) || d.Balance != demoapp.BalanceOf(4) {
			t.Fatalf("dashboard said %s (%v); want name %q and balance %v", o, err, demoapp.NameOf(4), demoapp.BalanceOf(4))
		}
	})

	t.Run("200 calls from sleep to profile: both clusters answer, the remote through the gateways, seeing sleep's identity", func(t *testing.T) {
		o := sleepExec("for i in $(seq 200); do curl -sS --max-time 5 http://profile:8080/profile?id=4; echo; done")
		as := answers(o)
		by := map[string]int{}
		if len(as) < 200 {
			by["failed"] = 200 - len(as)
		}
		for _, a := range as {
			by[a.ServedBy.Cluster]++
			if a.ServedBy.Cluster == "cluster-aks" && !strings.Contains(a.Caller, "URI="+sleepID) {
				t.Errorf("the profile of cluster-aks saw the caller %q, want %s", a.Caller, sleepID)
			}
		}
		t.Logf("answers by cluster: %v", by)
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			if by[c] < 60 || by[c] > 140 || by["failed"] > 0 {
				t.Errorf("%s answered %d of 200 calls; want 30%%-70%% (all: %v)", c, by[c], by)
			}
		}
		// The remote's answers crossed its east-west gateway: it counts them.
		gw := e.waitReady("cluster-aks", "istio-system", "istio=eastwestgateway", 1)[0]
		metrics, err := e.kubectl("cluster-aks", "", "get", "--raw", fmt.Sprintf("/api/v1/namespaces/istio-system/pods/%s:15090/proxy/stats/prometheus", gw.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(metrics, "profile.multicluster.svc.cluster.local") {
			t.Errorf("the east-west gateway of cluster-aks has no metrics for profile:\n%s", metrics)
		}
	})

	t.Run("proxy-config endpoints of sleep lists the remote gateway address", func(t *testing.T) {
		gwAddr := strings.TrimSpace(isthmus(t, time.Minute, append([]string{"gateway", "address", "--context", "cluster-aks"}, kc...)...).stdout)
		r := isthmus(t, time.Minute, append([]string{"proxy-config", "endpoints", "deployment/sleep.multicluster", "--context", "cluster-eks",
			"--cluster", "outbound|8080||profile.multicluster.svc.cluster.local"}, kc...)...)
		if r.err != nil || !strings.Contains(r.stdout, gwAddr+":15443") || !strings.Contains(r.stdout, "HEALTHY") {
			t.Fatalf("endpoints of profile from sleep (want %s:15443): %v\n%s", gwAddr, r.err, r.stdout)
		}
		for _, what := range []string{"clusters", "listeners", "routes", "secret"} {
			r := isthmus(t, time.Minute, append([]string{"proxy-config", what, "deployment/sleep", "-n", "multicluster", "--context", "cluster-eks"}, kc...)...)
			if r.err != nil || strings.Count(r.stdout, "\n") < 2 {
				t.Errorf("proxy-config %s: %v\n%s", what, r.err, r.stdout)
			}
			if what == "secret" && !strings.Contains(r.stdout, sleepID) {
				t.Errorf("proxy-config secret does not show %s:\n%s", sleepID, r.stdout)
			}
		}
	})

	t.Run("proxy-status: every proxy of both clusters is synced", func(t *testing.T) {
		want := map[string]bool{}
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			for _, ns := range []string{"multicluster", "istio-system"} {
				pods, _ := e.clients[c].CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
				for _, p := range pods.Items {
					if !strings.HasPrefix(p.Name, "istiod-") {
						want[c+" "+p.Name+"."+ns] = true
					}
				}
			}
		}
		var r result
		eventually(t, "every proxy SYNCED", func() bool {
			r = isthmus(t, time.Minute, append([]string{"proxy-status", "--context", "cluster-eks"}, kc...)...)
			seen := 0
			for _, line := range strings.Split(r.stdout, "\n") {
				f := strings.Fields(line)
				if len(f) > 4 && want[f[1]+" "+f[0]] && f[2] == "SYNCED" && f[3] == "SYNCED" {
					seen++
				}
			}
			return r.err == nil && seen == len(want)
		})
		if r := isthmus(t, time.Minute, append([]string{"version", "--context", "cluster-eks"}, kc...)...); r.err != nil ||
			!strings.Contains(r.stdout, "control plane version:") || !strings.Contains(r.stdout, "data plane version:") {
			t.Errorf("isthmus version: %v\n%s", r.err, r.stdout)
		}
	})
}
