package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/controlplane"
)

const workloads = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: multicluster}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: %[1]s, namespace: multicluster}
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: multicluster}
spec:
  serviceAccountName: %[1]s
  containers:
  - {name: app, image: curlimages/curl, command: [sleep, "3650d"]}
`

// The mesh's objects as the installer will make them, by hand until it
// exists.

// gatewayYAML is a cluster's east-west gateway: a router pod (its own
// certificate and xDS over TLS with its projected token, as an injected
// proxy) and its LoadBalancer Service; extraPorts are more Service ports
// (YAML list items) and args the router's command line.
func gatewayYAML(cluster, network, extraPorts, args string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: istio-eastwestgateway, namespace: istio-system, labels: {istio: eastwestgateway, topology.istio.io/network: %[2]s}}
spec:
  type: LoadBalancer
  selector: {istio: eastwestgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021}
  - {name: tls, port: 15443, targetPort: 15443}
%[3]s
---
apiVersion: v1
kind: Pod
metadata: {name: istio-eastwestgateway, namespace: istio-system, labels: {istio: eastwestgateway, app: istio-eastwestgateway}}
spec:
  containers:
  - name: istio-proxy
    image: isthmus/isthmus
    args: %[4]s
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: INSTANCE_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: ISTIO_META_CLUSTER_ID, value: %[1]s}
    - {name: ISTIO_META_NETWORK, value: %[2]s}
    - {name: ISTIO_META_REQUESTED_NETWORK_VIEW, value: %[2]s}
    - {name: ISTIO_METAJSON_LABELS, value: '{"istio":"eastwestgateway","app":"istio-eastwestgateway"}'}
    readinessProbe: {httpGet: {port: 15021, path: /healthz/ready}, periodSeconds: 1}
    volumeMounts:
    - {name: istio-token, mountPath: /var/run/secrets/tokens}
    - {name: istiod-ca-cert, mountPath: /var/run/secrets/istio}
  volumes:
  - name: istio-token
    projected:
      sources:
      - serviceAccountToken: {audience: istio-ca, expirationSeconds: 43200, path: istio-token}
  - name: istiod-ca-cert
    configMap: {name: istio-ca-root-cert}
`, cluster, network, extraPorts, args)
}

// istiodYAML is a cluster's istiod Service without pods: its endpoint is
// the control plane itself (the host), or for a remote the primary's
// east-west gateway (what remotePilotAddress does).
func istiodYAML(address string, xdsPort, webhookPort string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: istiod, namespace: istio-system}
spec:
  ports: [{name: tls-istiod, port: 15012}, {name: https-webhook, port: 443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: istiod-endpoint, namespace: istio-system, labels: {kubernetes.io/service-name: istiod}}
addressType: IPv4
endpoints: [{addresses: ["%s"], conditions: {ready: true}}]
ports: [{name: tls-istiod, port: %s}, {name: https-webhook, port: %s}]
`, address, xdsPort, webhookPort)
}

const (
	sleepID   = "spiffe://cluster.local/ns/multicluster/sa/sleep"
	profileID = "spiffe://cluster.local/ns/multicluster/sa/profile"
)

// token asks a cluster for a service-account token bound to the pod of the
// same name, as the kubelet projects istio-token.
func (e *sandboxEnv) token(t *testing.T, cluster, sa, audience string) string {
	t.Helper()
	pod, err := e.clients[cluster].CoreV1().Pods("multicluster").Get(context.Background(), sa, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return e.podToken(t, cluster, pod, audience)
}

// podToken is a token of pod's service account bound to pod, for an hour.
func (e *sandboxEnv) podToken(t *testing.T, cluster string, pod *corev1.Pod, audience string) string {
	t.Helper()
	exp := int64(3600)
	tr, err := e.clients[cluster].CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{audience}, ExpirationSeconds: &exp,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// expiredToken is a token signed with the cluster's real signing key that
// expired an hour ago (the API refuses to issue one that short).
func (e *sandboxEnv) expiredToken(t *testing.T, cluster, sa string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.state, "clusters", cluster, "pki", "sa.key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	key, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	enc := func(v any) string { j, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(j) }
	signing := enc(map[string]string{"alg": "RS256", "typ": "JWT"}) + "." + enc(map[string]any{
		"iss": controlplane.Issuer, "sub": "system:serviceaccount:multicluster:" + sa, "aud": []string{"istio-ca"},
		"iat": now.Add(-2 * time.Hour).Unix(), "nbf": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix(),
		"kubernetes.io": map[string]any{"namespace": "multicluster", "serviceaccount": map[string]string{"name": sa}},
	})
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// rootOf reads the trust bundle a cluster's namespace was given.
func (e *sandboxEnv) rootOf(cluster string) []byte {
	cm, err := e.clients[cluster].CoreV1().ConfigMaps("multicluster").Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return []byte(cm.Data["root-cert.pem"])
}

// agent runs a proxy's certificate agent in the test process.
func agent(t *testing.T, cp *controlPlane, cluster, token string, root []byte, ttl time.Duration) *identity.Agent {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "istio-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := identity.New(identity.Config{CAAddr: cp.secure, CAServerName: cp.serverName, RootCert: root,
		TokenFile: tokenFile, ClusterID: cluster, TTL: ttl, Log: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-a.Ready():
	case <-time.After(30 * time.Second):
		t.Fatalf("no certificate for the %s workload within 30 s", cluster)
	}
	return a
}

// askCert calls CreateCertificate directly and returns the gRPC error.
func askCert(t *testing.T, cp *controlPlane, root []byte, token, cluster, uri string) ([]string, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(root)
	conn, err := grpc.NewClient("passthrough:///"+cp.secure, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: cp.serverName})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.CertificateRequest{}
	if uri != "" {
		u, _ := url.Parse(uri)
		tmpl.URIs = []*url.URL{u}
	}
	der, _ := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "clusterid", cluster)
	resp, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx, &pb.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	return resp.GetCertChain(), err
}

// echoServer accepts mutual TLS as profile and echoes lines prefixed with
// the caller's SPIFFE ID.
func echoServer(t *testing.T, a *identity.Agent) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", a.ServerConfig(tlsconfig.AuthorizeAny(), "istio"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				if tc.Handshake() != nil {
					return
				}
				id, _ := identity.PeerID(tc.ConnectionState())
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, id.String()+" "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// mtlsConn dials the echo server as a client that expects profile.
type mtlsConn struct {
	c *tls.Conn
	r *bufio.Reader
}

func dialMTLS(addr string, a *identity.Agent, want string) (*mtlsConn, error) {
	c, err := tls.Dial("tcp", addr, a.ClientConfig("outbound_.8080_._.profile.multicluster.svc.cluster.local",
		tlsconfig.AuthorizeID(spiffeid.RequireFromString(want)), "istio"))
	if err != nil {
		return nil, err
	}
	return &mtlsConn{c: c, r: bufio.NewReader(c)}, nil
}

// ping sends a line and returns what the server said about the caller.
func (m *mtlsConn) ping() (string, error) {
	_ = m.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(m.c, "ping\n"); err != nil {
		return "", err
	}
	s, err := m.r.ReadString('\n')
	return strings.TrimSuffix(s, " ping\n"), err
}

func TestIdentityAcrossClusters(t *testing.T) {
	e := upSandbox(t)
	e.apply("cluster-eks", strings.ReplaceAll(workloads, "%[1]s", "sleep"))
	e.apply("cluster-aks", strings.ReplaceAll(workloads, "%[1]s", "profile"))
	e.apply("cluster-aks", strings.ReplaceAll(workloads, "%[1]s", "sleep"))

	t.Run("primary-remote: one CA for both clusters", func(t *testing.T) {
		// On the host's sandbox address: the gateway pod reaches it there.
		webhookPort := freePort(t)
		cp := e.startDiscoveryOn(t, "198.18.0.1", "cluster-eks", "network1", "--trust-domain", "cluster.local",
			"--webhook-addr", fmt.Sprintf("198.18.0.1:%d", webhookPort))
		defer cp.stop()
		aks := isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "kubeconfig", "--cluster", "cluster-aks").stdout
		if _, err := e.clients["cluster-eks"].CoreV1().Secrets("istio-system").Create(context.Background(), &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-cluster-aks", Labels: map[string]string{"istio/multiCluster": "true"}},
			StringData: map[string]string{"cluster-aks": aks},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Istio's rule: the primary writes to a remote only once the remote's
		// istio-system names it in topology.istio.io/controlPlaneClusters.
		eventually(t, "cluster-aks synced", func() bool {
			var st []struct{ ID, State string }
			_ = json.Unmarshal([]byte(cp.get("/debug/clusterz")), &st)
			return slices.ContainsFunc(st, func(s struct{ ID, State string }) bool { return s.ID == "cluster-aks" && s.State == "synced" })
		})
		eventually(t, "istio-ca-root-cert in cluster-eks", func() bool { return len(e.rootOf("cluster-eks")) > 0 })
		time.Sleep(3 * time.Second)
		if root := e.rootOf("cluster-aks"); root != nil {
			t.Fatal("the primary wrote istio-ca-root-cert into cluster-aks, whose istio-system does not name it in topology.istio.io/controlPlaneClusters")
		}
		e.apply("cluster-aks", "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system, annotations: {topology.istio.io/controlPlaneClusters: cluster-eks}}\n")
		var root []byte
		eventually(t, "istio-ca-root-cert in both clusters, the same bundle", func() bool {
			root = e.rootOf("cluster-eks")
			return len(root) > 0 && string(e.rootOf("cluster-aks")) == string(root)
		})
		ca, err := e.clients["cluster-eks"].CoreV1().Secrets("istio-system").Get(context.Background(), "istio-ca-secret", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("self-signed root not persisted: %v", err)
		}
		if !strings.Contains(string(root), strings.TrimSpace(string(ca.Data["ca-cert.pem"]))) {
			t.Fatal("istio-ca-root-cert is not the root kept in istio-ca-secret")
		}

		var profile, sleep *identity.Agent
		t.Run("a pod's token from cluster-aks gets its certificate, reviewed by cluster-aks", func(t *testing.T) {
			profile = agent(t, cp, "cluster-aks", e.token(t, "cluster-aks", "profile", "istio-ca"), root, 0)
			if got := profile.ID().String(); got != profileID {
				t.Fatalf("identity %s, want %s", got, profileID)
			}
			leaf := profile.Leaf()
			if d := time.Until(leaf.NotAfter); d < 23*time.Hour || d > 24*time.Hour {
				t.Errorf("certificate lives %s; want the 24 h default", d)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(e.rootOf("cluster-aks"))
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("certificate does not chain to istio-ca-root-cert of cluster-aks: %v", err)
			}
			sleep = agent(t, cp, "cluster-eks", e.token(t, "cluster-eks", "sleep", "istio-ca"), root, 0)
		})
		if profile == nil || sleep == nil {
			t.FailNow()
		}

		// A pair with 1-minute certificates talks over one connection while
		// the other subtests run; checked at the end.
		rotation := make(chan error, 1)
		{
			p1 := agent(t, cp, "cluster-aks", e.token(t, "cluster-aks", "profile", "istio-ca"), root, time.Minute)
			s1 := agent(t, cp, "cluster-eks", e.token(t, "cluster-eks", "sleep", "istio-ca"), root, time.Minute)
			c, err := dialMTLS(echoServer(t, p1), s1, profileID)
			if err != nil {
				t.Fatal(err)
			}
			defer c.c.Close()
			go func() {
				serials := map[string]bool{}
				deadline := time.Now().Add(2*time.Minute + 30*time.Second)
				for len(serials) < 3 && time.Now().Before(deadline) {
					if who, err := c.ping(); err != nil || who != sleepID {
						rotation <- fmt.Errorf("long-lived connection after %d certificates: %q %v", len(serials), who, err)
						return
					}
					serials[p1.Leaf().SerialNumber.String()+"/"+s1.Leaf().SerialNumber.String()] = true
					time.Sleep(time.Second)
				}
				if len(serials) < 3 {
					rotation <- fmt.Errorf("%d certificate pairs in 2.5 minutes; want two renewals of 1-minute certificates", len(serials))
					return
				}
				rotation <- nil
			}()
		}

		t.Run("workloads of the two clusters authenticate each other", func(t *testing.T) {
			c, err := dialMTLS(echoServer(t, profile), sleep, profileID)
			if err != nil {
				t.Fatal(err)
			}
			defer c.c.Close()
			if who, err := c.ping(); err != nil || who != sleepID {
				t.Fatalf("server saw %q (%v), want %s", who, err, sleepID)
			}
		})

		t.Run("bad tokens are refused with a clear status", func(t *testing.T) {
			aksToken := e.token(t, "cluster-aks", "profile", "istio-ca")
			for _, tc := range []struct {
				name, token, cluster, uri string
				code                      codes.Code
				says                      string
			}{
				{"expired token", e.expiredToken(t, "cluster-aks", "profile"), "cluster-aks", "", codes.Unauthenticated, "token rejected by cluster \"cluster-aks\""},
				{"wrong audience", e.token(t, "cluster-aks", "profile", "other"), "cluster-aks", "", codes.Unauthenticated, "token rejected"},
				{"a token of another service account", e.token(t, "cluster-aks", "sleep", "istio-ca"), "cluster-aks", profileID, codes.PermissionDenied, "token proves " + "spiffe://cluster.local/ns/multicluster/sa/sleep"},
				{"ClusterID of another cluster than the token's", aksToken, "cluster-eks", "", codes.Unauthenticated, "token rejected by cluster \"cluster-eks\""},
				{"ClusterID the mesh does not know", aksToken, "cluster-gcp", "", codes.Unauthenticated, "knows only cluster-aks, cluster-eks"},
				{"no token", "", "cluster-aks", "", codes.Unauthenticated, "no bearer token"},
			} {
				_, err := askCert(t, cp, root, tc.token, tc.cluster, tc.uri)
				if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.says) {
					t.Errorf("%s: got %v; want %s saying %q", tc.name, err, tc.code, tc.says)
				}
			}
			if _, err := askCert(t, cp, root, aksToken, "cluster-aks", profileID); err != nil {
				t.Errorf("a CSR naming the caller's own identity: %v", err)
			}
		})

		t.Run("xDS over TLS wants a token too", func(t *testing.T) {
			profilePod, err := e.clients["cluster-aks"].CoreV1().Pods("multicluster").Get(context.Background(), "profile", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			ads := func(token string) error {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(root)
				conn, err := grpc.NewClient("passthrough:///"+cp.secure, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: cp.serverName})))
				if err != nil {
					return err
				}
				defer conn.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if token != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token, "clusterid", "cluster-aks")
				}
				stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
				if err != nil {
					return err
				}
				if err := stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ClusterType,
					Node: &core.Node{Id: "sidecar~" + profilePod.Status.PodIP + "~profile.multicluster~multicluster.svc.cluster.local"}}); err != nil && !errors.Is(err, io.EOF) {
					return err
				} // on io.EOF the stream's status comes from Recv
				_, err = stream.Recv()
				return err
			}
			if err := ads(""); status.Code(err) != codes.Unauthenticated {
				t.Errorf("ADS without a token: %v, want Unauthenticated", err)
			}
			if err := ads(e.token(t, "cluster-aks", "profile", "istio-ca")); err != nil {
				t.Errorf("ADS with cluster-aks's token: %v", err)
			}
			if !strings.Contains(cp.get("/metrics"), "citadel_server_success_cert_issuance_count") {
				t.Error("no citadel_server_* metrics")
			}
		})

		t.Run("istio-ca-root-cert is recreated when deleted and set in new namespaces", func(t *testing.T) {
			cms := e.clients["cluster-aks"].CoreV1().ConfigMaps("multicluster")
			if err := cms.Delete(context.Background(), "istio-ca-root-cert", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			eventually(t, "the ConfigMap back", func() bool { return string(e.rootOf("cluster-aks")) == string(root) })
			e.apply("cluster-aks", "apiVersion: v1\nkind: Namespace\nmetadata: {name: late}\n")
			eventually(t, "the ConfigMap in a new namespace", func() bool {
				cm, err := e.clients["cluster-aks"].CoreV1().ConfigMaps("late").Get(context.Background(), "istio-ca-root-cert", metav1.GetOptions{})
				return err == nil && cm.Data["root-cert.pem"] == string(root) && cm.Labels["istio.io/config"] == "true"
			})
		})

		t.Run("the remote reaches the CA through the primary's east-west gateway (expose-istiod)", func(t *testing.T) {
			// The router itself gets its certificate and xDS over TLS with
			// its token, as an injected proxy does.
			_, securePort, _ := net.SplitHostPort(cp.secure)
			e.apply("cluster-eks", gatewayYAML("cluster-eks", "network1", "  - {name: tls-istiod, port: 15012, targetPort: 15012}",
				`[proxy, router, --discovery-address, "198.18.0.1:`+securePort+`", --server-name, istiod.istio-system.svc]`)+
				"---"+istiodYAML("198.18.0.1", securePort, strconv.Itoa(webhookPort)))
			e.installIstioCRDs(t, "cluster-eks")
			e.apply("cluster-eks", example(t, "expose-istiod.yaml"))
			e.waitReady("cluster-eks", "istio-system", "istio=eastwestgateway", 1)
			gw := e.lbAddress(t, "cluster-eks", "istio-system", "istio-eastwestgateway")
			// A cluster-aks workload asks for its certificate at the gateway
			// address, as remotePilotAddress makes it; TLS passes through.
			token := e.token(t, "cluster-aks", "profile", "istio-ca")
			var chain []string
			var err error
			viaGW := &controlPlane{secure: gw + ":15012", serverName: "istiod.istio-system.svc"}
			eventually(t, "a certificate through the gateway", func() bool {
				chain, err = askCert(t, viaGW, root, token, "cluster-aks", "")
				return err == nil
			})
			blk, _ := pem.Decode([]byte(chain[0]))
			leaf, _ := x509.ParseCertificate(blk.Bytes)
			if leaf.URIs[0].String() != profileID {
				t.Fatalf("certificate for %s", leaf.URIs[0])
			}
		})

		t.Run("a 1-minute certificate renews twice under a long-lived connection", func(t *testing.T) {
			if err := <-rotation; err != nil {
				t.Fatal(err)
			}
		})
	})

	t.Run("plug-in CA: two clusters with their own intermediates under one root", func(t *testing.T) {
		root1 := newTestCA(t, "root 1", nil)
		plug := func(cluster string, signer *testCA, roots ...*testCA) {
			t.Helper()
			var bundle []byte
			for _, r := range roots {
				bundle = append(bundle, r.pem...)
			}
			sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "cacerts", Namespace: "istio-plugin"}, Data: map[string][]byte{
				"ca-cert.pem": signer.pem, "ca-key.pem": signer.keyPEM, "cert-chain.pem": signer.pem, "root-cert.pem": bundle}}
			secrets := e.clients[cluster].CoreV1().Secrets("istio-plugin")
			if _, err := secrets.Update(context.Background(), sec, metav1.UpdateOptions{}); err != nil {
				if _, err := secrets.Create(context.Background(), sec, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, c := range []string{"cluster-eks", "cluster-aks"} {
			e.apply(c, "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-plugin}\n")
		}
		eksInter, aksInter := newTestCA(t, "eks intermediate", root1), newTestCA(t, "aks intermediate", root1)
		plug("cluster-eks", eksInter, root1)
		plug("cluster-aks", aksInter, root1)
		// Multi-primary: each cluster's control plane signs for its own workloads.
		eksCP := e.startDiscovery(t, "cluster-eks", "network1", "--namespace", "istio-plugin")
		aksCP := e.startDiscovery(t, "cluster-aks", "network2", "--namespace", "istio-plugin")
		const ttl = 10 * time.Second
		sleep := agent(t, eksCP, "cluster-eks", e.token(t, "cluster-eks", "sleep", "istio-ca"), root1.pem, ttl)
		profile := agent(t, aksCP, "cluster-aks", e.token(t, "cluster-aks", "profile", "istio-ca"), root1.pem, ttl)
		if !bytes.Equal(sleep.Leaf().RawIssuer, eksInter.cert.RawSubject) || !bytes.Equal(profile.Leaf().RawIssuer, aksInter.cert.RawSubject) {
			t.Fatal("certificates are not signed by each cluster's own intermediate")
		}
		addr := echoServer(t, profile)
		long, err := dialMTLS(addr, sleep, profileID)
		if err != nil {
			t.Fatalf("eks workload to aks workload: %v", err)
		}
		defer long.c.Close()
		check := func(step string) {
			t.Helper()
			if who, err := long.ping(); err != nil || who != sleepID {
				t.Fatalf("%s: long-lived connection: %q %v", step, who, err)
			}
			c, err := dialMTLS(addr, sleep, profileID)
			if err != nil {
				t.Fatalf("%s: new connection: %v", step, err)
			}
			defer c.c.Close()
			if who, err := c.ping(); err != nil || who != sleepID {
				t.Fatalf("%s: new connection: %q %v", step, who, err)
			}
		}
		check("one root, two intermediates")

		t.Run("root rotation without downtime", func(t *testing.T) {
			root2 := newTestCA(t, "root 2", nil)
			roots := func(a *identity.Agent) int { n, _ := countCerts(a.BundlePEM()); return n }
			// 1. Both roots in the bundle, still signing under root 1.
			plug("cluster-eks", eksInter, root1, root2)
			plug("cluster-aks", aksInter, root1, root2)
			eventually(t, "both workloads trust both roots", func() bool { return roots(sleep) == 2 && roots(profile) == 2 })
			check("bundle with both roots")
			eventually(t, "istio-ca-root-cert carries both roots", func() bool { n, _ := countCerts(e.rootOf("cluster-eks")); return n == 2 })
			// 2. New intermediates under root 2; workloads re-issue at renewal.
			eks2, aks2 := newTestCA(t, "eks intermediate 2", root2), newTestCA(t, "aks intermediate 2", root2)
			plug("cluster-eks", eks2, root1, root2)
			plug("cluster-aks", aks2, root1, root2)
			eventually(t, "both workloads re-issued under root 2", func() bool {
				return bytes.Equal(sleep.Leaf().RawIssuer, eks2.cert.RawSubject) && bytes.Equal(profile.Leaf().RawIssuer, aks2.cert.RawSubject)
			})
			check("signing under root 2")
			// 3. Root 1 removed.
			plug("cluster-eks", eks2, root2)
			plug("cluster-aks", aks2, root2)
			eventually(t, "both workloads trust only root 2", func() bool { return roots(sleep) == 1 && roots(profile) == 1 })
			check("root 1 removed")
		})
	})
}

// testCA is a CA certificate made by the test.
type testCA struct {
	cert        *x509.Certificate
	key         *ecdsa.PrivateKey
	pem, keyPEM []byte
}

func newTestCA(t *testing.T, name string, parent *testCA) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name, Organization: []string{"isthmus e2e"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true}
	signCert, signKey := tmpl, key
	if parent != nil {
		signCert, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signCert, key.Public(), signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})}
}

func countCerts(b []byte) (int, error) {
	n := 0
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return n, nil
		}
		n++
	}
}

// serving issues a certificate for host (server and client use), PEM
// certificate and key.
func (ca *testCA) serving(t *testing.T, host string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(48 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

// pool trusts only this CA.
func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}
