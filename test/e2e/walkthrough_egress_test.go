package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// egressArea: Istio's "egress gateway with TLS origination" task, in
// each cluster. An HTTPS server outside the mesh (a machine on the
// internet segment, its certificate from a CA of its own) is called by
// sleep over plain HTTP; the mesh sends the call to its cluster's egress
// gateway, installed from an IstioOperator file, which originates TLS to
// the server through a DestinationRule (credentialName: the CA, sent to
// gateways only).
func egressArea(t *testing.T, w *walkthrough) {
	e := w.e
	defer w.strictWithSleeps(t)()
	clients := []string{"cluster-eks", "cluster-aks"}
	const host, name = "secure.example.test", "ext-1"
	addr := "198.19.2.20"

	// The server's CA and certificate.
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvDER, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, ca, &srvKey.PublicKey, caKey)

	// The server: HTTPS only, on its own machine.
	if out, err := exec.Command(bin, "sandbox", "host", "add", name, addr).CombinedOutput(); err != nil {
		t.Fatalf("sandbox host add: %v\n%s", err, out)
	}
	defer exec.Command(bin, "sandbox", "host", "delete", name).Run()
	var ln net.Listener
	if err := network.Do(network.HostNSPrefix+name, func() (err error) { ln, err = net.Listen("tcp", addr+":443"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "secure: TLS with SNI %s", r.TLS.ServerName)
	}), TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}}, ReadHeaderTimeout: 5 * time.Second}
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	// The egress gateway, from an IstioOperator file as Istio's task installs it.
	op := filepath.Join(t.TempDir(), "egress.yaml")
	if err := os.WriteFile(op, []byte("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: empty\n  components:\n    egressGateways:\n    - name: istio-egressgateway\n      enabled: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		if r := isthmus(t, 5*time.Minute, append([]string{"install", "-f", op, "--context", c, "-y"}, w.kc...)...); r.err != nil {
			t.Fatalf("install the egress gateway in %s: %v\n%s", c, r.err, r.stderr)
		}
		defer isthmus(t, 2*time.Minute, append([]string{"uninstall", "-f", op, "--context", c, "-y"}, w.kc...)...)
	}

	caPEM := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})), "\n", "\n    ")
	e.apply("cluster-eks", fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: secure-ca, namespace: istio-system}
stringData:
  ca.crt: |
    %[3]s
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: secure, namespace: multicluster}
spec:
  hosts: [%[1]s]
  ports: [{number: 80, name: http, protocol: HTTP}, {number: 443, name: https, protocol: HTTPS}]
  resolution: STATIC
  endpoints: [{address: %[2]s}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: istio-egressgateway, namespace: multicluster}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [%[1]s]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure-through-egress-gateway, namespace: multicluster}
spec:
  hosts: [%[1]s]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local, port: {number: 80}}}]
  - match: [{gateways: [istio-egressgateway], port: 80}]
    headers: {response: {set: {x-through: istio-egressgateway}}}
    route: [{destination: {host: %[1]s, port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: originate-tls, namespace: multicluster}
spec:
  host: %[1]s
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE, credentialName: secure-ca}
`, host, addr, caPEM))
	defer e.kubectl("cluster-eks", "", "delete", "-n", "multicluster", "serviceentry/secure", "gateway/istio-egressgateway", "virtualservice/secure-through-egress-gateway", "destinationrule/originate-tls")
	defer e.kubectl("cluster-eks", "", "delete", "-n", "istio-system", "secret/secure-ca")

	t.Run("sleep in each cluster calls an HTTPS server outside the mesh over plain HTTP; its cluster's egress gateway originates TLS, verified with the DestinationRule's CA", func(t *testing.T) {
		for _, from := range clients {
			var out string
			if !eventuallyOK(func() bool {
				out, _ = e.kubectl(from, "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "curl", "-sS", "-i", "--max-time", "5",
					"--resolve", host+":80:"+addr, "http://"+host+"/")
				return strings.Contains(out, "secure: TLS with SNI "+host)
			}) {
				t.Fatalf("no answer from the server through the egress gateway, from %s; the last:\n%s", from, out)
			}
			if !strings.Contains(strings.ToLower(out), "x-through: istio-egressgateway") {
				t.Errorf("from %s the answer did not come through the egress gateway:\n%s", from, out)
			}
		}
	})

	t.Run("with a CA that did not sign the server's certificate the gateway refuses it", func(t *testing.T) {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		otherDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &other.PublicKey, other)
		wrong := strings.ReplaceAll(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherDER})), "\n", "\n    ")
		e.apply("cluster-eks", fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: secure-ca, namespace: istio-system}\nstringData:\n  ca.crt: |\n    %s\n", wrong))
		for _, from := range clients {
			eventually(t, "the gateway refusing the server (503), from "+from, func() bool {
				out, _ := e.kubectl(from, "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
					"--max-time", "5", "--resolve", host+":80:"+addr, "http://"+host+"/")
				return strings.TrimSpace(out) == "503"
			})
		}
	})
}
