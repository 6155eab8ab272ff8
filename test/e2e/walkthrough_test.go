package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// examples holds the walkthrough's files, the seed's under their own names.
const examples = "../../examples/primary-remote-multinetwork"

// profileAnswer is what the demo's profile says about a call.
type profileAnswer struct {
	Name     string `json:"name"`
	ServedBy struct{ Cluster, Pod string }
	Caller   string `json:"callerXFCC"`
}

// answers parses one profile answer per line; other lines are skipped.
func answers(out string) []profileAnswer {
	var as []profileAnswer
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var a profileAnswer
		if json.Unmarshal([]byte(strings.TrimSpace(l)), &a) == nil && a.ServedBy.Cluster != "" {
			as = append(as, a)
		}
	}
	return as
}

// TestWalkthrough replays the seed's walkthrough on the sandbox with the
// seed's files (examples/primary-remote-multinetwork/replay.sh), then
// checks what the user of the seed checks, and more.
func TestWalkthrough(t *testing.T) {
	e := upSandbox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	replay := exec.CommandContext(ctx, "bash", filepath.Join(examples, "replay.sh"))
	replay.Env = append(os.Environ(), "ISTHMUS="+bin, "KUBECONFIG="+e.kubeconfig, "KUBECTL="+e.kubectlBin, "WORK="+t.TempDir())
	var out bytes.Buffer
	replay.Stdout, replay.Stderr = &out, &out
	start := time.Now()
	err := replay.Run()
	t.Logf("replay.sh (%s):\n%s", time.Since(start).Round(time.Second), out.String())
	if err != nil {
		t.Fatalf("replay.sh: %v", err)
	}
	for _, step := range []string{"1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "3.1", "3.2", "3.3", "4"} {
		if !strings.Contains(out.String(), "== Step "+step+":") {
			t.Errorf("replay.sh did not run step %s", step)
		}
	}
	kc := []string{"--kubeconfig", e.kubeconfig}
	sleepExec := func(script string) string {
		t.Helper()
		o, err := e.kubectl("cluster-eks", "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "sh", "-c", script)
		if err != nil {
			t.Fatalf("%v\n%s", err, o)
		}
		return o
	}
	// servedBy calls profile n times from sleep (args: curl's extra
	// arguments) and counts the answers by the cluster that served them.
	servedBy := func(n int, args string) map[string]int {
		by := map[string]int{}
		for _, a := range answers(sleepExec(fmt.Sprintf("for i in $(seq %d); do curl -sS --max-time 5 %s http://profile:8080/profile?id=4; echo; done", n, args))) {
			by[a.ServedBy.Cluster]++
		}
		return by
	}

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

	t.Run("ingress gateway: from the host, HTTP and HTTPS reach services of both clusters; a renewed certificate is served without a restart", func(t *testing.T) {
		gwPod := e.waitReady("cluster-eks", "istio-system", "istio=ingressgateway", 1)[0]
		if args := strings.Join(gwPod.Spec.Containers[0].Args, " "); args != "proxy router" {
			t.Fatalf("the ingress gateway runs %q", args)
		}
		var lb string
		eventually(t, "istio-ingressgateway has a load-balancer address", func() bool {
			svc, err := e.clients["cluster-eks"].CoreV1().Services("istio-system").Get(context.Background(), "istio-ingressgateway", metav1.GetOptions{})
			if err == nil && len(svc.Status.LoadBalancer.Ingress) > 0 {
				lb = svc.Status.LoadBalancer.Ingress[0].IP
			}
			return lb != ""
		})
		ca := newTestCA(t, "shop-ca", nil)
		secret := func(host string) string {
			certPEM, keyPEM := ca.serving(t, host)
			return fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: shop-cert, namespace: istio-system}\ntype: kubernetes.io/tls\ndata: {tls.crt: %s, tls.key: %s}\n",
				base64.StdEncoding.EncodeToString(certPEM), base64.StdEncoding.EncodeToString(keyPEM))
		}
		// bank.example.com: MUTUAL, clients need a certificate of the same CA.
		bankCert, bankKey := ca.serving(t, "bank.example.com")
		bankSecret := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: bank-cert, namespace: istio-system}\ntype: Opaque\ndata: {tls.crt: %s, tls.key: %s, ca.crt: %s}\n",
			base64.StdEncoding.EncodeToString(bankCert), base64.StdEncoding.EncodeToString(bankKey), base64.StdEncoding.EncodeToString(ca.pem))
		e.apply("cluster-eks", secret("shop.example.com")+"---\n"+bankSecret+`---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: multicluster}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 80, name: http-shop, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
  - port: {number: 443, name: https-bank, protocol: HTTPS}
    hosts: [bank.example.com]
    tls: {mode: MUTUAL, credentialName: bank-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: multicluster}
spec:
  hosts: ["*"]
  gateways: [web]
  http:
  - match: [{uri: {prefix: /dashboard}}]
    route: [{destination: {host: dashboard}}]
  - match: [{uri: {prefix: /profile}}]
    route: [{destination: {host: profile, port: {number: 8080}}}]
`)
		defer e.kubectl("cluster-eks", "", "delete", "-n", "multicluster", "gateway/web", "virtualservice/web")
		defer e.kubectl("cluster-eks", "", "delete", "-n", "istio-system", "secret/shop-cert", "secret/bank-cert")
		client := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		get := func(c *http.Client, url, host string) (int, string, http.Header) {
			req, _ := http.NewRequest("GET", url, nil)
			if host != "" {
				req.Host = host
			}
			resp, err := c.Do(req)
			if err != nil {
				return 0, err.Error(), nil
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b), resp.Header
		}
		var d struct {
			Name    string  `json:"name"`
			Balance float64 `json:"balance"`
		}
		var body string
		eventually(t, "http://"+lb+"/dashboard?id=4 answers from the host", func() bool {
			var code int
			code, body, _ = get(client, "http://"+lb+"/dashboard?id=4", "")
			return code == 200 && json.Unmarshal([]byte(body), &d) == nil && d.Name == demoapp.NameOf(4) && d.Balance == demoapp.BalanceOf(4)
		})
		by := map[string]int{}
		for range 40 {
			_, body, _ := get(client, "http://"+lb+"/profile?id=4", "")
			if as := answers(body); len(as) == 1 {
				by[as[0].ServedBy.Cluster]++
			} else {
				by["failed"]++
			}
		}
		t.Logf("40 calls to /profile from outside, by cluster: %v", by)
		if by["cluster-eks"] == 0 || by["cluster-aks"] == 0 || by["failed"] > 0 {
			t.Errorf("calls from outside should reach both clusters' profile: %v", by)
		}
		if code, _, h := get(client, "http://"+lb+"/dashboard?id=4", "shop.example.com"); code != 301 || h.Get("Location") != "https://shop.example.com/dashboard?id=4" {
			t.Errorf("httpsRedirect: %d to %q, want 301 to https://shop.example.com/dashboard?id=4", code, h.Get("Location"))
		}
		if code, _, _ := get(client, "http://"+lb+"/nowhere", ""); code != 404 {
			t.Errorf("a path no route matches: %d, want 404", code)
		}

		serial := func() (*big.Int, error) {
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lb+":443", &tls.Config{ServerName: "shop.example.com", RootCAs: ca.pool()})
			if err != nil {
				return nil, err
			}
			defer conn.Close()
			return conn.ConnectionState().PeerCertificates[0].SerialNumber, nil
		}
		// HTTP/2, as browsers and curl negotiate it; the apps behind speak HTTP/1.1.
		httpsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: ca.pool()}, ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, lb+":443")
			}}}
		eventually(t, "https://shop.example.com/dashboard?id=4 answers with the Secret's certificate", func() bool {
			code, body, _ := get(httpsClient, "https://shop.example.com/dashboard?id=4", "")
			return code == 200 && strings.Contains(body, demoapp.NameOf(4))
		})
		if resp, err := httpsClient.Get("https://shop.example.com/dashboard?id=4"); err != nil || resp.ProtoMajor != 2 {
			t.Errorf("the gateway over TLS: %v, %v; want HTTP/2 negotiated", resp, err)
		} else {
			resp.Body.Close()
		}
		first, err := serial()
		if err != nil {
			t.Fatal(err)
		}
		e.apply("cluster-eks", secret("shop.example.com"))
		var now *big.Int
		eventually(t, "the renewed certificate is served", func() bool {
			now, err = serial()
			return err == nil && now.Cmp(first) != 0
		})
		if code, _, _ := get(httpsClient, "https://shop.example.com/profile?id=4", ""); code != 200 {
			t.Errorf("after renewal: %d", code)
		}
		// MUTUAL: a client certificate of the CA gets in, none does not.
		mutual := func(cert []tls.Certificate) *http.Client {
			return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: ca.pool(), Certificates: cert},
				DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, network, lb+":443")
				}}}
		}
		clientPEM, clientKey := ca.serving(t, "client.example.com")
		clientCert, err := tls.X509KeyPair(clientPEM, clientKey)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "https://bank.example.com (MUTUAL) answers a client with a certificate", func() bool {
			code, body, _ := get(mutual([]tls.Certificate{clientCert}), "https://bank.example.com/dashboard?id=4", "")
			return code == 200 && strings.Contains(body, demoapp.NameOf(4))
		})
		if code, body, _ := get(mutual(nil), "https://bank.example.com/dashboard?id=4", ""); code != 0 {
			t.Errorf("MUTUAL without a client certificate: %d %s, want the handshake refused", code, body)
		}
		after, err := e.clients["cluster-eks"].CoreV1().Pods("istio-system").Get(context.Background(), gwPod.Name, metav1.GetOptions{})
		if err != nil || after.UID != gwPod.UID || after.Status.ContainerStatuses[0].RestartCount != gwPod.Status.ContainerStatuses[0].RestartCount {
			t.Errorf("the gateway restarted to serve the new certificate (%v)", err)
		}
		// The gateway's metrics speak Istio's names, reporter source.
		metrics, err := e.kubectl("cluster-eks", "", "get", "--raw", fmt.Sprintf("/api/v1/namespaces/istio-system/pods/%s:15090/proxy/stats/prometheus", gwPod.Name))
		if err != nil || !strings.Contains(metrics, `istio_requests_total{`) || !strings.Contains(metrics, `destination_service="dashboard.multicluster.svc.cluster.local"`) {
			t.Errorf("ingress gateway metrics (%v) lack dashboard's requests:\n%.2000s", err, metrics)
		}
	})

	t.Run("security: the control plane's trust boundary, attacked from sleep's pod and asked of the API servers", func(t *testing.T) {
		securityBoundary(t, e)
	})

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

	t.Run("subsets: a header sends calls to v2 (cluster-aks's profile), the rest to v1", func(t *testing.T) {
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile-versions, namespace: multicluster}
spec:
  host: profile
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
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

	t.Run("analyze: references across both clusters, findings named the Istio way", func(t *testing.T) {
		r := isthmus(t, time.Minute, append([]string{"analyze", "--context", "cluster-eks"}, kc...)...)
		if r.err != nil || !strings.Contains(r.stdout, "No validation issues found") || !strings.Contains(r.stdout, "cluster-aks") {
			t.Fatalf("the walkthrough's configuration: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		// v2 exists only in cluster-aks: fine. v3 exists nowhere; "profiles" is a typo.
		e.apply("cluster-eks", `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: profile-check, namespace: multicluster}
spec:
  host: profile
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: profile-check, namespace: multicluster}
spec:
  hosts: [profile-check]
  http:
  - route: [{destination: {host: profile, subset: v2}}, {destination: {host: profile, subset: v3}}, {destination: {host: profiles}}]
`)
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "destinationrule/profile-check", "virtualservice/profile-check")
		r = isthmus(t, time.Minute, append([]string{"analyze", "--context", "cluster-eks"}, kc...)...)
		var ee *exec.ExitError
		if !errors.As(r.err, &ee) || ee.ExitCode() != 79 {
			t.Errorf("exit %v, want 79 for errors found", r.err)
		}
		for _, want := range []string{
			`Error [IST0101] (VirtualService profile-check.multicluster) Referenced host+subset in destinationrule not found: "profile+v3"`,
			`Error [IST0101] (VirtualService profile-check.multicluster) Referenced host not found: "profiles"`,
			`Warning [IST0127] (DestinationRule profile-check.multicluster) Subset "v9" matches no pod`,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("analyze does not say %q:\n%s", want, r.stdout)
			}
		}
		if strings.Contains(r.stdout, `"v2"`) || strings.Contains(r.stdout, "profile+v2") {
			t.Errorf("subset v2 has pods in cluster-aks; analyze must see them:\n%s", r.stdout)
		}
		// Files: validated first (offline, the webhook's checks), then
		// analyzed over the clusters: a Gateway selecting no gateway pod.
		f := filepath.Join(t.TempDir(), "mistakes.yaml")
		os.WriteFile(f, []byte(`apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: nowhere, namespace: multicluster}
spec:
  selector: {istio: ingressgateway-typo}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: multicluster}
spec:
  hosts: [profile]
  http:
  - timeout: 5 seconds
    route: [{destination: {host: profile}}]
`), 0o644)
		r = isthmus(t, time.Minute, append([]string{"analyze", "-f", f, "--context", "cluster-eks"}, kc...)...)
		for _, want := range []string{
			`Error [IST0106] (VirtualService broken.multicluster) Schema validation error: spec.http[0].timeout:`,
			`Error [IST0101] (Gateway nowhere.multicluster) Referenced selector not found: "istio=ingressgateway-typo"`,
		} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("analyze -f does not say %q:\n%s", want, r.stdout)
			}
		}
		r = isthmus(t, time.Minute, "analyze", "-f", f, "--use-kube=false")
		if !strings.Contains(r.stdout, "IST0106") || strings.Contains(r.stdout, "IST0101") {
			t.Errorf("analyze -f --use-kube=false validates without the clusters:\n%s", r.stdout)
		}
	})

	t.Run("validation webhook: what Istio refuses is refused with the field named; the rest passes, unsupported fields with a warning", func(t *testing.T) {
		vs := func(http string) string {
			return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: check, namespace: multicluster}\nspec:\n  hosts: [profile]\n  http:\n" + http
		}
		ap := func(spec string) string {
			return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: check, namespace: multicluster}\nspec:\n" + spec
		}
		gw := func(servers string) string {
			return "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: check, namespace: multicluster}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n" + servers
		}
		dr := func(spec string) string {
			return "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: check, namespace: multicluster}\nspec:\n  host: profile\n" + spec
		}
		route := "    route: [{destination: {host: profile}}]\n"
		defer e.kubectl("cluster-eks", "", "-n", "multicluster", "delete", "--ignore-not-found", "virtualservice/check", "authorizationpolicy/check", "gateway/check", "destinationrule/check")
		refused := []struct{ doc, field string }{
			{vs("  - timeout: 5 seconds\n" + route), "timeout"},
			{vs("  - route: [{destination: {host: profile}, weight: -5}]\n"), "weight"},
			{vs("  - retries: {attempts: -1}\n" + route), "attempts"},
			{vs("  - retries: {attempts: 2, retryOn: \"5xx,sometimes\"}\n" + route), "spec.http[0].retries.retryOn"},
			{vs("  - fault: {abort: {httpStatus: 503, percentage: {value: 140}}}\n" + route), "percentage"},
			{vs("  - fault: {abort: {httpStatus: 99, percentage: {value: 10}}}\n" + route), "spec.http[0].fault.abort.httpStatus"},
			{vs("  - match: [{uri: {regex: \"(unclosed\"}}]\n" + route), "spec.http[0].match[0].uri.regex"},
			{"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: check, namespace: multicluster}\nspec:\n  hosts: [\"*\"]\n  http:\n  - route: [{destination: {host: profile}}]\n", "spec.hosts[0]"},
			{gw("  - port: {number: 80, name: http, protocol: HTTP}\n"), "hosts"},
			{gw("  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [shop.example.com]\n"), "spec.servers[0].tls"},
			{ap("  action: PERMIT\n"), "action"},
			{ap("  rules:\n  - from: [{source: {ipBlocks: [300.1.2.3]}}]\n"), "ipBlocks"},
			{ap("  rules:\n  - when: [{key: request.colour, values: [red]}]\n"), "spec.rules[0].when[0].key"},
			{dr("  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]\n"), "spec.subsets[1].name"},
			{dr("  trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}\n"), "maxEjectionPercent"},
		}
		// kubectl apply, stdout and stderr (warnings) together.
		apply := func(doc string) (string, error) {
			cmd := exec.Command(e.kubectlBin, "--kubeconfig", e.kubeconfig, "--context", "cluster-eks", "apply", "-f", "-")
			cmd.Stdin = strings.NewReader(doc)
			o, err := cmd.CombinedOutput()
			return string(o), err
		}
		for _, c := range refused {
			var o string
			var err error
			eventually(t, "the webhook answers", func() bool {
				o, err = apply(c.doc)
				return err != nil && !strings.Contains(o, "failed calling webhook")
			})
			if !strings.Contains(o, c.field) {
				t.Errorf("refusal does not name %s:\n%s\n%s", c.field, c.doc, o)
			}
			t.Logf("refused: %s", strings.TrimSpace(o))
		}
		// Istio normalizes weights that do not add up to 100: accepted.
		if o, err := apply(vs("  - route: [{destination: {host: profile}, weight: 30}, {destination: {host: profile}, weight: 30}]\n    timeout: 3s\n")); err != nil {
			t.Errorf("a valid VirtualService was refused: %v\n%s", err, o)
		}
		o, err := apply(vs("  - mirror: {host: profile}\n" + route))
		if err != nil || !strings.Contains(o, "spec.http[0].mirror: not supported by isthmus") {
			t.Errorf("an unsupported field is accepted with a warning naming it: %v\n%s", err, o)
		}
	})

	t.Run("bad install input is refused or warned about, by name", func(t *testing.T) {
		r := isthmus(t, time.Minute, append([]string{"install", "-f", filepath.Join(examples, "cluster-aks-remote.yaml"), "--context", "cluster-aks", "-y"}, kc...)...)
		if r.err == nil || !strings.Contains(r.stderr, "values.global.remotePilotAddress") {
			t.Errorf("a remote profile without an address: %v %s", r.err, r.stderr)
		}
		f := filepath.Join(t.TempDir(), "op.yaml")
		os.WriteFile(f, []byte("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: minimal\n  values:\n    global:\n      logAsJson: true\n"), 0o644)
		r = isthmus(t, time.Minute, "manifest", "generate", "-f", f)
		if r.err != nil || !strings.Contains(r.stderr, "spec.values.global.logAsJson: not supported") {
			t.Errorf("an unknown field: %v %s", r.err, r.stderr)
		}
	})

	t.Run("uninstall removes a gateway and install brings it back", func(t *testing.T) {
		gwFile := filepath.Join(examples, "east-west-gateway-cluster-aks.yaml")
		if r := isthmus(t, time.Minute, append([]string{"uninstall", "-f", gwFile, "--context", "cluster-aks", "-y"}, kc...)...); r.err != nil {
			t.Fatal(r.err)
		}
		if _, err := e.clients["cluster-aks"].AppsV1().Deployments("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{}); err == nil {
			t.Error("the gateway Deployment is still there")
		}
		if r := isthmus(t, 5*time.Minute, append([]string{"install", "-f", gwFile, "--context", "cluster-aks", "-y"}, kc...)...); r.err != nil {
			t.Fatal(r.err)
		}
	})
}
