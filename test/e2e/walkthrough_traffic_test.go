package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// profileVersions are profile's subsets: v1 answers in cluster-eks, v2
// in cluster-aks.
const profileVersions = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile-versions, namespace: multicluster}
spec:
  host: profile
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---`

// trafficArea checks VirtualService and DestinationRule across clusters:
// timeouts, retries, subsets, locality, hashing, failover, connection pools.
func trafficArea(t *testing.T, w *walkthrough) {
	e := w.e
	kc := w.kc
	sleepExec := func(script string) string { t.Helper(); return w.sleepExec(t, script) }
	servedBy := func(n int, args string) map[string]int { t.Helper(); return w.servedBy(t, n, args) }

	t.Run("VirtualService: a timeout cuts a fault delay short; retries hide a fault abort", func(t *testing.T) {
		vs := func(name, http string) string {
			return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: " + name + ", namespace: multicluster}\nspec:\n  hosts: [" + name + "]\n  http:\n" + http
		}
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "virtualservice", "profile", "dashboard")
		// dashboard's calls to profile wait 2 s; sleep's calls to dashboard give up after 0.5 s.
		e.apply("cluster-eks", vs("profile", "  - fault: {delay: {fixedDelay: 2s, percentage: {value: 100}}}\n    route: [{destination: {host: profile}}]\n")+
			"---\n"+vs("dashboard", "  - timeout: 500ms\n    route: [{destination: {host: dashboard}}]\n"))
		var got string
		eventually(t, "504 after about 0.5 s", func() bool {
			got = strings.TrimSpace(sleepExec("curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 10 http://dashboard:8080/dashboard?id=4"))
			var code int
			var secs float64
			fmt.Sscanf(got, "%d %f", &code, &secs)
			return code == 504 && secs > 0.4 && secs < 1.5
		})
		t.Logf("timeout: %s", got)
		// Half of dashboard's calls to profile abort (503, dashboard says
		// 502); sleep retries dashboard up to 4 times on 5xx.
		e.apply("cluster-eks", vs("profile", "  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n    route: [{destination: {host: profile}}]\n")+
			"---\n"+vs("dashboard", "  - retries: {attempts: 0}\n    route: [{destination: {host: dashboard}}]\n"))
		count := func() int {
			o := sleepExec("n=0; for i in $(seq 100); do c=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 http://dashboard:8080/dashboard?id=4); [ \"$c\" = 200 ] && n=$((n+1)); done; echo $n")
			n, _ := strconv.Atoi(strings.TrimSpace(o))
			return n
		}
		var without int
		eventually(t, "about half of the calls fail without retries", func() bool { without = count(); return without > 20 && without < 80 })
		e.apply("cluster-eks", vs("dashboard", "  - retries: {attempts: 4, retryOn: 5xx}\n    route: [{destination: {host: dashboard}}]\n"))
		var with int
		eventually(t, "retries hide the aborts", func() bool { with = count(); return with >= 90 })
		t.Logf("successes of 100: %d without retries, %d with 4 retries", without, with)
	})

	t.Run("VirtualService: a redirect, a direct response, a regex rewrite, header operations and CORS, carried out by sleep's sidecar", func(t *testing.T) {
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "virtualservice", "profile-answers")
		e.apply("cluster-eks", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: profile-answers, namespace: multicluster}
spec:
  hosts: [profile]
  http:
  - match: [{uri: {prefix: /old}}]
    redirect: {uri: /profile, redirectCode: 308}
  - match: [{uri: {exact: /gone}}]
    directResponse: {status: 410, body: {string: "profile moved away"}}
  - match: [{uri: {prefix: /api/}}]
    rewrite: {uriRegexRewrite: {match: "^/api/([a-z]+)$", rewrite: "/\\1"}}
    route: [{destination: {host: profile}}]
  - headers: {response: {set: {x-mesh: isthmus}, remove: [x-envoy-upstream-service-time]}}
    corsPolicy: {allowOrigins: [{exact: "https://app.example"}], allowMethods: [GET], maxAge: 10m}
    route: [{destination: {host: profile}, headers: {response: {add: {x-destination: profile}}}}]
`)
		eventually(t, "the redirect", func() bool {
			return strings.TrimSpace(sleepExec("curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://profile:8080/old?id=4")) == "308 http://profile:8080/profile?id=4"
		})
		if got := sleepExec("curl -s -w ' %{http_code}' http://profile:8080/gone"); strings.TrimSpace(got) != "profile moved away\n 410" && strings.TrimSpace(got) != "profile moved away 410" {
			t.Errorf("direct response: %q", got)
		}
		if as := answers(sleepExec("curl -sS http://profile:8080/api/profile?id=4")); len(as) != 1 {
			t.Errorf("/api/profile rewritten to /profile is answered by profile: %v", as)
		}
		if h := strings.ToLower(sleepExec("curl -sS -o /dev/null -D - http://profile:8080/profile?id=4")); !strings.Contains(h, "x-mesh: isthmus") || !strings.Contains(h, "x-destination: profile") {
			t.Errorf("the route's and the destination's response headers are not in the answer:\n%s", h)
		}
		pre := strings.ToLower(sleepExec("curl -sS -o /dev/null -D - -X OPTIONS -H 'Origin: https://app.example' -H 'Access-Control-Request-Method: GET' http://profile:8080/profile"))
		if !strings.HasPrefix(pre, "http/1.1 200") || !strings.Contains(pre, "access-control-allow-origin: https://app.example") || !strings.Contains(pre, "access-control-max-age: 600") {
			t.Errorf("the CORS preflight is not answered by sleep's sidecar:\n%s", pre)
		}
	})

	t.Run("subsets: a header sends calls to v2 (cluster-aks's profile), the rest to v1", func(t *testing.T) {
		e.apply("cluster-eks", profileVersions+`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: profile, namespace: multicluster}
spec:
  hosts: [profile]
  http:
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: profile, subset: v2}}]
  - route: [{destination: {host: profile, subset: v1}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule/profile-versions", "virtualservice/profile")
		eventually(t, "x-canary: yes answered by v2 in cluster-aks only", func() bool { return servedBy(10, "-H 'x-canary: yes'")["cluster-aks"] == 10 })
		eventually(t, "the rest answered by v1 in cluster-eks only", func() bool { return servedBy(10, "")["cluster-eks"] == 10 })
	})

	t.Run("VirtualService mirror: v1 in cluster-eks answers, v2 in cluster-aks gets a copy of each call through the east-west gateway", func(t *testing.T) {
		e.apply("cluster-eks", profileVersions+`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: profile, namespace: multicluster}
spec:
  hosts: [profile]
  http:
  - route: [{destination: {host: profile, subset: v1}}]
    mirror: {host: profile, subset: v2}
    mirrorPercentage: {value: 100}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule/profile-versions", "virtualservice/profile")
		eventually(t, "answered by v1 in cluster-eks only", func() bool { return servedBy(10, "")["cluster-eks"] == 10 })
		// The copies reach profile's sidecar in cluster-aks as sleep's
		// calls (its inbound metrics); nothing else calls it meanwhile.
		pod := w.pods(t, "cluster-aks", "profile")[0]
		fromSleep := func() float64 {
			n := 0.0
			for _, s := range series(w.scrape(t, "cluster-aks", pod, 15090, "/stats/prometheus"), "istio_requests_total") {
				if s.labels["reporter"] == "destination" && s.labels["source_canonical_service"] == "sleep" {
					n += s.value
				}
			}
			return n
		}
		time.Sleep(time.Second) // the copies of the calls above
		before := fromSleep()
		if by := servedBy(20, ""); by["cluster-eks"] != 20 {
			t.Fatalf("answers by cluster %v: want cluster-eks's v1 only", by)
		}
		var got float64
		eventually(t, "20 copies in cluster-aks", func() bool { got = fromSleep() - before; return got >= 20 })
		if got != 20 {
			t.Errorf("cluster-aks's profile got %v copies of 20 calls", got)
		}
	})

	t.Run("DestinationRule distribute: 80% of calls stay in us-east-1 (cluster-eks), 20% go to eastus (cluster-aks)", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile, namespace: multicluster}
spec:
  host: profile
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us-east-1/*
          to: {"us-east-1/*": 80, "eastus/*": 20}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule", "profile")
		var by map[string]int
		defer func() { t.Logf("distribute 80/20: %v", by) }()
		eventually(t, "about 80% of 200 calls answered in cluster-eks", func() bool {
			by = servedBy(200, "")
			return by["cluster-eks"] >= 140 && by["cluster-eks"] <= 180 && by["cluster-eks"]+by["cluster-aks"] == 200
		})
	})

	t.Run("DestinationRule h2UpgradePolicy UPGRADE: the sidecars speak HTTP/2 to each other, calls still reach both clusters", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile, namespace: multicluster}
spec:
  host: profile
  trafficPolicy:
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule", "profile")
		eventually(t, "sleep's cluster for profile says HTTP/2", func() bool {
			r := isthmus(t, time.Minute, append([]string{"proxy-config", "clusters", "deployment/sleep", "-n", "multicluster", "--context", "cluster-eks",
				"--fqdn", "profile.multicluster.svc.cluster.local", "-o", "json"}, kc...)...)
			return r.err == nil && strings.Contains(r.stdout, "http2ProtocolOptions")
		})
		by := servedBy(40, "")
		if by["cluster-eks"]+by["cluster-aks"] != 40 || by["cluster-eks"] == 0 || by["cluster-aks"] == 0 {
			t.Errorf("40 calls over HTTP/2 between sidecars, answered by cluster: %v", by)
		}
	})

	t.Run("DestinationRule consistentHash: a user's calls stick to one cluster, users spread over both", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile, namespace: multicluster}
spec:
  host: profile
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule", "profile")
		// Per user: the clusters that answered its 5 calls.
		users := func() map[string]map[string]bool {
			o := sleepExec(`for u in $(seq 12); do for i in $(seq 5); do echo "user$u $(curl -sS --max-time 5 -H "x-user: user$u" http://profile:8080/profile?id=4)"; done; done`)
			by := map[string]map[string]bool{}
			for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
				u, rest, _ := strings.Cut(l, " ")
				if as := answers(rest); len(as) == 1 {
					if by[u] == nil {
						by[u] = map[string]bool{}
					}
					by[u][as[0].ServedBy.Cluster] = true
				}
			}
			return by
		}
		var by map[string]map[string]bool
		defer func() { t.Logf("consistentHash, clusters by user: %v", by) }()
		eventually(t, "every user's calls answered by one cluster, both clusters used", func() bool {
			by = users()
			seen := map[string]bool{}
			for _, cs := range by {
				if len(cs) != 1 {
					return false
				}
				for c := range cs {
					seen[c] = true
				}
			}
			return len(by) == 12 && seen["cluster-eks"] && seen["cluster-aks"]
		})
	})

	t.Run("DestinationRule failover: calls stay in cluster-eks, fail over to cluster-aks when profile is gone there, and come back", func(t *testing.T) {
		// Istio's locality failover: with outlier detection, the local
		// region first, then the region the rule names.
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile, namespace: multicluster}
spec:
  host: profile
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        enabled: true
        failover: [{from: us-east-1, to: eastus}]
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule", "profile")
		// One line per call: the time and the cluster that answered, or "failed".
		calls := func(n int, pause string) [][2]string {
			o := sleepExec(fmt.Sprintf(`for i in $(seq %d); do r=$(curl -sS --max-time 2 http://profile:8080/profile?id=4 2>/dev/null | sed -n 's/.*"servedBy":{"cluster":"\([^"]*\)".*/\1/p'); echo "$(date +%%s.%%N) ${r:-failed}"; sleep %s; done`, n, pause))
			var out [][2]string
			for _, l := range strings.Split(strings.TrimSpace(o), "\n") {
				if f := strings.Fields(l); len(f) == 2 {
					out = append(out, [2]string{f[0], f[1]})
				}
			}
			return out
		}
		only := func(cs [][2]string, cluster string) bool {
			for _, c := range cs {
				if c[1] != cluster {
					return false
				}
			}
			return len(cs) > 0
		}
		eventually(t, "every call answered by the local cluster", func() bool { return only(calls(20, "0"), "cluster-eks") })
		if out, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "scale", "deployment/profile", "--replicas", "0"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		start := time.Now()
		cs := calls(60, "0.2")
		failed, lastLocal := 0, -1.0
		for _, c := range cs {
			at, _ := strconv.ParseFloat(c[0], 64)
			switch c[1] {
			case "failed":
				failed++
			case "cluster-eks":
				lastLocal = at - float64(start.UnixNano())/1e9
			}
		}
		t.Logf("after scaling cluster-eks's profile to 0: %d calls, %d failed, last answer from cluster-eks at %.1f s", len(cs), failed, lastLocal)
		if !only(cs[len(cs)/2:], "cluster-aks") {
			t.Errorf("the calls of the last 6 s were not all answered by cluster-aks: %v", cs[len(cs)/2:])
		}
		if lastLocal > 10 || failed > 3 {
			t.Errorf("failover took too long or failed too many calls: last local answer at %.1f s, %d failed", lastLocal, failed)
		}
		if out, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "scale", "deployment/profile", "--replicas", "1"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		e.waitReady("cluster-eks", "multicluster", "app=profile", 1)
		eventually(t, "calls back to the local cluster", func() bool { return only(calls(10, "0"), "cluster-eks") })
	})

	t.Run("connectionPool: calls beyond one connection and one pending request overflow with 503", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile-pool, namespace: multicluster}
spec:
  host: profile
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule", "profile-pool")
		// 8 calls at once, each held 1 s by profile: 2 fit, the rest overflow.
		burst := func() (ok, overflow int) {
			o := sleepExec("for i in $(seq 8); do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5 'http://profile:8080/profile?id=4&delay=1s' & done; wait")
			for _, c := range strings.Fields(o) {
				switch c {
				case "200":
					ok++
				case "503":
					overflow++
				}
			}
			return ok, overflow
		}
		var ok, overflow int
		eventually(t, "overflow under a burst", func() bool { ok, overflow = burst(); return overflow >= 4 && ok >= 1 })
		t.Logf("burst of 8: %d answered, %d overflowed", ok, overflow)
	})
}
