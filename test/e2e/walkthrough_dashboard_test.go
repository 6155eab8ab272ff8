package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/test/browser"
)

// dashboardArea: `isthmus dashboard` serves the live topology page,
// merged from every control plane replica, and Chromium shows it: both
// clusters on their networks, the sleep -> profile edges of both clusters
// with rates while sleep calls profile (the sidecars push their Istio
// metrics to the control plane), the convergence figure, and cluster-aks
// marked stale while its API server is frozen, synced again after.
func dashboardArea(t *testing.T, w *walkthrough) {
	e := w.e
	t.Run("dashboard: the live topology page in Chromium shows both clusters, sleep's calls to profile in each, and cluster-aks stale while its API server is frozen", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "dashboard", "--context", "cluster-eks", "--kubeconfig", e.kubeconfig, "--address", "127.0.0.1")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			cancel()
			_ = cmd.Wait()
			t.Logf("isthmus dashboard said:\n%s", stderr.String())
		}()
		line, err := bufio.NewReader(out).ReadString('\n')
		url := strings.TrimSpace(line)
		if err != nil || !strings.HasPrefix(url, "http://127.0.0.1:") {
			t.Fatalf("isthmus dashboard printed %q (%v), want the page's address", url, err)
		}

		calls := w.load(t, 100*time.Second)
		page := browser.Open(t, url, 4*time.Minute)
		byData := browser.ByData
		page.Wait("cluster-eks and cluster-aks, synced, on their networks", fmt.Sprintf(
			`%s?.dataset.state === 'synced' && %s?.dataset.state === 'synced' && %s?.closest('[data-network]').dataset.network === 'network1' && %s?.closest('[data-network]').dataset.network === 'network2'`,
			byData("cluster", "cluster-eks"), byData("cluster", "cluster-aks"), byData("cluster", "cluster-eks"), byData("cluster", "cluster-aks")), 30*time.Second)
		// The sidecars push every 5 s; a rate needs two pushes.
		for _, to := range []string{"cluster-eks", "cluster-aks"} {
			// One edge per service the calls went through (earlier areas
			// called profile by several): the one sleep's load uses has
			// the rate, whichever the page draws first.
			edges := fmt.Sprintf(`[...document.querySelectorAll('[data-edge]')].filter((e) => e.getAttribute('data-edge') === %s)`,
				browser.JS("sleep.multicluster@cluster-eks->profile.multicluster@"+to))
			page.Wait("sleep -> profile in "+to+" with a rate", edges+`.some((e) => parseFloat(e.dataset.rps) > 0)`, time.Minute)
			t.Logf("sleep -> profile in %s: rps %v, error rates %v", to, page.Eval(edges+`.map((e) => e.dataset.rps).join(' ')`), page.Eval(edges+`.map((e) => e.dataset.errorRate).join(' ')`))
		}
		if gw := fmt.Sprint(page.Eval(`(() => { const g = ` + byData("gateway", "istio-eastwestgateway@cluster-aks") + `; return g ? g.innerText : 'missing'; })()`)); !strings.Contains(gw, "198.18.2.") {
			t.Errorf("cluster-aks's east-west gateway on the page: %q, want its address", gw)
		}
		t.Logf("convergence on the page: %v", page.Eval(`document.getElementById('convergence').innerText`))

		pid := apiServerPID(t, e, "cluster-aks")
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		frozen := true
		thaw := func() {
			if frozen {
				frozen = false
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		}
		defer thaw()
		aks := byData("cluster", "cluster-aks")
		page.Wait("cluster-aks marked stale", aks+`.dataset.state === 'stale' && `+aks+`.innerText.includes('stale since')`, 45*time.Second)
		w.unhealthy(t, []string{"RemoteClusterStale@cluster-aks"}, "--probe=false")
		thaw()
		page.Wait("cluster-aks synced again", aks+`.dataset.state === 'synced'`, time.Minute)
		for _, p := range page.Problems() {
			t.Error(p)
		}
		r := calls()
		if r.err != nil || r.calls < 100 || r.failed() > 0 {
			t.Errorf("calls from sleep meanwhile: %v (%v), want only 200s", r.codes, r.err)
		}
	})
}
