package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	pb "istio.io/api/security/v1alpha1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshca "github.com/isthmus-mesh/isthmus/internal/discovery/ca"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// securityBoundary plays the attacker from inside the mesh after the
// walkthrough: a pod of the mesh (sleep) asks the control plane for the
// ingress gateway's TLS credential in every way it can, and gets no
// private key; the gateway itself keeps serving with it.
func securityBoundary(t *testing.T, e *sandboxEnv) {
	ctx := context.Background()
	eks := e.clients["cluster-eks"]
	gwPod := e.waitReady("cluster-eks", "istio-system", "istio=ingressgateway", 1)[0]
	sleep := e.waitReady("cluster-eks", "multicluster", "app=sleep", 1)[0]
	istiod, err := eks.CoreV1().Services("istio-system").Get(ctx, "istiod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lb := e.lbAddress(t, "cluster-eks", "istio-system", "istio-ingressgateway")

	// The credential: the same Secret in istio-system (the gateway's) and
	// in multicluster (sleep's own namespace), and a Gateway using it.
	ca := newTestCA(t, "probe-ca", nil)
	certPEM, keyPEM := ca.serving(t, "probe.example.com")
	secret := func(ns string) string {
		return fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: probe-cert, namespace: %s}\ntype: kubernetes.io/tls\ndata: {tls.crt: %s, tls.key: %s}\n",
			ns, base64.StdEncoding.EncodeToString(certPEM), base64.StdEncoding.EncodeToString(keyPEM))
	}
	e.apply("cluster-eks", secret("istio-system")+"---\n"+secret("multicluster")+`---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: probe, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-probe, protocol: HTTPS}
    hosts: [probe.example.com]
    tls: {mode: SIMPLE, credentialName: probe-cert}
`)
	t.Cleanup(func() {
		e.kubectl("cluster-eks", "", "delete", "-n", "istio-system", "gateway/probe", "secret/probe-cert")
		e.kubectl("cluster-eks", "", "delete", "-n", "multicluster", "secret/probe-cert")
	})
	gatewayServes := func() bool {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lb+":443", &tls.Config{ServerName: "probe.example.com", RootCAs: ca.pool()})
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	eventually(t, "the ingress gateway serves probe.example.com with the credential", gatewayServes)

	// A token of sleep's service account bound to its pod, audience
	// istio-ca: what sleep's own proxy presents.
	sleepToken := e.podToken(t, "cluster-eks", &sleep, "istio-ca")
	// Connections start inside sleep's network namespace, as a process of
	// the pod would (its sidecar relays them to istiod).
	fromSleep := grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		return network.Dialer(network.PodNSPrefix+string(sleep.UID))(ctx, "tcp", addr)
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.rootOf("cluster-eks"))
	plaintext := grpc.WithTransportCredentials(insecure.NewCredentials())
	overTLS := grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "istiod.istio-system.svc"}))
	// node is what a proxy says of itself: role, pod, namespace, cluster, labels.
	node := func(role, pod, ns, cluster string, labels map[string]any) *core.Node {
		md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": cluster, "NAMESPACE": ns})
		if labels != nil {
			l, _ := structpb.NewStruct(labels)
			md.Fields["LABELS"] = structpb.NewStructValue(l)
		}
		return &core.Node{Id: fmt.Sprintf("%s~%s~%s.%s~%s.svc.cluster.local", role, sleep.Status.PodIP, pod, ns, ns), Metadata: md}
	}
	gatewayLabels := map[string]any{"istio": "ingressgateway"}
	router := func(ns, cluster string) *core.Node {
		return node("router", "istio-ingressgateway-fake", ns, cluster, gatewayLabels)
	}
	// ask opens an ADS stream to istiod:port and asks for the credential;
	// it returns the secrets of the first Secret answer (none within 5 s
	// counts as none), or the stream's error.
	ask := func(port int, creds grpc.DialOption, token, cluster string, node *core.Node) ([]*tlsv3.Secret, error) {
		conn, err := grpc.NewClient(fmt.Sprintf("passthrough:///%s:%d", istiod.Spec.ClusterIP, port), creds, fromSleep)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if token != "" {
			sctx = metadata.AppendToOutgoingContext(sctx, "authorization", "Bearer "+token, "clusterid", cluster)
		}
		stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			return nil, err
		}
		for _, url := range []string{resource.ListenerType, resource.SecretType} {
			if err := stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: url, Node: node,
				ResourceNames: map[bool][]string{true: {"kubernetes://probe-cert"}}[url == resource.SecretType]}); err != nil && !errors.Is(err, io.EOF) {
				return nil, err
			}
		}
		deadline := time.AfterFunc(5*time.Second, cancel)
		defer deadline.Stop()
		for {
			r, err := stream.Recv()
			if err != nil {
				if sctx.Err() != nil {
					return nil, nil // nothing but silence about the credential
				}
				return nil, err
			}
			if r.TypeUrl != resource.SecretType {
				continue
			}
			var out []*tlsv3.Secret
			for _, a := range r.Resources {
				var s tlsv3.Secret
				if err := a.UnmarshalTo(&s); err != nil {
					return nil, err
				}
				out = append(out, &s)
			}
			return out, nil
		}
	}
	noKey := func(t *testing.T, ss []*tlsv3.Secret, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("the stream failed: %v", err)
		}
		for _, s := range ss {
			if k := s.GetTlsCertificate().GetPrivateKey().GetInlineBytes(); len(k) > 0 {
				t.Fatalf("sleep received the private key of %s", s.Name)
			}
		}
	}

	t.Run("plaintext 15010: a node claiming to be the ingress gateway gets no credential", func(t *testing.T) {
		ss, err := ask(15010, plaintext, "", "", router("istio-system", "cluster-eks"))
		noKey(t, ss, err)
	})
	t.Run("15012 with sleep's token: claiming istio-system is refused", func(t *testing.T) {
		_, err := ask(15012, overTLS, sleepToken, "cluster-eks", router("istio-system", "cluster-eks"))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err %v, want PermissionDenied", err)
		}
	})
	t.Run("15012 with sleep's token: whatever the node claims that its pod is not, it is refused", func(t *testing.T) {
		for what, n := range map[string]*core.Node{
			"a gateway pod of its own namespace":    router("multicluster", "cluster-eks"),
			"the router role for its own pod":       node("router", sleep.Name, "multicluster", "cluster-eks", nil),
			"the ingress gateway's labels":          node("sidecar", sleep.Name, "multicluster", "cluster-eks", gatewayLabels),
			"another cluster than its token's":      node("sidecar", sleep.Name, "multicluster", "cluster-aks", nil),
			"another pod's name at its own address": node("sidecar", "profile-fake", "multicluster", "cluster-eks", nil),
		} {
			_, err := ask(15012, overTLS, sleepToken, "cluster-eks", n)
			if status.Code(err) != codes.PermissionDenied {
				t.Errorf("claiming %s: %v, want PermissionDenied", what, err)
			}
		}
	})
	t.Run("15012 with sleep's token: its own pod, as it is, is served (and gets no credential)", func(t *testing.T) {
		ss, err := ask(15012, overTLS, sleepToken, "cluster-eks", node("sidecar", sleep.Name, "multicluster", "cluster-eks", map[string]any{"app": "sleep"}))
		noKey(t, ss, err)
	})
	t.Run("15012 with sleep's token: a certificate for profile's identity is refused, its own is signed", func(t *testing.T) {
		conn, err := grpc.NewClient(fmt.Sprintf("passthrough:///%s:15012", istiod.Spec.ClusterIP), overTLS, fromSleep)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		csr := func(uri string) error {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			u, _ := url.Parse(uri)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			defer cancel()
			cctx = metadata.AppendToOutgoingContext(cctx, "authorization", "Bearer "+sleepToken, "clusterid", "cluster-eks")
			_, err := pb.NewIstioCertificateServiceClient(conn).CreateCertificate(cctx, &pb.IstioCertificateRequest{
				Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
			return err
		}
		if err := csr(profileID); status.Code(err) != codes.PermissionDenied {
			t.Errorf("a CSR for %s with sleep's token: %v, want PermissionDenied", profileID, err)
		}
		if err := csr(sleepID); err != nil {
			t.Errorf("a CSR for sleep's own identity: %v", err)
		}
	})
	t.Run("a certificate of another trust domain under the mesh's own root is refused by profile's sidecar", func(t *testing.T) {
		// The attacker holds the mesh's root key (the worst case short of
		// the control plane): it can mint any certificate under the root,
		// but only the mesh's trust domain is accepted.
		sec, err := eks.CoreV1().Secrets("istio-system").Get(ctx, meshca.SelfSignedSecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		root := sec.Data[meshca.CACertKey]
		authority, err := meshca.New(root, sec.Data[meshca.CAKeyKey], nil, root)
		if err != nil {
			t.Fatal(err)
		}
		profilePod := e.waitReady("cluster-eks", "multicluster", "app=profile", 1)[0]
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(root)
		// call presents a certificate for id to profile's sidecar (from the
		// node's namespace, where nothing captures it) and asks for a profile.
		call := func(id string) error {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			u, _ := url.Parse(id)
			chain, _, err := authority.Sign(meshca.Request{PublicKey: &key.PublicKey, URIs: []*url.URL{u}, TTL: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			var cert tls.Certificate
			for _, c := range chain[:len(chain)-1] {
				blk, _ := pem.Decode([]byte(c))
				cert.Certificate = append(cert.Certificate, blk.Bytes)
			}
			cert.PrivateKey = key
			raw, err := network.Dialer(network.NodeNS("cluster-eks"))(ctx, "tcp", profilePod.Status.PodIP+":8080")
			if err != nil {
				return err
			}
			defer raw.Close()
			_ = raw.SetDeadline(time.Now().Add(5 * time.Second))
			c := tls.Client(raw, &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, InsecureSkipVerify: true, NextProtos: []string{"istio-http/1.1", "istio"}})
			if err := c.Handshake(); err != nil {
				return err
			}
			fmt.Fprintf(c, "GET /profile?id=4 HTTP/1.1\r\nHost: profile\r\nConnection: close\r\n\r\n")
			b, err := io.ReadAll(c)
			if err != nil && len(b) == 0 {
				return err
			}
			if !strings.HasPrefix(string(b), "HTTP/1.1 200") {
				return fmt.Errorf("answer %.60q", b)
			}
			return nil
		}
		if err := call(sleepID); err != nil {
			t.Fatalf("sleep's own identity, minted the same way: %v", err)
		}
		if err := call("spiffe://evil.example/ns/multicluster/sa/sleep"); err == nil {
			t.Fatal("a workload of trust domain evil.example was served")
		}
	})
	t.Run("secure naming: an endpoint answering with another service account is refused by the caller's sidecar", func(t *testing.T) {
		// A Service whose EndpointSlice says its endpoint is profile's pod
		// (account profile) while the address is dashboard's: dashboard's
		// sidecar answers with its own identity, which is not profile's.
		profilePod := e.waitReady("cluster-eks", "multicluster", "app=profile", 1)[0]
		dashboard := e.waitReady("cluster-eks", "multicluster", "app=dashboard", 1)[0]
		e.apply("cluster-eks", fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: payments, namespace: multicluster}
spec:
  ports: [{name: http, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: payments-1, namespace: multicluster, labels: {kubernetes.io/service-name: payments}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [%s]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: %s, namespace: multicluster}
`, dashboard.Status.PodIP, profilePod.Name))
		t.Cleanup(func() {
			e.kubectl("cluster-eks", "", "delete", "-n", "multicluster", "service/payments", "endpointslice/payments-1")
		})
		call := func(url string) string {
			o, _ := e.kubectl("cluster-eks", "", "-n", "multicluster", "exec", "deploy/sleep", "-c", "sleep", "--",
				"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url)
			return strings.TrimSpace(o)
		}
		eventually(t, "sleep's sidecar knows payments and refuses its endpoint (503)", func() bool { return call("http://payments:8080/dashboard?id=4") == "503" })
		for range 5 {
			if c := call("http://payments:8080/dashboard?id=4"); c != "503" {
				t.Fatalf("a call to payments answered %s; dashboard's sidecar must not pass for profile", c)
			}
		}
		if c := call("http://dashboard:8080/dashboard?id=4"); c != "200" {
			t.Fatalf("dashboard itself answered %s, want 200", c)
		}
	})
	t.Run("least privilege: the API servers say what the reader, istiod and the gateways may do", func(t *testing.T) {
		leastPrivilege(t, e)
	})
	t.Run("the ingress gateway still serves with the credential", func(t *testing.T) {
		if !gatewayServes() {
			t.Fatal("the gateway stopped serving probe.example.com")
		}
		if p, err := eks.CoreV1().Pods("istio-system").Get(ctx, gwPod.Name, metav1.GetOptions{}); err != nil || p.Status.ContainerStatuses[0].RestartCount != gwPod.Status.ContainerStatuses[0].RestartCount {
			t.Fatalf("the gateway restarted (%v)", err)
		}
	})
}

// leastPrivilege asks each cluster's API server (SubjectAccessReview, as
// `kubectl auth can-i`) what the mesh's accounts may do, and checks that
// gateway pods carry no Kubernetes API token.
func leastPrivilege(t *testing.T, e *sandboxEnv) {
	ctx := context.Background()
	type ask struct {
		verb, group, resource, ns, name string
		want                            bool
	}
	check := func(cluster, ns, sa string, asks ...ask) {
		t.Helper()
		for _, a := range asks {
			r, err := e.clients[cluster].AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
				User:               "system:serviceaccount:" + ns + ":" + sa,
				Groups:             []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
				ResourceAttributes: &authzv1.ResourceAttributes{Verb: a.verb, Group: a.group, Resource: a.resource, Namespace: a.ns, Name: a.name},
			}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != a.want {
				t.Errorf("%s: %s/%s may %s %s %s/%s: %v, want %v", cluster, ns, sa, a.verb, a.resource, a.ns, a.name, r.Status.Allowed, a.want)
			}
		}
	}
	// The remote reader: discovery, reviews, and the writes it needs, by name.
	check("cluster-aks", "istio-system", "istio-reader-service-account",
		ask{"get", "", "secrets", "istio-system", "", false},
		ask{"list", "", "secrets", "", "", false},
		ask{"list", "discovery.k8s.io", "endpointslices", "", "", true},
		ask{"create", "authentication.k8s.io", "tokenreviews", "", "", true},
		ask{"create", "authorization.k8s.io", "subjectaccessreviews", "", "", true},
		ask{"update", "", "configmaps", "multicluster", "istio-ca-root-cert", true},
		ask{"update", "", "configmaps", "multicluster", "app-settings", false},
		ask{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "istio-sidecar-injector", true},
		ask{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "someone-elses-webhook", false},
		ask{"update", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", "someone-elses-webhook", false},
	)
	// istiod in its own cluster: gateways' credentials anywhere, but no
	// one else's webhooks.
	check("cluster-eks", "istio-system", "istiod",
		ask{"list", "", "secrets", "multicluster", "", true},
		ask{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "someone-elses-webhook", false},
		ask{"update", "", "configmaps", "multicluster", "app-settings", false},
	)
	// Gateways: their own namespace's Secrets only (the control plane's
	// access check relies on it), and no API token in their pods.
	check("cluster-eks", "istio-system", "istio-ingressgateway-service-account",
		ask{"list", "", "secrets", "istio-system", "", true},
		ask{"list", "", "secrets", "multicluster", "", false},
	)
	for cluster, selectors := range map[string][]string{"cluster-eks": {"istio=ingressgateway", "istio=eastwestgateway"}, "cluster-aks": {"istio=eastwestgateway"}} {
		for _, sel := range selectors {
			for _, p := range e.waitReady(cluster, "istio-system", sel, 1) {
				for _, v := range p.Spec.Volumes {
					if v.Projected == nil {
						continue
					}
					for _, src := range v.Projected.Sources {
						if tok := src.ServiceAccountToken; tok != nil && tok.Audience == "" {
							t.Errorf("%s: gateway pod %s mounts a Kubernetes API token (volume %s)", cluster, p.Name, v.Name)
						}
					}
				}
			}
		}
	}
}
