// Command cpscale measures the control plane at scale against the sandbox's
// real API servers: 2 clusters x 500 services x 10 endpoints (1000 services,
// 10,000 endpoints) and N simulated ADS clients, then the control plane
// restarted under them (every client reconnects at once). It prints one Markdown
// table row per figure.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

var (
	kubeconfig = flag.String("kubeconfig", "", "sandbox kubeconfig (contexts cluster-eks, cluster-aks)")
	isthmusBin = flag.String("isthmus", "bin/isthmus", "isthmus binary")
	clients    = flag.Int("clients", 1000, "simulated ADS clients")
	perCluster = flag.Int("services", 500, "services per cluster")
	endpoints  = flag.Int("endpoints", 10, "endpoints per service")
	delta      = flag.Bool("delta", false, "incremental (delta) ADS clients instead of state-of-the-world")
	heapFile   = flag.String("heap", "", "write the control plane's heap profile (after the first push) to this file")
	cpuFile    = flag.String("cpu", "", "write the control plane's CPU profile of the 5 s around the EndpointSlice change to this file")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cpscale:", err)
		os.Exit(1)
	}
}

func clientFor(ctx string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: *kubeconfig}, &clientcmd.ConfigOverrides{CurrentContext: ctx}).ClientConfig()
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 300, 600
	return kubernetes.NewForConfig(cfg)
}

// populate creates the services and their EndpointSlices of one cluster.
func populate(ctx context.Context, cs *kubernetes.Clientset, cluster int) error {
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "scale"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for i := range *perCluster {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			name := fmt.Sprintf("svc-c%d-%d", cluster, i)
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "scale"},
				Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}}
			if _, err := cs.CoreV1().Services("scale").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			if _, err := cs.DiscoveryV1().EndpointSlices("scale").Create(ctx, slice(name, cluster, i, *endpoints), metav1.CreateOptions{}); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

func slice(name string, cluster, i, n int) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "scale", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for e := range n {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("100.%d.%d.%d", 64+cluster, i/25, (i%25)*10+e+1)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
		})
	}
	return s
}

// adsClient subscribes to everything and records when it first sees want
// in the load assignment of target.
type adsClient struct {
	gotAll  chan struct{}
	sawWant chan struct{}
	once1   sync.Once
	once2   sync.Once
	// full is when each of its streams had every load assignment: a
	// reconnection after a control plane restart adds one.
	mu   sync.Mutex
	full []time.Time
}

// gotFull notes that the current stream has everything (once per stream).
func (c *adsClient) gotFull() {
	c.once1.Do(func() { close(c.gotAll) })
	c.mu.Lock()
	c.full = append(c.full, time.Now())
	c.mu.Unlock()
}

// fullTimes is how many streams had everything, and when the last did.
func (c *adsClient) fullTimes() (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.full) == 0 {
		return 0, time.Time{}
	}
	return len(c.full), c.full[len(c.full)-1]
}

// reconnecting runs a client's streams one after the other, as a proxy
// does: after a stream ends, a new one 250-500 ms later (the proxy's first
// retry), waiting for the connection to be ready.
func reconnecting(ctx context.Context, run func(ctx context.Context)) {
	for ctx.Err() == nil {
		run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(250*time.Millisecond + time.Duration(rand.Int64N(int64(250*time.Millisecond)))):
		}
	}
}

func runClient(ctx context.Context, conn *grpc.ClientConn, id, total int, target, want string, c *adsClient) {
	reconnecting(ctx, func(ctx context.Context) { sotwStream(ctx, conn, id, total, target, want, c) })
}

func sotwStream(ctx context.Context, conn *grpc.ClientConn, id, total int, target, want string, c *adsClient) {
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return
	}
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": "cluster-eks", "NETWORK": "network1"})
	node := &core.Node{Id: fmt.Sprintf("sidecar~100.127.%d.%d~c%d.scale~scale.svc.cluster.local", id/250, id%250, id), Metadata: md}
	_ = stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	subscribed, full := 0, false
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce})
		switch resp.TypeUrl {
		case resource.ClusterType:
			// As Envoy: the load assignments of the clusters it has, asked
			// again when they change (a control plane that restarts may
			// send its own cluster's before the remote's).
			var names []string
			for _, r := range resp.Resources {
				if n := clusterName(r.Value); n != "" {
					names = append(names, n)
				}
			}
			if len(names) != subscribed {
				subscribed = len(names)
				_ = stream.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNames: names})
			}
		case resource.EndpointType:
			if len(resp.Resources) >= total && !full {
				full = true
				c.gotFull()
			}
			for _, r := range resp.Resources {
				// Decode only the target (field 1 is cluster_name): the
				// bench measures the control plane, not its clients.
				if clusterName(r.Value) == target {
					c.check(r.Value, want)
				}
			}
		}
	}
}

// check records when a load assignment has want.
func (c *adsClient) check(b []byte, want string) {
	var cla endpoint.ClusterLoadAssignment
	if proto.Unmarshal(b, &cla) != nil {
		return
	}
	for _, l := range cla.Endpoints {
		for _, e := range l.LbEndpoints {
			if e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress() == want {
				c.once2.Do(func() { close(c.sawWant) })
			}
		}
	}
}

// runDeltaClient is runClient over incremental xDS, as isthmus's proxies
// speak it: a change sends only the resources that changed.
func runDeltaClient(ctx context.Context, conn *grpc.ClientConn, id, total int, target, want string, c *adsClient) {
	reconnecting(ctx, func(ctx context.Context) { deltaStream(ctx, conn, id, total, target, want, c) })
}

func deltaStream(ctx context.Context, conn *grpc.ClientConn, id, total int, target, want string, c *adsClient) {
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx, grpc.WaitForReady(true))
	if err != nil {
		return
	}
	md, _ := structpb.NewStruct(map[string]any{"CLUSTER_ID": "cluster-eks", "NETWORK": "network1"})
	node := &core.Node{Id: fmt.Sprintf("sidecar~100.127.%d.%d~c%d.scale~scale.svc.cluster.local", id/250, id%250, id), Metadata: md}
	_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resource.ClusterType})
	subscribed, full := map[string]bool{}, false
	have := map[string]bool{}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce})
		switch resp.TypeUrl {
		case resource.ClusterType:
			// Every new cluster's load assignment, as Envoy asks for them.
			var names []string
			for _, r := range resp.Resources {
				if !subscribed[r.Name] {
					subscribed[r.Name] = true
					names = append(names, r.Name)
				}
			}
			if len(names) > 0 {
				_ = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resource.EndpointType, ResourceNamesSubscribe: names})
			}
		case resource.EndpointType:
			for _, r := range resp.Resources {
				have[r.Name] = true
				if r.Name == target {
					c.check(r.GetResource().GetValue(), want)
				}
			}
			if len(have) >= total && !full {
				full = true
				c.gotFull()
			}
		}
	}
}

// clusterName reads field 1 (name) of a serialized Cluster without a full decode.
func clusterName(b []byte) string {
	if len(b) < 2 || b[0] != 0x0a {
		return ""
	}
	n := int(b[1])
	if n >= 0x80 || 2+n > len(b) {
		return ""
	}
	return string(b[2 : 2+n])
}

func rss(pid int) (total, anon int) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			total, _ = strconv.Atoi(f[1])
		}
		if len(f) >= 2 && f[0] == "RssAnon:" {
			anon, _ = strconv.Atoi(f[1])
		}
	}
	return total / 1024, anon / 1024
}

func cpuTicks(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	u, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return u + st
}

func pct(ds []time.Duration, p float64) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[min(len(ds)-1, int(float64(len(ds))*p))]
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	eks, err := clientFor("cluster-eks")
	if err != nil {
		return err
	}
	aks, err := clientFor("cluster-aks")
	if err != nil {
		return err
	}
	start := time.Now()
	for i, cs := range []*kubernetes.Clientset{eks, aks} {
		if err := populate(ctx, cs, i); err != nil {
			return fmt.Errorf("populate cluster %d: %w", i, err)
		}
	}
	populateTime := time.Since(start)
	fmt.Fprintf(os.Stderr, "cpscale: populated in %s\n", populateTime)

	dir, _ := os.MkdirTemp("", "cpscale")
	defer os.RemoveAll(dir)
	eksOnly, _ := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", "cluster-eks").Output()
	aksOnly, _ := exec.Command(*isthmusBin, "sandbox", "--state-dir", os.Getenv("STATE"), "kubeconfig", "--cluster", "cluster-aks").Output()
	_ = os.WriteFile(dir+"/eks", eksOnly, 0o600)
	// The control plane keeps its CA in its namespace: create it first.
	if _, err := eks.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	var cmd *exec.Cmd
	startControlPlane := func() error {
		cmd = exec.CommandContext(ctx, *isthmusBin, "discovery", "--kubeconfig", dir+"/eks", "--cluster-id", "cluster-eks",
			"--network", "network1", "--xds-addr", "127.0.0.1:25010", "--secure-addr", "127.0.0.1:25012", "--webhook-addr", "127.0.0.1:25017", "--monitoring-addr", "127.0.0.1:25014")
		cmd.Env = append(os.Environ(), "GOMAXPROCS=2")
		log, err := os.OpenFile(dir+"/discovery.log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		cmd.Stdout, cmd.Stderr = log, log
		return cmd.Start()
	}
	if err := startControlPlane(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	pid := cmd.Process.Pid
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "istio-remote-secret-cluster-aks", Namespace: "istio-system",
		Labels: map[string]string{"istio/multiCluster": "true"}}, StringData: map[string]string{"cluster-aks": string(aksOnly)}}
	if _, err := eks.CoreV1().Secrets("istio-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return err
	}
	time.Sleep(5 * time.Second) // both clusters synced (the remote sync is well under a second here)

	target := "outbound|8080||svc-c1-0.scale.svc.cluster.local"
	want := "100.65.200.200"
	conns := make([]*grpc.ClientConn, 10)
	for i := range conns {
		// Redialled as the proxies redial a control plane that went away.
		conns[i], err = grpc.NewClient("127.0.0.1:25010", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
				MinConnectTimeout: 5 * time.Second}))
		if err != nil {
			return err
		}
		defer conns[i].Close()
	}
	cs := make([]*adsClient, *clients)
	begin := time.Now()
	for i := range cs {
		cs[i] = &adsClient{gotAll: make(chan struct{}), sawWant: make(chan struct{})}
		run := runClient
		if *delta {
			run = runDeltaClient
		}
		go run(ctx, conns[i%len(conns)], i, 2**perCluster, target, want, cs[i])
	}
	for i, c := range cs {
		select {
		case <-c.gotAll:
		case <-time.After(5 * time.Minute):
			return fmt.Errorf("first full push reached only %d of %d clients in 5 minutes", i, len(cs))
		}
	}
	fmt.Fprintf(os.Stderr, "cpscale: first full push done in %s\n", time.Since(begin))
	firstPush := time.Since(begin)
	time.Sleep(3 * time.Second)
	memTotal, memAnon := rss(pid)
	if *heapFile != "" {
		if resp, err := http.Get("http://127.0.0.1:25014/debug/pprof/heap"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(*heapFile, b, 0o644)
		}
	}

	// One EndpointSlice change in the remote API server.
	var profiled chan struct{}
	if *cpuFile != "" {
		profiled = make(chan struct{})
		go func() {
			defer close(profiled)
			resp, err := http.Get("http://127.0.0.1:25014/debug/pprof/profile?seconds=5")
			if err != nil {
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			_ = os.WriteFile(*cpuFile, b, 0o644)
		}()
		time.Sleep(200 * time.Millisecond)
	}
	cpu0 := cpuTicks(pid)
	sl, err := aks.DiscoveryV1().EndpointSlices("scale").Get(ctx, "svc-c1-0", metav1.GetOptions{})
	if err != nil {
		return err
	}
	sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{want}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	changed := time.Now()
	if _, err := aks.DiscoveryV1().EndpointSlices("scale").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		return err
	}
	lat := make([]time.Duration, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			select {
			case <-c.sawWant:
				lat[i] = time.Since(changed)
			case <-time.After(60 * time.Second):
				lat[i] = 60 * time.Second
			}
		})
	}
	wg.Wait()
	cpuPush := float64(cpuTicks(pid)-cpu0) / 100
	if profiled != nil {
		<-profiled
	}

	// The reconnect storm: the control plane SIGKILLed and started again;
	// every client reconnects at once and needs everything again.
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if err := startControlPlane(); err != nil {
		return err
	}
	restarted := time.Now()
	storm := make([]time.Duration, len(cs))
	for i, c := range cs {
		for {
			if n, at := c.fullTimes(); n >= 2 {
				storm[i] = at.Sub(restarted)
				break
			}
			if time.Since(restarted) > 3*time.Minute {
				b, _ := os.ReadFile(dir + "/discovery.log")
				return fmt.Errorf("reconnect storm: client %d of %d not resynced 3 minutes after the restart; the control plane's log ends:\n%s", i, len(cs), tailOf(string(b), 3000))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	stormRSS, _ := rss(cmd.Process.Pid)

	fmt.Printf("| populate 2 clusters x %d services x %d endpoints through the API servers | %s | - |\n", *perCluster, *endpoints, populateTime.Round(100*time.Millisecond))
	mode := "SotW"
	if *delta {
		mode = "delta"
	}
	fmt.Printf("| %s: first full push (CDS + EDS, %d clusters) to %d ADS clients | %s | - |\n", mode, 2**perCluster, *clients, firstPush.Round(10*time.Millisecond))
	fmt.Printf("| %s: control plane RSS with %d clients connected (anonymous memory) | %d MiB (%d MiB) | <= 300 MB |\n", mode, *clients, memTotal, memAnon)
	fmt.Printf("| %s: one EndpointSlice change in cluster-aks -> every client has it: p50 / p99 / max | %s / %s / %s | p99 < 200 ms |\n", mode,
		pct(lat, 0.5).Round(time.Millisecond), pct(lat, 0.99).Round(time.Millisecond), pct(lat, 1).Round(time.Millisecond))
	fmt.Printf("| %s: control plane CPU for that change (push to %d clients) | %.2f CPU-s | - |\n", mode, *clients, cpuPush)
	fmt.Printf("| %s: reconnect storm: control plane SIGKILLed and restarted, all %d clients reconnect at once -> each has everything again: p50 / p99 / all (RSS after) | %s / %s / %s (%d MiB) | all <= first full push + 5 s |\n", mode, *clients,
		pct(storm, 0.5).Round(10*time.Millisecond), pct(storm, 0.99).Round(10*time.Millisecond), pct(storm, 1).Round(10*time.Millisecond), stormRSS)
	return nil
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
