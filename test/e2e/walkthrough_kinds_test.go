package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// strictWithSleeps makes mTLS STRICT mesh-wide and adds a sleep in
// cluster-aks, as the walkthrough's in cluster-eks; the function it
// returns undoes both.
func (w *walkthrough) strictWithSleeps(t *testing.T) func() {
	e := w.e
	e.apply("cluster-aks", `apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep, namespace: multicluster}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep, namespace: multicluster}
spec:
  selector: {matchLabels: {app: sleep}}
  template:
    metadata: {labels: {app: sleep}}
    spec:
      serviceAccountName: sleep
      terminationGracePeriodSeconds: 0
      containers:
      - {name: sleep, image: curlimages/curl, command: [sleep, infinity]}
`)
	if out, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "rollout", "status", "deployment/sleep", "--timeout=120s"); err != nil {
		t.Fatalf("sleep in cluster-aks: %v\n%s", err, out)
	}
	e.apply("cluster-eks", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n")
	return func() {
		e.kubectl("cluster-eks", "", "-n", "istio-system", "delete", "peerauthentication", "default")
		e.kubectl("cluster-aks", "", "-n", "multicluster", "delete", "deployment/sleep", "serviceaccount/sleep")
	}
}

// sleepCalls calls url n times from sleep in a cluster and returns the
// demo app's answers.
func (w *walkthrough) sleepCalls(t *testing.T, from, url string, n int) []profileAnswer {
	out, err := w.e.kubectl(from, "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
		fmt.Sprintf("for i in $(seq %d); do curl -sS --max-time 5 %s; echo; done", n, url))
	if err != nil {
		t.Logf("from %s: %v\n%s", from, err, out)
	}
	return answers(out)
}

// installPrimary installs cluster-eks again as the walkthrough did, with
// --set values (none: back to the walkthrough's own); the control plane
// restarts with a changed mesh config.
func (w *walkthrough) installPrimary(t *testing.T, sets ...string) {
	t.Helper()
	w.installPrimaryWith(t, nil, sets...)
}

// installPrimaryWith is installPrimary with more IstioOperator files
// over the walkthrough's.
func (w *walkthrough) installPrimaryWith(t *testing.T, files []string, sets ...string) {
	t.Helper()
	args := []string{"install", "-f", filepath.Join(examples, "cluster-eks-primary.yaml")}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	args = append(args, "--set", "hub="+walkthroughHub, "--set", "tag=e2e")
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	if r := isthmus(t, 5*time.Minute, append(append(args, "--context", "cluster-eks", "-y"), w.kc...)...); r.err != nil {
		t.Fatalf("install %v %v: %v\n%s", files, sets, r.err, r.stderr)
	}
}

// kindsArea: services that are not the walkthrough's HTTP ones, present in
// both clusters, called from a sleep in each cluster under STRICT mTLS
// mesh-wide (STRICT refuses plaintext, so every answer came over mTLS).
func kindsArea(t *testing.T, w *walkthrough) {
	e := w.e
	defer w.strictWithSleeps(t)()
	clients := []string{"cluster-eks", "cluster-aks"}
	// calls counts the answers to n calls of url from sleep in a cluster
	// by the cluster that served them.
	calls := func(t *testing.T, from, url string, n int) map[string]int {
		by := map[string]int{}
		for _, a := range w.sleepCalls(t, from, url, n) {
			by[a.ServedBy.Cluster]++
		}
		return by
	}

	t.Run("a TCP port, a port named without a protocol and an unnamed port (both sniffed) of a service in both clusters are answered by both clusters, from each", func(t *testing.T) {
		svcs := `apiVersion: v1
kind: Service
metadata: {name: profile-tcp, namespace: multicluster}
spec:
  selector: {app: profile}
  ports:
  - {name: tcp-web, port: 9080, targetPort: 8080}
  - {name: web, port: 9081, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: profile-unnamed, namespace: multicluster}
spec:
  selector: {app: profile}
  ports:
  - {port: 9082, targetPort: 8080}
`
		for _, c := range clients {
			e.apply(c, svcs)
			defer e.kubectl(c, "", "-n", "multicluster", "delete", "service", "profile-tcp", "profile-unnamed")
		}
		for _, from := range clients {
			for _, url := range []string{"http://profile-tcp:9080/profile?id=4", "http://profile-tcp:9081/profile?id=4", "http://profile-unnamed:9082/profile?id=4"} {
				var by map[string]int
				// Each sidecar listens on its own cluster's ClusterIP of
				// the service (the pod's DNS gives it its cluster's).
				eventually(t, fmt.Sprintf("%s answered by both clusters from %s", url, from), func() bool {
					by = calls(t, from, url, 40)
					return by["cluster-eks"] > 0 && by["cluster-aks"] > 0
				})
				t.Logf("from %s, %s: %v", from, url, by)
			}
		}
	})

	t.Run("with DNS capture a service that exists only in the other cluster, and a ServiceEntry host outside the mesh, resolve and answer, from each cluster; without it the names do not resolve", func(t *testing.T) {
		// Outside the mesh: the sandbox's registry on the internet segment,
		// under a name of the ServiceEntry's; the control plane gives it an
		// address of its own (240.240/16) for the name table.
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: registry, namespace: multicluster}
spec:
  hosts: [registry.example.test]
  location: MESH_EXTERNAL
  ports: [{number: 5000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 198.18.0.2}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "serviceentry", "registry")
		for _, c := range []struct{ from, to string }{{"cluster-eks", "cluster-aks"}, {"cluster-aks", "cluster-eks"}} {
			only := "profile-only-" + strings.TrimPrefix(c.to, "cluster-")
			e.apply(c.to, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: multicluster}
spec:
  selector: {app: profile}
  ports:
  - {name: http, port: 8080}
`, only))
			defer e.kubectl(c.to, "", "-n", "multicluster", "delete", "service", only)
			// Istio's per-workload switch: proxyMetadata in proxy.istio.io/config.
			e.apply(c.from, `apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep-dns, namespace: multicluster}
spec:
  selector: {matchLabels: {app: sleep-dns}}
  template:
    metadata:
      labels: {app: sleep-dns}
      annotations:
        proxy.istio.io/config: |
          proxyMetadata:
            ISTIO_META_DNS_CAPTURE: "true"
    spec:
      serviceAccountName: sleep
      terminationGracePeriodSeconds: 0
      containers:
      - {name: sleep, image: curlimages/curl, command: [sleep, infinity]}
`)
			defer e.kubectl(c.from, "", "-n", "multicluster", "delete", "deployment/sleep-dns")
			if out, err := e.kubectl(c.from, "", "-n", "multicluster", "rollout", "status", "deployment/sleep-dns", "--timeout=120s"); err != nil {
				t.Fatalf("sleep-dns in %s: %v\n%s", c.from, err, out)
			}
			exec := func(deploy, script string) (string, error) {
				return e.kubectl(c.from, "", "-n", "multicluster", "exec", "deploy/"+deploy, "-c", "sleep", "--", "sh", "-c", script)
			}
			var by map[string]int
			eventually(t, fmt.Sprintf("%s answered from sleep-dns in %s", only, c.from), func() bool {
				out, _ := exec("sleep-dns", fmt.Sprintf("for i in $(seq 5); do curl -sS --max-time 5 http://%s:8080/profile?id=4; echo; done", only))
				by = map[string]int{}
				for _, a := range answers(out) {
					by[a.ServedBy.Cluster]++
				}
				return by[c.to] == 5
			})
			t.Logf("%s from %s: %v", only, c.from, by)
			// A service of both clusters, by its full name, resolves as before.
			if out, err := exec("sleep-dns", "curl -sS -o /dev/null -w '%{http_code}' --max-time 5 http://profile.multicluster.svc.cluster.local:8080/profile?id=4"); err != nil || out != "200" {
				t.Errorf("profile by its full name from sleep-dns in %s: %v %q", c.from, err, out)
			}
			if out, err := exec("sleep", fmt.Sprintf("curl -sS --max-time 5 http://%s:8080/profile?id=4", only)); err == nil || !strings.Contains(fmt.Sprint(err)+out, "Could not resolve") {
				t.Errorf("without DNS capture %s should not resolve in %s: %v %q", only, c.from, err, out)
			}
			var code string
			eventually(t, "registry.example.test (a ServiceEntry) answered from sleep-dns in "+c.from, func() bool {
				code, _ = exec("sleep-dns", "curl -sS -o /dev/null -w '%{http_code}' --max-time 5 http://registry.example.test:5000/v2/")
				return code == "200"
			})
			addr, _ := exec("sleep-dns", "getent hosts registry.example.test || nslookup registry.example.test")
			if !strings.Contains(addr, "240.240.") {
				t.Errorf("registry.example.test resolved to %q in %s, want the address the control plane allocated (240.240/16)", addr, c.from)
			}
		}
	})

	// A headless service's name resolves, in each cluster, to that
	// cluster's pods: each sidecar has a listener per pod of its network
	// and connects to the pod the client chose, over mTLS. The other
	// network's pods are not reachable by address (Istio the same).
	for _, tc := range []struct{ kind, port string }{
		{"TCP", "tcp-web"},
		{"HTTP", "http-web"},
	} {
		t.Run(fmt.Sprintf("a headless service with an %s port in both clusters answers from each cluster by that cluster's pods", tc.kind), func(t *testing.T) {
			svc := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: profile-headless, namespace: multicluster}
spec:
  clusterIP: None
  selector: {app: profile}
  ports:
  - {name: %s, port: 8080}
`, tc.port)
			for _, c := range clients {
				e.apply(c, svc)
			}
			defer func() {
				for _, c := range clients {
					e.kubectl(c, "", "-n", "multicluster", "delete", "service", "profile-headless", "--wait")
				}
			}()
			for _, from := range clients {
				var by map[string]int
				eventually(t, fmt.Sprintf("profile-headless (%s) answered from %s by its own pods", tc.kind, from), func() bool {
					by = calls(t, from, "http://profile-headless:8080/profile?id=4", 10)
					return by[from] == 10
				})
				t.Logf("from %s: %v", from, by)
			}
			if tc.kind == "TCP" {
				out, _ := e.kubectl("cluster-eks", "", "-n", "multicluster", "get", "pods", "-l", "app=profile", "-o", "jsonpath={.items[*].status.podIP}")
				r := isthmus(t, time.Minute, append([]string{"proxy-config", "listeners", "deployment/sleep", "-n", "multicluster", "--context", "cluster-eks"}, w.kc...)...)
				for _, ip := range strings.Fields(out) {
					if !strings.Contains(r.stdout, ip) {
						t.Errorf("sleep's sidecar has no listener on profile pod %s:\n%s", ip, r.stdout)
					}
				}
			}
		})
	}

	t.Run("a Sidecar scopes sleep's sidecar in each cluster to its egress hosts and makes it REGISTRY_ONLY: the API server (default namespace) and an address outside the mesh are refused, profile answers, kube-dns's cluster is gone; deleted, all is back", func(t *testing.T) {
		// code is the HTTP status of a call from sleep in a cluster (000:
		// no HTTP answer).
		code := func(from, url string) string {
			out, _ := e.kubectl(from, "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url)
			return strings.TrimSpace(out)
		}
		clusters := func(from string) string {
			return isthmus(t, time.Minute, append([]string{"proxy-config", "clusters", "deployment/sleep", "-n", "multicluster", "--context", from}, w.kc...)...).stdout
		}
		api := "https://kubernetes.default.svc/version"
		const unknown = "http://198.18.0.2:5000/v2/" // the registry by address: no service has it
		for _, from := range clients {
			if c := code(from, api); c == "000" {
				t.Fatalf("the API server from sleep in %s before any Sidecar: %s, want an HTTP answer", from, c)
			}
			if c := code(from, unknown); c != "200" {
				t.Fatalf("an address outside the mesh from sleep in %s before any Sidecar: %s, want 200 (ALLOW_ANY)", from, c)
			}
		}
		// In the primary, for the namespace in every cluster, as Istio.
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: sleep, namespace: multicluster}
spec:
  workloadSelector: {labels: {app: sleep}}
  egress: [{hosts: ["./*", "istio-system/*"]}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
`)
		deleted := false
		defer func() {
			if !deleted {
				e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "sidecar", "sleep")
			}
		}()
		for _, from := range clients {
			eventually(t, "the API server refused from sleep in "+from+" (out of its Sidecar's scope, REGISTRY_ONLY)", func() bool { return code(from, api) == "000" })
			if c := code(from, "http://profile:8080/profile?id=4"); c != "200" {
				t.Errorf("profile (in scope) from sleep in %s: %s, want 200", from, c)
			}
			if c := code(from, unknown); c != "000" {
				t.Errorf("an address outside the mesh from sleep in %s with its Sidecar: %s, want no answer (REGISTRY_ONLY: BlackHoleCluster)", from, c)
			}
			if out := clusters(from); strings.Contains(out, "kube-dns.kube-system") || !strings.Contains(out, "profile.multicluster") {
				t.Errorf("sleep's clusters in %s with its Sidecar (no kube-dns, profile there):\n%s", from, out)
			}
		}
		e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "sidecar", "sleep")
		deleted = true
		for _, from := range clients {
			eventually(t, "the API server answering sleep in "+from+" again without the Sidecar", func() bool { return code(from, api) != "000" })
			if out := clusters(from); !strings.Contains(out, "kube-dns.kube-system") {
				t.Errorf("sleep's clusters in %s without its Sidecar have no kube-dns:\n%s", from, out)
			}
		}
	})

	t.Run("a Sidecar's ingress listener serves a port no container listens on, forwarding to its defaultEndpoint, in both clusters", func(t *testing.T) {
		svc := "apiVersion: v1\nkind: Service\nmetadata: {name: profile-ingress, namespace: multicluster}\nspec:\n  selector: {app: profile}\n  ports: [{name: http, port: 9999}]\n"
		for _, c := range clients {
			e.apply(c, svc)
			defer e.kubectl(c, "", "-n", "multicluster", "delete", "service", "profile-ingress")
		}
		// Without the Sidecar, 9999 goes to 127.0.0.1:9999, where nothing listens.
		if by := calls(t, "cluster-eks", "http://profile-ingress:9999/profile?id=4", 4); len(by) != 0 {
			t.Fatalf("profile-ingress answered before any Sidecar: %v", by)
		}
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: profile, namespace: multicluster}
spec:
  workloadSelector: {labels: {app: profile}}
  ingress:
  - {port: {number: 9999, protocol: HTTP, name: http-alt}, defaultEndpoint: "127.0.0.1:8080"}
  - {port: {number: 8080, protocol: HTTP, name: http}, defaultEndpoint: "127.0.0.1:8080"}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "sidecar", "profile")
		for _, from := range clients {
			var by map[string]int
			eventually(t, "profile-ingress:9999 answered by both clusters from "+from, func() bool {
				by = calls(t, from, "http://profile-ingress:9999/profile?id=4", 20)
				return by["cluster-eks"] > 0 && by["cluster-aks"] > 0
			})
			t.Logf("from %s: %v", from, by)
		}
	})

	t.Run("REGISTRY_ONLY (an install that changes meshConfig rolls the control plane): a request for a host the mesh does not know gets 502, one for a ServiceEntry host is answered; ALLOW_ANY again after", func(t *testing.T) {
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: registry, namespace: multicluster}
spec:
  hosts: [registry.example.test]
  ports: [{number: 5000, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 198.18.0.2}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "serviceentry", "registry")
		install := func(sets ...string) { w.installPrimary(t, sets...) }
		code := func(from, args string) string {
			out, _ := e.kubectl(from, "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c",
				"curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "+args)
			return out
		}
		const unknown = "http://198.18.0.2:5000/v2/"                                     // the registry by address: no service has that name
		const known = "-H 'Host: registry.example.test:5000' http://198.18.0.2:5000/v2/" // the ServiceEntry's host
		for _, from := range clients {
			eventually(t, "ALLOW_ANY: an unknown host passes through from "+from, func() bool { return code(from, unknown) == "200" })
		}
		install("meshConfig.outboundTrafficPolicy.mode=REGISTRY_ONLY")
		restored := false
		defer func() {
			if !restored {
				install()
			}
		}()
		for _, from := range clients {
			eventually(t, "REGISTRY_ONLY: 502 for an unknown host from "+from, func() bool { return code(from, unknown) == "502" })
			if got := code(from, known); got != "200" {
				t.Errorf("REGISTRY_ONLY: the ServiceEntry host from %s: %s, want 200", from, got)
			}
		}
		install()
		restored = true
		for _, from := range clients {
			eventually(t, "ALLOW_ANY again from "+from, func() bool { return code(from, unknown) == "200" })
		}
	})
}
