package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// policyArea checks mesh-wide STRICT mTLS and AuthorizationPolicy in
// both clusters.
func policyArea(t *testing.T, w *walkthrough) {
	e := w.e
	sleepExec := func(script string) string { t.Helper(); return w.sleepExec(t, script) }

	t.Run("STRICT mTLS mesh-wide: plaintext from outside the mesh is refused in both clusters; mesh calls and probes go on", func(t *testing.T) {
		const client = "apiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: curl, namespace: outside}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{name: curl, image: curlimages/curl, command: [sleep, infinity]}]\n"
		plaintext := func(cluster string) error {
			o, err := e.kubectl(cluster, "", "-n", "outside", "exec", "curl", "--", "curl", "-sS", "--max-time", "3", "http://profile.multicluster:8080/profile?id=1")
			if err == nil && !strings.Contains(o, "servedBy") {
				return fmt.Errorf("answer %q", o)
			}
			return err
		}
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			e.apply(c, client)
			e.waitReady(c, "outside", "", 1)
			if err := plaintext(c); err != nil {
				t.Fatalf("PERMISSIVE (the default): plaintext from outside the mesh in %s: %v", c, err)
			}
		}
		// In the primary's root namespace: the mesh's config cluster.
		e.apply("cluster-eks", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n")
		defer e.kubectl("cluster-eks", "", "-n", "istio-system", "delete", "peerauthentication", "default")
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			eventually(t, "plaintext refused by profile in "+c, func() bool { return plaintext(c) != nil })
		}
		seen := map[string]bool{}
		eventually(t, "sleep still reaches profile in both clusters", func() bool {
			var a profileAnswer
			if json.Unmarshal([]byte(sleepExec("curl -sS --max-time 5 http://profile:8080/profile?id=4")), &a) == nil && strings.Contains(a.Caller, sleepID) {
				seen[a.ServedBy.Cluster] = true
			}
			return seen["cluster-eks"] && seen["cluster-aks"]
		})
		// Probes are rewritten to the proxy's 15020, so pods stay ready
		// (unready would show after 3 failed probes, 6 s).
		time.Sleep(8 * time.Second)
		for cluster, n := range map[string]int{"cluster-eks": 4, "cluster-aks": 1} {
			e.waitReady(cluster, "multicluster", "", n)
		}
	})

	t.Run("AuthorizationPolicy: DENY sleep to accounts; ALLOW only sleep on profile, enforced in both clusters", func(t *testing.T) {
		code := func(url string) string {
			return strings.TrimSpace(sleepExec("curl -s -o /dev/null -w '%{http_code}' --max-time 5 " + url))
		}
		e.apply("cluster-eks", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: multicluster}
spec:
  selector: {matchLabels: {app: accounts}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/multicluster/sa/sleep]}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "authorizationpolicy", "deny-sleep", "profile-readers")
		eventually(t, "sleep -> accounts refused with 403", func() bool { return code("http://accounts:8080/accounts?id=4") == "403" })
		if c := code("http://dashboard:8080/dashboard?id=4"); c != "200" {
			t.Errorf("dashboard (which calls accounts as its own identity): %s, want 200", c)
		}
		e.apply("cluster-eks", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: profile-readers, namespace: multicluster}
spec:
  selector: {matchLabels: {app: profile}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/multicluster/sa/sleep]}}]
`)
		var codes []string
		eventually(t, "dashboard's calls to profile refused in both clusters", func() bool {
			codes = codes[:0]
			for range 6 {
				codes = append(codes, code("http://dashboard:8080/dashboard?id=4"))
			}
			return !slices.Contains(codes, "200")
		})
		t.Logf("dashboard with profile-readers: %v", codes)
		seen := map[string]bool{}
		eventually(t, "sleep still allowed by profile in both clusters", func() bool {
			var a profileAnswer
			if json.Unmarshal([]byte(sleepExec("curl -sS --max-time 5 http://profile:8080/profile?id=4")), &a) == nil {
				seen[a.ServedBy.Cluster] = true
			}
			return seen["cluster-eks"] && seen["cluster-aks"]
		})
		// AUDIT marks dashboard's calls to accounts and refuses nothing.
		e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "authorizationpolicy", "deny-sleep", "profile-readers")
		e.apply("cluster-eks", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-accounts, namespace: multicluster}
spec:
  selector: {matchLabels: {app: accounts}}
  action: AUDIT
  rules:
  - from: [{source: {principals: [cluster.local/ns/multicluster/sa/dashboard]}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "authorizationpolicy", "audit-accounts")
		accounts := e.waitReady("cluster-eks", "multicluster", "app=accounts", 1)[0]
		logged := func() string {
			m, _ := e.kubectl("cluster-eks", "", "get", "--raw", fmt.Sprintf("/api/v1/namespaces/multicluster/pods/%s:15090/proxy/stats/prometheus", accounts.Name))
			for _, l := range strings.Split(m, "\n") {
				if strings.HasPrefix(l, "envoy_http_rbac_logged_allowed ") {
					return strings.TrimPrefix(l, "envoy_http_rbac_logged_allowed ")
				}
			}
			return ""
		}
		eventually(t, "accounts' proxy counts audited calls while answering them", func() bool {
			return code("http://dashboard:8080/dashboard?id=4") == "200" && logged() != "" && logged() != "0"
		})
	})

	t.Run("a DENY on a path holds however the path is spelled, and the app receives the normalized path, in both clusters", func(t *testing.T) {
		// --path-as-is: curl would resolve dot segments itself.
		code := func(path string) string {
			return strings.TrimSpace(sleepExec("curl -s --path-as-is -o /dev/null -w '%{http_code}' --max-time 5 'http://profile:8080" + path + "'"))
		}
		e.apply("cluster-eks", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-healthz, namespace: multicluster}
spec:
  selector: {matchLabels: {app: profile}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/healthz]}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "authorizationpolicy", "no-healthz")
		eventually(t, "/healthz refused", func() bool { return code("/healthz") == "403" })
		for _, spelled := range []string{"/healthz", "/%68ealthz", "/%68%65%61%6C%74%68%7A", "/./healthz", "/x/../healthz", "/%2e%2e/healthz", "/healthz?probe=1"} {
			var got []string
			for range 6 { // spread over both clusters' profile
				got = append(got, code(spelled))
			}
			if slices.ContainsFunc(got, func(c string) bool { return c != "403" }) {
				t.Errorf("%s: %v, want 403 from every profile", spelled, got)
			}
		}
		if c := code("/x%00"); c != "400" {
			t.Errorf("a path with %%00: %s, want 400", c)
		}
		// Normalized, not refused: /%70rofile reaches the app as /profile.
		seen := map[string]bool{}
		eventually(t, "/%70rofile?id=4 answered by profile in both clusters", func() bool {
			var a profileAnswer
			if json.Unmarshal([]byte(sleepExec("curl -sS --max-time 5 'http://profile:8080/%70rofile?id=4'")), &a) == nil {
				seen[a.ServedBy.Cluster] = true
			}
			return seen["cluster-eks"] && seen["cluster-aks"]
		})
	})

	t.Run("authorization fails closed: an ALLOW rule on what isthmus does not enforce (connection.sni) lets nobody in, in both clusters, and kubectl says so", func(t *testing.T) {
		code := func(url string) string {
			return strings.TrimSpace(sleepExec("curl -s -o /dev/null -w '%{http_code}' --max-time 5 " + url))
		}
		out := e.applyWarned("cluster-eks", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sni-only, namespace: multicluster}
spec:
  selector: {matchLabels: {app: profile}}
  action: ALLOW
  rules:
  - when: [{key: connection.sni, values: [profile.example]}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "authorizationpolicy", "sni-only")
		if !strings.Contains(out, "allows nothing") {
			t.Errorf("the apply did not say what becomes of the rule: %q", out)
		}
		var codes []string
		eventually(t, "every call to profile refused", func() bool {
			codes = codes[:0]
			for range 6 {
				codes = append(codes, code("http://profile:8080/profile?id=4"))
			}
			return !slices.ContainsFunc(codes, func(c string) bool { return c != "403" })
		})
	})

	t.Run("RequestAuthentication: the control plane fetches the issuer's keys; a valid JWT opens an ALLOW on requestPrincipals in both clusters, a bad one gets 401, none 403", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: v1
kind: Namespace
metadata: {name: jwt-issuer}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: issuer, namespace: jwt-issuer}
spec:
  selector: {matchLabels: {app: issuer}}
  template:
    metadata: {labels: {app: issuer}}
    spec:
      containers:
      - name: issuer
        image: isthmus/demo-app
        args: [issuer, --issuer, https://issuer.demo.isthmus]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: issuer, namespace: jwt-issuer}
spec:
  selector: {app: issuer}
  ports: [{name: http, port: 8080}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: profile-jwt, namespace: multicluster}
spec:
  selector: {matchLabels: {app: profile}}
  jwtRules:
  - issuer: https://issuer.demo.isthmus
    jwksUri: http://issuer.jwt-issuer.svc.cluster.local:8080/jwks.json
    audiences: [profile]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: alice-only, namespace: multicluster}
spec:
  selector: {matchLabels: {app: profile}}
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: [https://issuer.demo.isthmus/alice]}}]
`)
		defer e.kubectl("cluster-eks", "", "delete", "namespace", "jwt-issuer")
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "requestauthentication/profile-jwt", "authorizationpolicy/alice-only")
		e.waitReady("cluster-eks", "jwt-issuer", "app=issuer", 1)
		mint := func(query string) string {
			var tok string
			ok := eventuallyOK(func() bool {
				tok = strings.TrimSpace(sleepExec("curl -sS --max-time 5 'http://issuer.jwt-issuer:8080/token?" + query + "' 2>&1"))
				return strings.Count(tok, ".") == 2
			})
			if !ok {
				logs, _ := e.kubectl("cluster-eks", "", "-n", "istio-system", "logs", "deploy/istiod", "--tail", "40")
				pods, _ := e.kubectl("cluster-eks", "", "-n", "jwt-issuer", "get", "pods,endpoints", "-o", "wide")
				eps := isthmus(t, time.Minute, append([]string{"proxy-config", "endpoints", "deployment/sleep", "-n", "multicluster", "--context", "cluster-eks",
					"--cluster", "outbound|8080||issuer.jwt-issuer.svc.cluster.local"}, w.kc...)...)
				cls := isthmus(t, time.Minute, append([]string{"proxy-config", "clusters", "deployment/sleep", "-n", "multicluster", "--context", "cluster-eks",
					"--fqdn", "issuer.jwt-issuer.svc.cluster.local"}, w.kc...)...)
				t.Fatalf("the issuer minted no token: last answer %q\ncontrol plane:\n%s\n%s\nsleep's endpoints: %s %s\nsleep's cluster: %s", tok, logs, pods, eps.stdout, eps.stderr, cls.stdout)
			}
			return tok
		}
		alice, bob, expired := mint("sub=alice&aud=profile"), mint("sub=bob&aud=profile"), mint("sub=alice&aud=profile&ttl=-1h")
		code := func(auth string) string {
			h := ""
			if auth != "" {
				h = "-H 'Authorization: Bearer " + auth + "' "
			}
			return strings.TrimSpace(sleepExec("curl -s -o /dev/null -w '%{http_code}' --max-time 5 " + h + "http://profile:8080/profile?id=4"))
		}
		seen := map[string]bool{}
		last := ""
		if !eventuallyOK(func() bool {
			var a profileAnswer
			last = sleepExec("curl -sS --max-time 5 -H 'Authorization: Bearer " + alice + "' http://profile:8080/profile?id=4")
			if json.Unmarshal([]byte(last), &a) == nil {
				seen[a.ServedBy.Cluster] = true
			}
			return seen["cluster-eks"] && seen["cluster-aks"]
		}) {
			logs, _ := e.kubectl("cluster-eks", "", "-n", "istio-system", "logs", "deploy/istiod", "--tail", "30")
			t.Fatalf("alice's token was not answered by profile in both clusters (%v); last answer %q\ncontrol plane:\n%s", seen, last, logs)
		}
		for _, tc := range []struct{ name, auth, want string }{
			{"no token", "", "403"},
			{"bob's token", bob, "403"},
			{"an expired token", expired, "401"},
			{"a token signed by nobody known", "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lzc3Vlci5kZW1vLmlzdGhtdXMiLCJzdWIiOiJhbGljZSJ9.c2ln", "401"},
		} {
			var got []string
			for range 6 {
				got = append(got, code(tc.auth))
			}
			if slices.ContainsFunc(got, func(c string) bool { return c != tc.want }) {
				t.Errorf("%s: %v, want %s from every profile", tc.name, got, tc.want)
			}
		}
	})
}
