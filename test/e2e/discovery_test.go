package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	xdsresolver "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/xds"
)

// adsClient is a minimal state-of-the-world ADS client that ACKs everything
// and keeps the latest clusters and load assignments.
type adsClient struct {
	mu        sync.Mutex
	listeners map[string]*listener.Listener
	clusters  map[string]*cluster.Cluster
	endpoints map[string]*endpoint.ClusterLoadAssignment
	changed   chan struct{}
	askedLDS  bool
}

// filterChains lists a listener's chains as "name server_names".
func (c *adsClient) filterChains(name string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, fc := range c.listeners[name].GetFilterChains() {
		out = append(out, fc.GetName()+" "+strings.Join(fc.GetFilterChainMatch().GetServerNames(), ","))
	}
	return out
}

func dialADS(t *testing.T, addr, nodeID string, md map[string]any) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{listeners: map[string]*listener.Listener{}, clusters: map[string]*cluster.Cluster{}, endpoints: map[string]*endpoint.ClusterLoadAssignment{}, changed: make(chan struct{}, 1)}
	meta, err := structpb.NewStruct(md)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: nodeID, Metadata: meta}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			var names []string
			c.mu.Lock()
			switch resp.TypeUrl {
			case resource.ClusterType:
				c.clusters = map[string]*cluster.Cluster{}
				for _, a := range resp.Resources {
					var cl cluster.Cluster
					if a.UnmarshalTo(&cl) == nil {
						c.clusters[cl.Name] = &cl
						names = append(names, cl.Name)
					}
				}
			case resource.ListenerType:
				c.listeners = map[string]*listener.Listener{}
				for _, a := range resp.Resources {
					var l listener.Listener
					if a.UnmarshalTo(&l) == nil {
						c.listeners[l.Name] = &l
					}
				}
			case resource.EndpointType:
				for _, a := range resp.Resources {
					var cla endpoint.ClusterLoadAssignment
					if a.UnmarshalTo(&cla) == nil {
						c.endpoints[cla.ClusterName] = &cla
					}
				}
			}
			c.mu.Unlock()
			_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
			if resp.TypeUrl == resource.ClusterType {
				// Subscribe to every cluster's endpoints, as Envoy does after
				// CDS, and to listeners.
				_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: names})
				if !c.askedLDS {
					c.askedLDS = true
					_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.ListenerType})
				}
			}
			select {
			case c.changed <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

// lbEndpoints renders a load assignment as "addr:port/weight" strings.
func (c *adsClient) lbEndpoints(name string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, l := range c.endpoints[name].GetEndpoints() {
		for _, e := range l.LbEndpoints {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d/%d", sa.GetAddress(), sa.GetPortValue(), e.GetLoadBalancingWeight().GetValue()))
		}
	}
	return out
}

func (c *adsClient) hasListener(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.listeners[name]
	return ok
}

func (c *adsClient) hasCluster(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.clusters[name]
	return ok
}

// handedOut are the ports freePort gave, never given twice in a run.
var handedOut sync.Map

// freePort picks a free port below the kernel's ephemeral range
// (32768-60999 by default): a port from :0 is an ephemeral one, which the
// kernel may hand to an outgoing connection (a control plane dialling an
// API server) before the process that was meant to listen on it starts.
func freePort(t *testing.T) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		if _, taken := handedOut.LoadOrStore(port, true); taken {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatal("no free port in 20000-32000")
	return 0
}

func meshApp(network string, replicas int) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata: {name: istio-system, labels: {topology.istio.io/network: %[1]s}}
---
apiVersion: v1
kind: Namespace
metadata: {name: multicluster}
---
apiVersion: v1
kind: Service
metadata: {name: istio-eastwestgateway, namespace: istio-system, labels: {topology.istio.io/network: %[1]s, istio: eastwestgateway}}
spec:
  type: LoadBalancer
  selector: {istio: eastwestgateway}
  ports:
  - {name: status-port, port: 15021}
  - {name: tls, port: 15443}
---
apiVersion: v1
kind: Service
metadata: {name: profile, namespace: multicluster}
spec:
  selector: {app: profile}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: profile, namespace: multicluster}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: profile}}
  template:
    metadata: {labels: {app: profile, security.istio.io/tlsMode: istio}}
    spec:
      containers:
      - name: profile
        image: isthmus/demo-app
        args: [profile]
        readinessProbe: {httpGet: {port: 8080, path: /healthz}, periodSeconds: 1}
`, network, replicas)
}

// example reads a file of the walkthrough (examples/primary-remote-multinetwork):
// expose-services.yaml and expose-istiod.yaml are Istio's multicluster samples.
func example(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examples, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDiscoveryAcrossClusters(t *testing.T) {
	e := upSandbox(t)
	e.apply("cluster-eks", meshApp("network1", 2))
	e.apply("cluster-aks", meshApp("network2", 1))
	eksPods := e.waitReady("cluster-eks", "multicluster", "app=profile", 2)
	e.waitReady("cluster-aks", "multicluster", "app=profile", 1)
	var aksGW string
	eventually(t, "cluster-aks east-west gateway address", func() bool {
		s, err := e.clients["cluster-aks"].CoreV1().Services("istio-system").Get(context.Background(), "istio-eastwestgateway", metav1.GetOptions{})
		if err == nil && len(s.Status.LoadBalancer.Ingress) > 0 {
			aksGW = s.Status.LoadBalancer.Ingress[0].IP
		}
		return aksGW != ""
	})

	// The address a user copies into remotePilotAddress, as the CLI prints it.
	aksAdmin := filepath.Join(t.TempDir(), "aks-admin.kubeconfig")
	_ = os.WriteFile(aksAdmin, []byte(isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "kubeconfig", "--cluster", "cluster-aks").stdout), 0o600)
	if r := isthmus(t, time.Minute, "gateway", "address", "--kubeconfig", aksAdmin); r.err != nil || strings.TrimSpace(r.stdout) != aksGW {
		t.Errorf("gateway address printed %q (%v), want %s", r.stdout, r.err, aksGW)
	}
	if r := isthmus(t, time.Minute, "gateway", "address", "--kubeconfig", aksAdmin, "--name", "nope"); r.err == nil || !strings.Contains(r.stderr, "install the east-west gateway first") {
		t.Errorf("missing gateway: %v %s", r.err, r.stderr)
	}

	// The control plane runs out of cluster with cluster-eks's credentials only.
	cp := e.startDiscovery(t, "cluster-eks", "network1")
	xdsAddr, get := cp.xds, cp.get

	profile := proxyview.OutboundCluster(8080, "", "profile.multicluster.svc.cluster.local")
	sleep := dialADS(t, xdsAddr, "sidecar~100.64.0.99~sleep-1.multicluster~multicluster.svc.cluster.local",
		map[string]any{"CLUSTER_ID": "cluster-eks", "NETWORK": "network1"})
	want := func(c *adsClient, what string, cond func([]string) bool) {
		t.Helper()
		eventually(t, what, func() bool { return cond(c.lbEndpoints(profile)) })
	}
	local := map[string]bool{eksPods[0].Status.PodIP + ":8080/1": true, eksPods[1].Status.PodIP + ":8080/1": true}
	onlyLocal := func(eps []string) bool {
		if len(eps) != 2 {
			return false
		}
		for _, e := range eps {
			if !local[e] {
				return false
			}
		}
		return true
	}
	// withGateway: both local pods and the cluster-aks gateway with weight w, in any order.
	withGateway := func(w int) func(eps []string) bool {
		return func(eps []string) bool {
			gw, loc := 0, 0
			for _, e := range eps {
				switch {
				case local[e]:
					loc++
				case e == fmt.Sprintf("%s:15443/%d", aksGW, w):
					gw++
				}
			}
			return len(eps) == 3 && gw == 1 && loc == 2
		}
	}

	t.Run("before the remote secret a sidecar sees only local endpoints", func(t *testing.T) {
		want(sleep, "two local profile endpoints", onlyLocal)
		if !sleep.hasCluster(profile) {
			t.Fatalf("no cluster %s", profile)
		}
		eventually(t, "the sidecar's outbound listeners", func() bool {
			return sleep.hasListener("virtualOutbound") && sleep.hasListener("0.0.0.0_8080")
		})
	})

	secret := func(name, cluster, kubeconfig string) *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "istio-system",
				Labels: map[string]string{"istio/multiCluster": "true"}, Annotations: map[string]string{"networking.istio.io/cluster": cluster}},
			StringData: map[string]string{cluster: kubeconfig},
		}
	}
	secrets := e.clients["cluster-eks"].CoreV1().Secrets("istio-system")

	t.Run("create-remote-secret's output brings the remote endpoints within 2 s, as the gateway address weighted by count", func(t *testing.T) {
		// Run against the remote with its admin credentials, as a user would;
		// the Secret it prints carries the remote's least-privilege reader token.
		admin := filepath.Join(t.TempDir(), "aks.kubeconfig")
		_ = os.WriteFile(admin, []byte(isthmus(t, time.Minute, "sandbox", "--state-dir", e.state, "kubeconfig", "--cluster", "cluster-aks").stdout), 0o600)
		r := isthmus(t, time.Minute, "create-remote-secret", "--kubeconfig", admin, "--name", "cluster-aks")
		if r.err != nil || !strings.HasPrefix(r.stdout, "# This file is autogenerated") || !strings.Contains(r.stdout, "istio/multiCluster") {
			t.Fatalf("create-remote-secret: %v\n%s%s", r.err, r.stdout, r.stderr)
		}
		start := time.Now()
		if out, err := e.kubectl("cluster-eks", r.stdout, "apply", "-f", "-"); err != nil {
			t.Fatalf("apply the remote secret: %v %s", err, out)
		}
		want(sleep, "local endpoints plus the cluster-aks gateway", withGateway(1))
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("remote endpoints took %s to reach the proxy (goal 2 s)", d)
		}
	})

	t.Run("a second remote replica doubles the gateway's weight", func(t *testing.T) {
		if _, err := e.kubectl("cluster-aks", "", "-n", "multicluster", "scale", "deployment/profile", "--replicas=2"); err != nil {
			t.Fatal(err)
		}
		want(sleep, "gateway weight 2", withGateway(2))
	})

	t.Run("the east-west gateway sees only its own network, under SNI cluster names", func(t *testing.T) {
		gw := dialADS(t, xdsAddr, "router~100.64.0.98~istio-eastwestgateway-1.istio-system~istio-system.svc.cluster.local",
			map[string]any{"CLUSTER_ID": "cluster-eks", "NETWORK": "network1", "REQUESTED_NETWORK_VIEW": "network1",
				"LABELS": map[string]any{"istio": "eastwestgateway", "app": "istio-eastwestgateway"}})
		sni := proxyview.SNI(8080, "", "profile.multicluster.svc.cluster.local")
		eventually(t, "SNI cluster with the two local endpoints", func() bool {
			eps := gw.lbEndpoints(sni)
			return gw.hasCluster(sni) && len(eps) == 2 && local[eps[0]] && local[eps[1]]
		})

		// The seed's expose-services.yaml and expose-istiod.yaml, applied unchanged.
		e.installIstioCRDs(t, "cluster-eks")
		e.apply("cluster-eks", example(t, "expose-services.yaml")+"---\n"+example(t, "expose-istiod.yaml"))
		eventually(t, "AUTO_PASSTHROUGH on 15443 with an SNI chain for profile", func() bool {
			for _, fc := range gw.filterChains("0.0.0.0_15443") {
				if fc == sni+" "+sni {
					return true
				}
			}
			return false
		})
		eventually(t, "TLS passthrough of 15012 and 15017 to the control plane", func() bool {
			a, b := gw.filterChains("0.0.0.0_15012"), gw.filterChains("0.0.0.0_15017")
			return len(a) == 1 && len(b) == 1
		})
		if sleep.filterChains("0.0.0.0_15443") != nil {
			t.Error("a sidecar received the gateway's listener")
		}
	})

	t.Run("a broken remote secret is reported and the other clusters stay served", func(t *testing.T) {
		if _, err := secrets.Create(context.Background(), secret("istio-remote-secret-broken", "cluster-broken", "this is not a kubeconfig"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// cluster-aks's own API server, but without verifying its certificate:
		// refused, as a man in the middle would be believed.
		aks, _ := os.ReadFile(aksAdmin)
		insecure := regexp.MustCompile(`(?m)^(\s*)certificate-authority-data: .*$`).ReplaceAllString(string(aks), "${1}insecure-skip-tls-verify: true")
		if insecure == string(aks) {
			t.Fatalf("no certificate-authority-data to replace in\n%s", aks)
		}
		if _, err := secrets.Create(context.Background(), secret("istio-remote-secret-insecure", "cluster-insecure", insecure), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		eventually(t, "cluster-broken and cluster-insecure in error, cluster-aks synced", func() bool {
			var st []struct{ ID, State, Error string }
			if json.Unmarshal([]byte(get("/debug/clusterz")), &st) != nil {
				return false
			}
			ok := 0
			for _, s := range st {
				if (s.ID == "cluster-broken" && s.State == "error" && strings.Contains(s.Error, "kubeconfig")) ||
					(s.ID == "cluster-insecure" && s.State == "error" && strings.Contains(s.Error, "insecure-skip-tls-verify")) ||
					(s.ID == "cluster-aks" && s.State == "synced") {
					ok++
				}
			}
			return ok == 3
		})
		eventually(t, "metrics reporting the broken cluster", func() bool {
			return strings.Contains(get("/metrics"), `istiod_remote_cluster_sync_status{cluster="cluster-broken",status="error"} 1`)
		})
		if eps := sleep.lbEndpoints(profile); len(eps) != 3 {
			t.Fatalf("endpoints changed after a broken secret: %v", eps)
		}
	})

	t.Run("proxy status shows what each proxy acknowledged", func(t *testing.T) {
		eventually(t, "the sidecar acked cds and eds", func() bool {
			var st []xds.SyncStatus
			if json.Unmarshal([]byte(get("/debug/syncz")), &st) != nil {
				return false
			}
			for _, s := range st {
				if s.ProxyType == "sidecar" && s.ClusterAcked != "" && s.ClusterAcked == s.ClusterSent && s.EndpointAcked == s.EndpointSent {
					return true
				}
			}
			return false
		})
	})

	t.Run("a node's status written again pushes nothing; its zone changed is a full push, saying why", func(t *testing.T) {
		// Kubelets write their Node's status every few seconds to minutes;
		// each write once recomputed the whole cluster and pushed
		// everything to every proxy.
		resyncs := func() int {
			b, _ := os.ReadFile(cp.log)
			n := 0
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "msg=pushed") && strings.Contains(line, "full=true") && strings.Contains(line, `cluster cluster-eks synced`) {
					n++
				}
			}
			return n
		}
		nodes := e.clients["cluster-eks"].CoreV1().Nodes()
		list, err := nodes.List(context.Background(), metav1.ListOptions{})
		if err != nil || len(list.Items) == 0 {
			t.Fatalf("cluster-eks's nodes: %v", err)
		}
		name := list.Items[0].Name
		before := resyncs()
		for range 3 {
			n, err := nodes.Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for i := range n.Status.Conditions {
				n.Status.Conditions[i].LastHeartbeatTime = metav1.Now()
			}
			if _, err := nodes.UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
		}
		time.Sleep(time.Second)
		if got := resyncs(); got != before {
			t.Fatalf("%d full pushes recomputing cluster-eks after three writes of its node's status, want none", got-before)
		}
		setZone := func(zone string) {
			t.Helper()
			n, err := nodes.Get(context.Background(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if n.Labels == nil {
				n.Labels = map[string]string{}
			}
			n.Labels[corev1.LabelTopologyZone] = zone
			if zone == "" {
				delete(n.Labels, corev1.LabelTopologyZone)
			}
			if _, err := nodes.Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		n, _ := nodes.Get(context.Background(), name, metav1.GetOptions{})
		zone := n.Labels[corev1.LabelTopologyZone]
		setZone(zone + "-moved")
		eventually(t, "a full push recomputing cluster-eks after its node's zone changed", func() bool { return resyncs() > before })
		setZone(zone)
		eventually(t, "a full push after the zone is put back", func() bool { return resyncs() > before+1 })
	})

	t.Run("grpc-go's own xDS client resolves and calls a service through the control plane", func(t *testing.T) {
		// A gRPC server on the host's sandbox address, registered as a Service
		// with a hand-written EndpointSlice: reachable from the test process.
		l, err := net.Listen("tcp", "198.18.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		gs := grpc.NewServer()
		hs := health.NewServer()
		healthpb.RegisterHealthServer(gs, hs)
		go gs.Serve(l)
		defer gs.Stop()
		e.apply("cluster-eks", fmt.Sprintf(`
apiVersion: v1
kind: Service
metadata: {name: greeter, namespace: multicluster}
spec:
  ports: [{name: grpc, port: %[1]d}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: greeter-host, namespace: multicluster, labels: {kubernetes.io/service-name: greeter}}
addressType: IPv4
endpoints: [{addresses: ["198.18.0.1"], conditions: {ready: true}}]
ports: [{name: grpc, port: %[1]d}]
`, port))
		bootstrap := fmt.Sprintf(`{"xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
"node": {"id": "sidecar~198.18.0.1~grpc-client.multicluster~multicluster.svc.cluster.local",
  "metadata": {"GENERATOR": "grpc", "CLUSTER_ID": "cluster-eks", "NETWORK": "network1"}}}`, xdsAddr)
		// grpc-go reads its bootstrap environment at init; pass it explicitly.
		builder, err := xdsresolver.NewXDSResolverWithConfigForTesting([]byte(bootstrap))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(fmt.Sprintf("xds:///greeter.multicluster.svc.cluster.local:%d", port),
			grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(builder))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		if err != nil {
			t.Logf("syncz: %s", get("/debug/syncz"))
			t.Fatalf("call through grpc-go's xDS resolver: %v", err)
		}
		if resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Logf("registry: %s", get("/debug/registryz"))
			t.Fatalf("health: %v", resp.Status)
		}
	})

	t.Run("deleting the remote secret removes the remote endpoints", func(t *testing.T) {
		if err := secrets.Delete(context.Background(), "istio-remote-secret-cluster-aks", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		want(sleep, "only local endpoints again", onlyLocal)
	})
}
