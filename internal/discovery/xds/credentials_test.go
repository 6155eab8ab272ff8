package xds

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	apinetworking "istio.io/api/networking/v1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/ca"
	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// allowSA authorizes credentials for one service account only.
type allowSA string

func (a allowSA) AuthorizeCredentials(_ context.Context, id Identity) error {
	if id.ServiceAccount != string(a) {
		return errors.New(id.ServiceAccount + " may not list proxyview.Secrets")
	}
	return nil
}

// The trust boundary of credentialName Secrets: only an authenticated
// router whose service account may read Secrets gets the certificate and
// key; a plaintext stream never does, whatever its node claims, and
// cannot take over the state of an authenticated proxy by naming its ID.
func TestCredentialsOnlyToAuthorizedGateways(t *testing.T) {
	reg := registry.New()
	gwHost := "istio-ingressgateway.istio-system.svc.cluster.local"
	reg.SetService("c1", gwHost, &registry.Service{Namespace: "istio-system", Name: "istio-ingressgateway", Hostname: gwHost,
		Ports: []registry.Port{{Name: "https", Port: 443, Protocol: "TCP"}}})
	reg.SetEndpoints("c1", gwHost, []registry.Endpoint{{Address: "10.0.0.9", Cluster: "c1", Ports: map[string]int32{"https": 8443}}})
	gwPod := func(ip, name, sa string) {
		reg.SetWorkload("c1", ip, registry.Workload{Namespace: "istio-system", Name: name, ServiceAccount: sa,
			Labels: map[string]string{"istio": "ingressgateway", "app": "istio-ingressgateway"}, Router: true}, true)
	}
	gwPod("10.0.0.9", "istio-ingressgateway-1", "istio-ingressgateway-service-account")
	gwPod("10.0.0.10", "istio-ingressgateway-2", "default")
	gwPod("10.0.0.11", "istio-ingressgateway-3", "istio-ingressgateway-service-account")
	// Any certificate and key do: a self-signed CA's is at hand.
	_, certPEM, keyPEM, err := ca.NewSelfSigned("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cfg := gatewayConfig{
		gws: []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "istio-system"},
			Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "ingressgateway"}, Servers: []*apinetworking.Server{
				{Port: &apinetworking.Port{Number: 443, Name: "https", Protocol: "HTTPS"}, Hosts: []string{"shop.example.com"},
					Tls: &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_SIMPLE, CredentialName: "shop-cert"}},
			}}}},
		secrets: map[string]*corev1.Secret{"istio-system/shop-cert": {Data: map[string][]byte{"tls.crt": certPEM, "tls.key": keyPEM}}},
	}
	srv := NewServer(ServerConfig{Registry: reg, Debounce: 10 * time.Millisecond, Generator: &proxyview.Generator{Registry: reg, Config: cfg},
		Credentials: allowSA("istio-ingressgateway-service-account")})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go srv.Run(ctx)

	// Two ports as the control plane has them: plaintext, and one whose
	// streams carry the identity a token proved (here: the test's
	// "sa" and "cluster" metadata stand for the reviewed token).
	plain, secure := grpc.NewServer(), grpc.NewServer(grpc.StreamInterceptor(Authenticated(func(ctx context.Context) (Identity, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		return Identity{Cluster: md.Get("cluster")[0], Namespace: "istio-system", ServiceAccount: md.Get("sa")[0]}, nil
	})))
	srv.Register(plain, secure)
	addr := func(g *grpc.Server) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go g.Serve(l)
		t.Cleanup(g.Stop)
		conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn.Target()
	}
	plainAddr, secureAddr := addr(plain), addr(secure)

	const gwID = "router~10.0.0.9~istio-ingressgateway-1.istio-system~istio-system.svc.cluster.local"
	gwLabels := map[string]string{"CLUSTER_ID": "c1"}
	node := func(id string, md map[string]string) *core.Node {
		n := &core.Node{Id: id, Metadata: proxyview.NodeMetadata(md)}
		n.Metadata.Fields["LABELS"] = structpb.NewStructValue(proxyview.NodeMetadata(map[string]string{"istio": "ingressgateway"}))
		return n
	}
	// askSecret opens a stream and asks for kubernetes://shop-cert; it
	// returns the secrets received within a few seconds, or the stream's error.
	askSecret := func(target string, md metadata.MD, n *core.Node) ([]*tlsv3.Secret, error) {
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		sctx, scancel := context.WithTimeout(metadata.NewOutgoingContext(ctx, md), 3*time.Second)
		defer scancel()
		stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		if err != nil {
			return nil, err
		}
		if err := stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"kubernetes://shop-cert"}, Node: n}); err != nil {
			return nil, err
		}
		for {
			r, err := stream.Recv()
			if err != nil {
				return nil, err
			}
			if r.TypeUrl != resource.SecretType {
				continue
			}
			var out []*tlsv3.Secret
			for _, a := range r.Resources {
				var s tlsv3.Secret
				if err := a.UnmarshalTo(&s); err != nil {
					t.Fatal(err)
				}
				out = append(out, &s)
			}
			return out, nil
		}
	}
	hasKey := func(ss []*tlsv3.Secret) bool {
		for _, s := range ss {
			if len(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) > 0 {
				return true
			}
		}
		return false
	}
	gwMD := metadata.Pairs("cluster", "c1", "sa", "istio-ingressgateway-service-account")

	// The gateway's own stream keeps running through the attacks below.
	gwConn, err := grpc.NewClient(secureAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer gwConn.Close()
	gwStream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(gwConn).StreamAggregatedResources(metadata.NewOutgoingContext(ctx, gwMD))
	if err != nil {
		t.Fatal(err)
	}
	if err := gwStream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"kubernetes://shop-cert"}, Node: node(gwID, gwLabels)}); err != nil {
		t.Fatal(err)
	}
	first, err := gwStream.Recv()
	if err != nil || len(first.Resources) != 1 {
		t.Fatalf("the authorized gateway got %v (%v), want its credential", first, err)
	}

	t.Run("plaintext: a node claiming to be the ingress gateway gets no credential", func(t *testing.T) {
		ss, err := askSecret(plainAddr, nil, node(gwID, gwLabels))
		if err != nil || len(ss) != 0 {
			t.Fatalf("got %d secrets (private key: %v), err %v; want an empty answer", len(ss), hasKey(ss), err)
		}
	})
	t.Run("authenticated, service account without access to Secrets: no credential", func(t *testing.T) {
		ss, err := askSecret(secureAddr, metadata.Pairs("cluster", "c1", "sa", "default"), node(strings.NewReplacer("-1.", "-2.", "10.0.0.9", "10.0.0.10").Replace(gwID), gwLabels))
		if err != nil || len(ss) != 0 {
			t.Fatalf("got %d secrets (private key: %v), err %v; want an empty answer", len(ss), hasKey(ss), err)
		}
	})
	t.Run("authenticated in one cluster, claiming another: refused", func(t *testing.T) {
		_, err := askSecret(secureAddr, metadata.Pairs("cluster", "c2", "sa", "istio-ingressgateway-service-account"), node(gwID, gwLabels))
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `claims cluster "c1"`) {
			t.Fatalf("err %v, want PermissionDenied naming the claimed cluster", err)
		}
	})
	t.Run("authorized gateway: certificate and key", func(t *testing.T) {
		ss, err := askSecret(secureAddr, gwMD, node(strings.NewReplacer("-1.", "-3.", "10.0.0.9", "10.0.0.11").Replace(gwID), gwLabels))
		if err != nil || len(ss) != 1 || !hasKey(ss) {
			t.Fatalf("got %d secrets (private key: %v), err %v", len(ss), hasKey(ss), err)
		}
	})
	t.Run("a plaintext stream naming the gateway's node ID does not touch its state", func(t *testing.T) {
		conn, err := grpc.NewClient(plainAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		liar, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := liar.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{"kubernetes://shop-cert"},
			Node: node(gwID, map[string]string{"CLUSTER_ID": "elsewhere"})}); err != nil {
			t.Fatal(err)
		}
		if r, err := liar.Recv(); err != nil || len(r.Resources) != 0 {
			t.Fatalf("the liar got %v (%v)", r, err)
		}
		srv.Trigger() // a push: every connected proxy's view is generated again
		clusters := map[string]bool{}
		for _, st := range srv.Syncz() {
			if st.ProxyID == "istio-ingressgateway-1.istio-system" { // gwID's POD.NAMESPACE
				clusters[st.ClusterID] = true
			}
		}
		if len(clusters) != 2 || !clusters["c1"] || !clusters["elsewhere"] {
			t.Fatalf("proxies named %s: clusters %v, want the gateway's (c1) and the liar's apart", gwID, clusters)
		}
		time.Sleep(100 * time.Millisecond) // the push's debounce
		gwKey := ""
		srv.mu.Lock()
		for k, st := range srv.proxies {
			if st.proxy.ID == gwID && st.proxy.identity != nil {
				gwKey = k
			}
		}
		srv.mu.Unlock()
		if snap := srv.snapshot(gwKey); snap == nil || len(snap.GetResources(resource.SecretType)) != 1 {
			t.Fatalf("the gateway's snapshot lost its credential")
		}
	})
}

// gatewayConfig is Istio configuration of Gateways with their Secrets.
type gatewayConfig struct {
	gws     []*networkingv1.Gateway
	secrets map[string]*corev1.Secret
}

func (c gatewayConfig) Gateways() []*networkingv1.Gateway                      { return c.gws }
func (gatewayConfig) VirtualServices() []*networkingv1.VirtualService          { return nil }
func (gatewayConfig) DestinationRules() []*networkingv1.DestinationRule        { return nil }
func (gatewayConfig) PeerAuthentications() []*securityv1.PeerAuthentication    { return nil }
func (gatewayConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return nil }
func (c gatewayConfig) Secret(ns, name string) *corev1.Secret                  { return c.secrets[ns+"/"+name] }

func (gatewayConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (gatewayConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }
