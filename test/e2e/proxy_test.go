package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	apinetworking "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/discovery/ca/catest"
	"github.com/isthmus-mesh/isthmus/internal/discovery/proxyview"
	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/sandbox/network"
)

// Two pods and a gateway in network namespaces of their own on one bridge,
// no Kubernetes: each pod gets `isthmus proxy init` and a sidecar running
// as uid 1337, fed by a test xDS server (go-control-plane's, with resources
// from isthmus's own generators) and a test CA over Unix sockets.
const (
	nsBridge  = "isthmus-ptest-br"
	nsSleep   = "isthmus-ptest-a"
	nsProfile = "isthmus-ptest-b"
	nsGW      = "isthmus-ptest-gw"
	ipSleep   = "10.213.0.1"
	ipProfile = "10.213.0.2"
	ipGW      = "10.213.0.3"
	vipProf   = "10.96.213.10"
	vipAcct   = "10.96.213.11"
	profHost  = "profile.test.svc.cluster.local"
)

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

// pod is a network namespace with an address on the test bridge.
type pod struct{ ns, ip string }

var meshPods = []pod{{nsSleep, ipSleep}, {nsProfile, ipProfile}, {nsGW, ipGW}}

// podNetworks builds the namespaces: each pod's veth ends on a bridge.
func podNetworks(t testing.TB, pods []pod) {
	t.Helper()
	all := []string{nsBridge}
	for _, p := range pods {
		all = append(all, p.ns)
	}
	cleanup := func() {
		for _, n := range all {
			_ = exec.Command("ip", "netns", "del", n).Run()
		}
	}
	cleanup()
	t.Cleanup(cleanup)
	for _, n := range all {
		sh(t, "ip", "netns", "add", n)
		sh(t, "ip", "-n", n, "link", "set", "lo", "up")
	}
	sh(t, "ip", "-n", nsBridge, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", nsBridge, "link", "set", "br0", "up")
	for i, p := range pods {
		host, pod := fmt.Sprintf("ptb%d", i), fmt.Sprintf("ptp%d", i)
		sh(t, "ip", "-n", nsBridge, "link", "add", host, "type", "veth", "peer", "name", pod, "netns", p.ns)
		sh(t, "ip", "-n", nsBridge, "link", "set", host, "master", "br0", "up")
		sh(t, "ip", "-n", p.ns, "addr", "add", p.ip+"/24", "dev", pod)
		sh(t, "ip", "-n", p.ns, "link", "set", pod, "up")
		sh(t, "ip", "-n", p.ns, "route", "add", "default", "dev", pod)
	}
}

// stopProcess asks a started process to stop with sig and waits for it,
// killing it after grace.
func stopProcess(cmd *exec.Cmd, sig os.Signal, grace time.Duration) {
	_ = cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
}

// inNS runs isthmus-proxy, what injected pods run, in a namespace, as
// uid/gid 1337 if proxy: the proxies' memory and CPU figures are a pod's.
func inNS(ns string, asProxy bool, args ...string) *exec.Cmd {
	a := []string{"--net=/run/netns/" + ns}
	if asProxy {
		a = append(a, "--setuid", "1337", "--setgid", "1337")
	}
	return exec.Command("nsenter", append(append(a, proxyBin), args...)...)
}

// profileApp serves, inside the profile pod: HTTP/1.1 and h2c on 8080
// (answers with the protocol and XFCC it saw), gRPC health on 9090, and a
// line echo on 7070.
func profileApp(t *testing.T) {
	t.Helper()
	l, err := network.Listen(nsProfile, "tcp", "0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	// The same app on 8081, a port whose protocol the Service does not declare.
	l2, err := network.Listen(nsProfile, "tcp", "0.0.0.0:8081")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	hs := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"proto": r.Proto, "xfcc": r.Header.Get("X-Forwarded-Client-Cert"), "host": r.Host})
	})}
	go hs.Serve(l)
	go hs.Serve(l2)
	t.Cleanup(func() { hs.Close() })
	gl, err := network.Listen(nsProfile, "tcp", "0.0.0.0:9090")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(gl)
	t.Cleanup(gs.Stop)
	for _, addr := range []string{"0.0.0.0:7070", "0.0.0.0:7071"} {
		el, err := network.Listen(nsProfile, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { el.Close() })
		go func() {
			for {
				c, err := el.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
	}
}

// gatewayConfig selects the router for AUTO_PASSTHROUGH on 15443, as the
// seed's expose-services.yaml does.
type gatewayConfig struct{}

func (gatewayConfig) Gateways() []*networkingv1.Gateway {
	return []*networkingv1.Gateway{{ObjectMeta: metav1.ObjectMeta{Name: "cross-network-gateway", Namespace: "istio-system"},
		Spec: apinetworking.Gateway{Selector: map[string]string{"istio": "eastwestgateway"}, Servers: []*apinetworking.Server{{
			Port:  &apinetworking.Port{Number: 15443, Name: "tls", Protocol: "TLS"},
			Tls:   &apinetworking.ServerTLSSettings{Mode: apinetworking.ServerTLSSettings_AUTO_PASSTHROUGH},
			Hosts: []string{"*.local"},
		}}}}}
}
func (gatewayConfig) VirtualServices() []*networkingv1.VirtualService          { return nil }
func (gatewayConfig) DestinationRules() []*networkingv1.DestinationRule        { return nil }
func (gatewayConfig) PeerAuthentications() []*securityv1.PeerAuthentication    { return nil }
func (gatewayConfig) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return nil }

// meshRegistry is the test mesh: profile (http 8080, grpc 9090, tcp 7070),
// and accounts once `accounts` is set, both on the profile pod.
func meshRegistry(accounts bool) *registry.Registry {
	reg := registry.New()
	ports := []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"},
		{Name: "grpc", Port: 9090, Protocol: "TCP", AppProtocol: "grpc"}, {Name: "tcp-echo", Port: 7070, Protocol: "TCP", AppProtocol: "tcp"},
		// Undeclared protocols: sniffed.
		{Name: "web", Port: 8081, Protocol: "TCP"}, {Name: "echo", Port: 7071, Protocol: "TCP"}}
	ep := registry.Endpoint{Address: ipProfile, Ports: map[string]int32{"http": 8080, "grpc": 9090, "tcp-echo": 7070, "web": 8081, "echo": 7071}, Cluster: "c1", Network: "n1",
		ServiceAccount: "profile", Namespace: "test", TLSMode: "istio", Ready: true}
	reg.SetService("c1", profHost, &registry.Service{Namespace: "test", Name: "profile", Hostname: profHost, Ports: ports, ClusterIP: vipProf})
	reg.SetEndpoints("c1", profHost, []registry.Endpoint{ep})
	if accounts {
		h := "accounts.test.svc.cluster.local"
		reg.SetService("c1", h, &registry.Service{Namespace: "test", Name: "accounts", Hostname: h, Ports: ports[:1], ClusterIP: vipAcct})
		reg.SetEndpoints("c1", h, []registry.Endpoint{ep})
	}
	return reg
}

// snapshot is what one proxy is sent, built by isthmus's generators.
func snapshot(t testing.TB, version string, reg *registry.Registry, node string, strict bool, mutate func(map[resource.Type][]types.Resource)) *cachev3.Snapshot {
	t.Helper()
	p, err := proxyview.ParseNode(nodeProto(node))
	if err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"istio": "eastwestgateway"}
	// As the control plane sets it: clients pin their servers' accounts.
	p.TrustDomains = []string{"cluster.local"}
	g := proxyview.Generate(p, reg, gatewayConfig{}, "cluster.local", func(string) {}, nil)
	rs := map[resource.Type][]types.Resource{resource.ClusterType: g.Clusters, resource.EndpointType: g.Endpoints, resource.ListenerType: g.Listeners}
	if p.Type == proxyview.Sidecar {
		rs[resource.RouteType] = proxyview.SidecarRoutes("test", "", reg.Services(), nil, "istio-system", "cluster.local", nil)
		modes := proxyview.MTLSModes{}
		if strict {
			modes.Default = proxyview.Strict
		}
		in, cls := proxyview.Inbound(proxyview.NewInboundIndex(reg, reg.Services()).For(p.Namespace, p.IP), proxyview.InboundPolicy{MTLS: modes, TrustDomains: p.TrustDomains})
		rs[resource.ListenerType] = append(rs[resource.ListenerType], in)
		rs[resource.ClusterType] = append(rs[resource.ClusterType], cls...)
	}
	if mutate != nil {
		mutate(rs)
	}
	s, err := cachev3.NewSnapshot(version, rs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// xdsServer serves a snapshot cache on a Unix socket; stop and start it to
// take the control plane away and bring it back.
type xdsServer struct {
	t     testing.TB
	path  string
	cache cachev3.SnapshotCache
	mu    sync.Mutex
	g     *grpc.Server
}

func (x *xdsServer) start() {
	x.mu.Lock()
	defer x.mu.Unlock()
	_ = os.Remove(x.path)
	l, err := net.Listen("unix", x.path)
	if err != nil {
		x.t.Fatal(err)
	}
	_ = os.Chmod(x.path, 0o777)
	x.g = grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(x.g, serverv3.NewServer(context.Background(), x.cache, nil))
	go x.g.Serve(l)
}

func (x *xdsServer) stop() {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.g.Stop()
}

func (x *xdsServer) set(node string, s *cachev3.Snapshot) {
	if err := x.cache.SetSnapshot(context.Background(), node, s); err != nil {
		x.t.Fatal(err)
	}
}

const (
	sleepNode   = "sidecar~" + ipSleep + "~sleep.test~test.svc.cluster.local"
	profileNode = "sidecar~" + ipProfile + "~profile.test~test.svc.cluster.local"
	gwNode      = "router~" + ipGW + "~gw.istio-system~istio-system.svc.cluster.local"
)

// proxyFlags are added to every proxy's command line (benchmarks clear them).
var proxyFlags = []string{"-v", "--access-log", "/dev/stdout"}

// runProxy starts `isthmus-proxy proxy sidecar|router` in a namespace as uid 1337.
func runProxy(t testing.TB, ns, kind, node, dir, token string) *exec.Cmd {
	t.Helper()
	parts := strings.Split(node, "~")
	pod, podNS, _ := strings.Cut(parts[2], ".")
	tokenFile := filepath.Join(dir, pod+".token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, pod+".log")
	logf, _ := os.Create(logPath)
	args := append([]string{"proxy", kind}, proxyFlags...)
	cmd := inNS(ns, true, append(args, "--discovery-address", "unix://"+filepath.Join(dir, "xds.sock"), "--plaintext",
		"--ca-address", "unix://"+filepath.Join(dir, "ca.sock"), "--server-name", "istiod.istio-system.svc",
		"--root-cert", filepath.Join(dir, "root.pem"), "--token", tokenFile, "--labels-file", "/nonexistent",
		"--ip", parts[1], "--pod", pod, "--namespace", podNS, "--drain-duration", "1s")...)
	cmd.Env = append(os.Environ(), "ISTIO_META_CLUSTER_ID=c1", "ISTIO_META_NETWORK=n1")
	if kind == "router" {
		cmd.Env = append(cmd.Env, `ISTIO_METAJSON_LABELS={"istio":"eastwestgateway"}`, "ISTIO_META_REQUESTED_NETWORK_VIEW=n1")
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopProcess(cmd, os.Interrupt, 10*time.Second)
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s %s log:\n%s", kind, pod, b)
		}
	})
	return cmd
}

// adminGet reads the proxy admin inside a namespace.
func adminGet(ns, path string) string { return adminGetTimeout(ns, path, 5*time.Second) }

func adminGetTimeout(ns, path string, timeout time.Duration) string {
	c := &http.Client{Transport: &http.Transport{DialContext: network.Dialer(ns)}, Timeout: timeout}
	resp, err := c.Get("http://127.0.0.1:15000" + path)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// appCall is an HTTP call from the sleep pod's app (root: captured).
func appCall(h2 bool, url string) (map[string]string, error) {
	var protos http.Protocols
	if h2 {
		protos.SetUnencryptedHTTP2(true)
	} else {
		protos.SetHTTP1(true)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protos, DialContext: network.Dialer(nsSleep)}}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	out := map[string]string{}
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// testMesh is the control plane and proxies of the namespace pods.
type testMesh struct {
	dir   string
	x     *xdsServer
	root  []byte
	procs map[string]*exec.Cmd // by namespace
}

// startMesh captures the sleep and profile pods' traffic, serves the CA and
// xDS for reg, and starts the two sidecars and the router.
func startMesh(t testing.TB, reg *registry.Registry) *testMesh {
	t.Helper()
	// Readable by the proxies (uid 1337), unlike t.TempDir's parent.
	dir, err := os.MkdirTemp("", "isthmus-proxy-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, ns := range []string{nsSleep, nsProfile} {
		if out, err := inNS(ns, false, "proxy", "init").CombinedOutput(); err != nil {
			t.Fatalf("proxy init in %s: %v\n%s", ns, err, out)
		}
	}
	cal, err := net.Listen("unix", filepath.Join(dir, "ca.sock"))
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Join(dir, "ca.sock"), 0o777)
	root := catest.Serve(t, cal, "istiod.istio-system.svc", catest.TokenAuth{
		"sleep-token":   {Cluster: "c1", Namespace: "test", ServiceAccount: "sleep"},
		"profile-token": {Cluster: "c1", Namespace: "test", ServiceAccount: "profile"},
		"gw-token":      {Cluster: "c1", Namespace: "istio-system", ServiceAccount: "istio-eastwestgateway"},
		"client-token":  {Cluster: "c1", Namespace: "test", ServiceAccount: "client"},
	})
	if err := os.WriteFile(filepath.Join(dir, "root.pem"), root, 0o644); err != nil {
		t.Fatal(err)
	}
	x := &xdsServer{t: t, path: filepath.Join(dir, "xds.sock"), cache: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)}
	x.start()
	t.Cleanup(x.stop)
	for _, n := range []string{sleepNode, profileNode, gwNode} {
		x.set(n, snapshot(t, "1", reg, n, false, nil))
	}
	m := &testMesh{dir: dir, x: x, root: root, procs: map[string]*exec.Cmd{
		nsSleep:   runProxy(t, nsSleep, "sidecar", sleepNode, dir, "sleep-token"),
		nsProfile: runProxy(t, nsProfile, "sidecar", profileNode, dir, "profile-token"),
		nsGW:      runProxy(t, nsGW, "router", gwNode, dir, "gw-token"),
	}}
	for _, ns := range []string{nsSleep, nsProfile, nsGW} {
		eventually(t, "proxy in "+ns+" ready", func() bool { return strings.HasPrefix(adminGet(ns, "/ready"), "LIVE") })
	}
	return m
}

func TestSidecarsAndRouter(t *testing.T) {
	podNetworks(t, meshPods)
	profileApp(t)
	reg := meshRegistry(false)
	m := startMesh(t, reg)
	dir, x, root := m.dir, m.x, m.root
	// Applying the capture twice gives the same rules.
	if out, err := inNS(nsSleep, false, "proxy", "init").CombinedOutput(); err != nil {
		t.Fatalf("second proxy init: %v\n%s", err, out)
	}
	if out, _ := exec.Command("ip", "netns", "exec", nsSleep, "iptables", "-t", "nat", "-S", "OUTPUT").CombinedOutput(); strings.Count(string(out), "ISTIO_OUTPUT") != 1 {
		t.Fatalf("OUTPUT after two inits:\n%s", out)
	}
	profileURL := fmt.Sprintf("http://%s:8080/", vipProf)

	t.Run("HTTP/1.1 through two sidecars over mTLS; the server sees the caller in XFCC", func(t *testing.T) {
		got, err := appCall(false, profileURL)
		if err != nil {
			t.Fatal(err)
		}
		if got["proto"] != "HTTP/1.1" {
			t.Errorf("app saw %s", got["proto"])
		}
		if !strings.Contains(got["xfcc"], "URI=spiffe://cluster.local/ns/test/sa/sleep") || !strings.Contains(got["xfcc"], "By=spiffe://cluster.local/ns/test/sa/profile") {
			t.Errorf("XFCC %q", got["xfcc"])
		}
	})

	t.Run("HTTP/2 from the app reaches an http port as HTTP/1.1 and a sniffed port as HTTP/2, as in Istio", func(t *testing.T) {
		for url, want := range map[string]string{profileURL: "HTTP/1.1", fmt.Sprintf("http://%s:8081/", vipProf): "HTTP/2.0"} {
			got, err := appCall(true, url)
			if err != nil {
				t.Fatal(err)
			}
			if got["proto"] != want || !strings.Contains(got["xfcc"], "sa/sleep") {
				t.Errorf("%s: app saw %v, want %s", url, got, want)
			}
		}
	})

	t.Run("gRPC through the tunnel", func(t *testing.T) {
		conn, err := grpc.NewClient(vipProf+":9090", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return network.Dialer(nsSleep)(ctx, "tcp", addr)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health: %v %v", resp, err)
		}
	})

	t.Run("raw TCP through the tunnel", func(t *testing.T) {
		c, err := network.Dialer(nsSleep)(context.Background(), "tcp", vipProf+":7070")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(c, "hello over mTLS")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "hello over mTLS\n" {
			t.Fatalf("echo: %q %v", line, err)
		}
	})

	t.Run("a port without a declared protocol is sniffed: HTTP is routed as HTTP, the rest is TCP", func(t *testing.T) {
		got, err := appCall(false, fmt.Sprintf("http://%s:8081/", vipProf))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(got["xfcc"], "sa/sleep") {
			t.Errorf("the HTTP request on an undeclared port was not handled as HTTP: %v", got)
		}
		c, err := network.Dialer(nsSleep)(context.Background(), "tcp", vipProf+":7071")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintln(c, "not http at all")
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "not http at all\n" {
			t.Fatalf("echo on a sniffed port: %q %v", line, err)
		}
	})

	plaintext := func() (string, error) {
		// uid 1337 is not captured in the sleep pod: a caller without a sidecar.
		out, err := exec.Command("nsenter", "--net=/run/netns/"+nsSleep, "--setuid", "1337", "--setgid", "1337",
			"curl", "-sS", "--max-time", "5", fmt.Sprintf("http://%s:8080/", ipProfile)).CombinedOutput()
		return string(out), err
	}
	t.Run("PERMISSIVE accepts a plaintext caller, without XFCC", func(t *testing.T) {
		out, err := plaintext()
		if err != nil || !strings.Contains(out, `"proto":"HTTP/1.1"`) || !strings.Contains(out, `"xfcc":""`) {
			t.Fatalf("plaintext call: %v %s", err, out)
		}
	})

	t.Run("the router passes SNI outbound_.8080_._.profile... to a local endpoint; an unknown SNI is refused", func(t *testing.T) {
		// A client with a mesh identity, dialing the gateway from its namespace.
		agentDir := t.TempDir()
		_ = os.WriteFile(filepath.Join(agentDir, "t"), []byte("client-token"), 0o600)
		a, err := identity.New(identity.Config{CAAddr: "unix://" + filepath.Join(dir, "ca.sock"), CAServerName: "istiod.istio-system.svc",
			RootCert: root, TokenFile: filepath.Join(agentDir, "t"), Log: slog.Default()})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go a.Run(ctx)
		<-a.Ready()
		dial := func(sni string) (string, error) {
			raw, err := network.Dialer(nsGW)(context.Background(), "tcp", ipGW+":15443")
			if err != nil {
				return "", err
			}
			tc := tls.Client(raw, a.ClientConfig(sni, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://cluster.local/ns/test/sa/profile")), "istio-http/1.1"))
			defer tc.Close()
			_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				return "", err
			}
			fmt.Fprintf(tc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", profHost)
			b, err := io.ReadAll(tc)
			return string(b), err
		}
		var out string
		eventually(t, "the router's 15443 listener", func() bool {
			out, err = dial(proxyview.SNI(8080, "", profHost))
			return err == nil
		})
		if !strings.Contains(out, "200 OK") || !strings.Contains(out, "sa/client") {
			t.Fatalf("through the router: %s", out)
		}
		if out, err := dial(proxyview.SNI(8080, "", "nope.test.svc.cluster.local")); err == nil {
			t.Fatalf("unknown SNI got through: %s", out)
		}
	})

	t.Run("a malformed listener is NACKed and the last configuration keeps serving", func(t *testing.T) {
		x.set(sleepNode, snapshot(t, "2", reg, sleepNode, false, func(rs map[resource.Type][]types.Resource) {
			bad := proto.Clone(rs[resource.ListenerType][0].(*listener.Listener)).(*listener.Listener)
			bad.Name = "broken"
			bad.Address = nil
			rs[resource.ListenerType] = append(rs[resource.ListenerType], bad)
		}))
		eventually(t, "a NACK recorded", func() bool {
			return strings.Contains(adminGet(nsSleep, "/xds"), "lds") && strings.Contains(adminGet(nsSleep, "/xds"), "broken")
		})
		if _, err := appCall(false, profileURL); err != nil {
			t.Fatalf("after a NACK: %v", err)
		}
	})

	t.Run("control plane gone: calls keep working; back: new services apply", func(t *testing.T) {
		x.stop()
		time.Sleep(time.Second)
		if _, err := appCall(false, profileURL); err != nil {
			t.Fatalf("without the control plane: %v", err)
		}
		withAccounts := meshRegistry(true)
		x.cache = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
		x.set(sleepNode, snapshot(t, "3", withAccounts, sleepNode, false, nil))
		x.set(profileNode, snapshot(t, "3", withAccounts, profileNode, false, nil))
		x.start()
		eventually(t, "accounts reachable after the control plane returned", func() bool {
			got, err := appCall(false, fmt.Sprintf("http://%s:8080/", vipAcct))
			return err == nil && strings.Contains(got["xfcc"], "sa/sleep")
		})
	})

	t.Run("secure naming: a server that is not one of the service's accounts is refused", func(t *testing.T) {
		wrong := meshRegistry(true)
		eps := slices.Clone(wrong.Endpoints(profHost))
		eps[0].ServiceAccount = "payments" // profile's sidecar answers as test/profile
		wrong.SetEndpoints("c1", profHost, eps)
		x.set(sleepNode, snapshot(t, "naming-1", wrong, sleepNode, false, nil))
		eventually(t, "sleep refuses profile's sidecar where it expects payments", func() bool { _, err := appCall(false, profileURL); return err != nil })
		x.set(sleepNode, snapshot(t, "naming-2", meshRegistry(true), sleepNode, false, nil))
		eventually(t, "profile served again once its own account is expected", func() bool { _, err := appCall(false, profileURL); return err == nil })
	})

	t.Run("inbound mTLS accepts only the mesh's trust domains", func(t *testing.T) {
		x.set(profileNode, snapshot(t, "td-1", meshRegistry(true), profileNode, false, func(rs map[resource.Type][]types.Resource) {
			reg := meshRegistry(true)
			in, _ := proxyview.Inbound(proxyview.NewInboundIndex(reg, reg.Services()).For("test", ipProfile), proxyview.InboundPolicy{TrustDomains: []string{"other.example"}})
			for i, l := range rs[resource.ListenerType] {
				if l.(*listener.Listener).Name == in.Name {
					rs[resource.ListenerType][i] = in
				}
			}
		}))
		// Raw TCP: every call is a new mTLS handshake (HTTP reuses its pool).
		echo := func() error {
			c, err := network.Dialer(nsSleep)(context.Background(), "tcp", vipProf+":7070")
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintln(c, "ping")
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil && line != "ping\n" {
				err = fmt.Errorf("echo %q", line)
			}
			return err
		}
		eventually(t, "profile refuses sleep (cluster.local) when only other.example is the mesh's", func() bool { return echo() != nil })
		x.set(profileNode, snapshot(t, "td-2", meshRegistry(true), profileNode, false, nil))
		eventually(t, "sleep served again", func() bool { return echo() == nil })
	})

	t.Run("STRICT refuses the plaintext caller and keeps mTLS", func(t *testing.T) {
		x.set(profileNode, snapshot(t, "4", meshRegistry(true), profileNode, true, nil))
		eventually(t, "plaintext refused", func() bool { _, err := plaintext(); return err != nil })
		if _, err := appCall(false, profileURL); err != nil {
			t.Fatalf("mTLS under STRICT: %v", err)
		}
	})

	t.Run("Istio's standard metrics name both workloads", func(t *testing.T) {
		metrics := func(ns string) string {
			c := &http.Client{Transport: &http.Transport{DialContext: network.Dialer(ns)}, Timeout: 5 * time.Second}
			resp, err := c.Get("http://127.0.0.1:15090/stats/prometheus")
			if err != nil {
				return ""
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		src, dst := metrics(nsSleep), metrics(nsProfile)
		for _, want := range []string{`reporter="source"`, `source_workload="sleep"`, `destination_workload="profile"`, `destination_service="profile.test.svc.cluster.local"`,
			`response_code="200"`, `connection_security_policy="mutual_tls"`, `request_protocol="grpc"`} {
			if !strings.Contains(src, "istio_requests_total{") || !strings.Contains(src, want) {
				t.Errorf("client side metrics lack %s", want)
			}
		}
		for _, want := range []string{`reporter="destination"`, `source_workload="sleep"`, `source_principal="spiffe://cluster.local/ns/test/sa/sleep"`, `destination_principal="spiffe://cluster.local/ns/test/sa/profile"`, "istio_tcp_sent_bytes_total{"} {
			if !strings.Contains(dst, want) {
				t.Errorf("server side metrics lack %s", want)
			}
		}
		if t.Failed() {
			t.Logf("client:\n%s\nserver:\n%s", src, dst)
		}
	})

	t.Run("the access log has a line per request", func(t *testing.T) {
		b, _ := os.ReadFile(filepath.Join(dir, "sleep.log"))
		if !strings.Contains(string(b), `"GET / HTTP/1.1" 200 - `) || !strings.Contains(string(b), proxyview.OutboundCluster(8080, "", profHost)) {
			t.Errorf("sleep's access log:\n%s", b)
		}
	})

	t.Run("config_dump is Envoy's ConfigDump", func(t *testing.T) {
		var dump struct {
			Configs []map[string]any `json:"configs"`
		}
		if err := json.Unmarshal([]byte(adminGet(nsSleep, "/config_dump")), &dump); err != nil || len(dump.Configs) != 7 {
			t.Fatalf("config_dump: %v %d sections, want bootstrap, clusters, ECDS, listeners, routes, endpoints and secrets", err, len(dump.Configs))
		}
		// Envoy's order of sections.
		for i, typ := range []string{"Bootstrap", "Clusters", "Ecds", "Listeners", "Routes", "Endpoints", "Secrets"} {
			if got := dump.Configs[i]["@type"]; got != "type.googleapis.com/envoy.admin.v3."+typ+"ConfigDump" {
				t.Errorf("config %d is %v, want %sConfigDump", i, got, typ)
			}
		}
		if !strings.Contains(adminGet(nsSleep, "/clusters"), proxyview.OutboundCluster(8080, "", profHost)+"::"+ipProfile+":8080::health_flags::healthy") {
			t.Errorf("clusters:\n%s", adminGet(nsSleep, "/clusters"))
		}
	})
}

// routerNetwork is the network whose gateway the router is.
var routerNetwork = "n1"

// nodeProto is the node a proxy of the test sends.
func nodeProto(id string) *core.Node {
	md := map[string]string{"CLUSTER_ID": "c1", "NETWORK": "n1"}
	if strings.HasPrefix(id, "router~") {
		md["NETWORK"], md["REQUESTED_NETWORK_VIEW"] = routerNetwork, routerNetwork
	}
	return &core.Node{Id: id, Metadata: proxyview.NodeMetadata(md)}
}

func (gatewayConfig) RequestAuthentications() []*securityv1.RequestAuthentication { return nil }
func (gatewayConfig) Sidecars() []*networkingv1.Sidecar                           { return nil }
