package check

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// clusterServer answers /profile as the demo app of the cluster its query
// names (c=CLUSTER), after failing the first fails calls with a 503; with
// answeredBy, some clusters' calls are answered by another.
func clusterServer(t *testing.T, fails int32, answeredBy map[string]string) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	var mu = make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) <= fails {
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
			return
		}
		c := r.URL.Query().Get("c")
		if by, ok := answeredBy[c]; ok {
			c = by
		}
		mu <- struct{}{} // CLUSTER_NAME is the process's: one answer at a time
		defer func() { <-mu }()
		t.Setenv("CLUSTER_NAME", c)
		demoapp.ProfileHandler().ServeHTTP(w, r)
	}))
	return srv, &n
}

// TestProbeCalls: the client calls each wanted cluster's own URL, retries
// errors (a sidecar not ready yet) and stops once every wanted cluster
// answered its URL itself; a cluster whose URL is answered by another (as
// locality load balancing would keep a call at home) or never answered
// leaves it calling until its timeout, with that cluster's last error.
func TestProbeCalls(t *testing.T) {
	srv, n := clusterServer(t, 2, map[string]string{"c": "a"})
	defer srv.Close()
	targets := func(want ...string) []ProbeTarget {
		ts, err := ProbeTargets(srv.URL+"/profile?id=1&c="+ProbeClusterPlaceholder, want)
		if err != nil {
			t.Fatal(err)
		}
		return ts
	}
	start := time.Now()
	res := ProbeCalls(context.Background(), targets("a", "b"), 10*time.Second, time.Millisecond)
	if len(res.Missing([]string{"a", "b"})) != 0 || res.Answered["a"] != 1 || res.Answered["b"] != 1 || res.Failed != 2 || res.LastError == "" || time.Since(start) > 5*time.Second {
		t.Errorf("%+v after %s", res, time.Since(start))
	}
	if got := n.Load(); got != 4 {
		t.Errorf("%d calls, want 4 (2 failed, then one per cluster)", got)
	}
	// c's URL is answered by a: c is not reached, however often a answers.
	res = ProbeCalls(context.Background(), targets("a", "c"), 300*time.Millisecond, 10*time.Millisecond)
	if m := res.Missing([]string{"a", "c"}); len(m) != 1 || m[0] != "c" || res.Answered["a"] != 1 ||
		!strings.HasPrefix(res.LastError, "c: answered by cluster a, not c") {
		t.Errorf("%+v", res)
	}
	// Nothing listens: connection errors until the timeout.
	srv.Close()
	res = ProbeCalls(context.Background(), targets("a"), 200*time.Millisecond, 10*time.Millisecond)
	if res.Failed == 0 || !strings.HasPrefix(res.LastError, "a: ") || len(res.Answered) != 0 {
		t.Errorf("%+v", res)
	}
}

// TestProbeCallsLastError: the last error is that of a cluster that never
// answered, not of one that failed once and then answered.
func TestProbeCallsLastError(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Query().Get("c") {
		case "down":
			http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
		default:
			if calls.Add(1) < 5 {
				http.Error(w, "upstream connect error", http.StatusServiceUnavailable)
				return
			}
			t.Setenv("CLUSTER_NAME", "up")
			demoapp.ProfileHandler().ServeHTTP(w, r)
		}
	}))
	defer srv.Close()
	ts, err := ProbeTargets(srv.URL+"/profile?id=1&c={cluster}", []string{"down", "up"})
	if err != nil {
		t.Fatal(err)
	}
	res := ProbeCalls(context.Background(), ts, 400*time.Millisecond, 20*time.Millisecond)
	if res.Answered["up"] != 1 || res.Answered["down"] != 0 || !strings.HasPrefix(res.LastError, "down: 503") {
		t.Errorf("%+v", res)
	}
}

func TestProbeTargets(t *testing.T) {
	ts, err := ProbeTargets(ProbeURLTemplate, []string{"cluster-eks", " Kubernetes", "cluster-eks", ""})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2 || ts[0] != (ProbeTarget{Cluster: "cluster-eks", URL: "http://probe-cluster-eks.isthmus-check:8080/profile?id=1"}) ||
		ts[1].Cluster != "Kubernetes" || ts[1].URL != "http://"+ProbeService("Kubernetes")+".isthmus-check:8080/profile?id=1" {
		t.Errorf("%+v", ts)
	}
	if _, err := ProbeTargets("http://probe.isthmus-check:8080/profile?id=1", []string{"a"}); err == nil || !strings.Contains(err.Error(), "{cluster}") {
		t.Errorf("a URL without {cluster}: %v", err)
	}
	if _, err := ProbeTargets(ProbeURLTemplate, nil); err == nil {
		t.Error("no wanted cluster was accepted")
	}
}

// TestProbeKey: a cluster ID names its Service as it is when probe-ID is a
// DNS-1035 label, else shortened with a hash; every Service name is a
// DNS-1035 label and a valid label value, and different IDs never share one.
func TestProbeKey(t *testing.T) {
	long := strings.Repeat("a", 57)
	for id, want := range map[string]string{"cluster-eks": "cluster-eks", "c1": "c1", long: long, "0x": "0x"} {
		if got := ProbeKey(id); got != want {
			t.Errorf("ProbeKey(%q) = %q, want %q", id, got, want)
		}
	}
	seen := map[string]string{}
	for _, id := range []string{"cluster-eks", "Kubernetes", "kubernetes", "us-east-1.eks", "us_east_1_eks", "-x", "x-", "", "---", "ÄKS",
		long, long + "a", strings.Repeat("B", 100), "a.b", "a_b", "A"} {
		key, svc := ProbeKey(id), ProbeService(id)
		if errs := validation.IsDNS1035Label(svc); len(errs) > 0 {
			t.Errorf("ProbeService(%q) = %q: %v", id, svc, errs)
		}
		if errs := validation.IsDNS1123Label(key); len(errs) > 0 {
			t.Errorf("ProbeKey(%q) = %q, not a label value: %v", id, key, errs)
		}
		if other, dup := seen[svc]; dup {
			t.Errorf("%q and %q share %s", id, other, svc)
		}
		seen[svc] = id
	}
	if got := ProbeKey("Kubernetes"); !strings.HasPrefix(got, "kubernetes-") || len(got) != len("kubernetes-")+8 {
		t.Errorf("ProbeKey(Kubernetes) = %q", got)
	}
	if got := ProbeService(strings.Repeat("B", 100)); len(got) != 63 {
		t.Errorf("%q: %d characters", got, len(got))
	}
}
