package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/demoapp"
)

// ingressArea checks the ingress gateway: HTTP and HTTPS from outside
// to services of both clusters, and certificate renewal.
func ingressArea(t *testing.T, w *walkthrough) {
	e := w.e

	t.Run("ingress gateway: from the host, HTTP and HTTPS reach services of both clusters; a renewed certificate is served without a restart", func(t *testing.T) {
		gwPod := e.waitReady("cluster-eks", "istio-system", "istio=ingressgateway", 1)[0]
		if args := strings.Join(gwPod.Spec.Containers[0].Args, " "); args != "proxy router" {
			t.Fatalf("the ingress gateway runs %q", args)
		}
		lb := e.lbAddress(t, "cluster-eks", "istio-system", "istio-ingressgateway")
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
		// A policy that selects the gateway is enforced there, for every
		// spelling of the path; the rest of the gateway's routes go on.
		e.apply("cluster-eks", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-profile-from-outside, namespace: istio-system}\n"+
			"spec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [/profile]}}]\n")
		eventually(t, "the ingress gateway refuses /profile", func() bool { code, _, _ := get(client, "http://"+lb+"/profile?id=4", ""); return code == 403 })
		if code, _, _ := get(client, "http://"+lb+"/%70rofile?id=4", ""); code != 403 {
			t.Errorf("/%%70rofile through the ingress gateway: %d, want 403", code)
		}
		if code, _, _ := get(client, "http://"+lb+"/dashboard?id=4", ""); code != 200 {
			t.Errorf("/dashboard through the ingress gateway with the policy on /profile: %d, want 200", code)
		}
		e.kubectl("cluster-eks", "", "-n", "istio-system", "delete", "authorizationpolicy", "no-profile-from-outside")
		eventually(t, "/profile through the ingress gateway again", func() bool { code, _, _ := get(client, "http://"+lb+"/profile?id=4", ""); return code == 200 })

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
}
