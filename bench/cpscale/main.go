// Command cpscale measures the control plane at scale against the sandbox's
// real API servers, and Istio's own istiod beside it on the same clusters:
// services spread over the sandbox's clusters (each on its own network,
// with an east-west gateway), N simulated ADS clients spread over the
// networks, one EndpointSlice change in a remote cluster, then the control
// plane restarted under them (every client reconnects at once). It prints
// one Markdown table row per figure, each control plane in a column.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	_ "net/http/pprof"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var (
	kubeconfig   = flag.String("kubeconfig", "", "sandbox kubeconfig (a context per cluster)")
	isthmusBin   = flag.String("isthmus", "bin/isthmus", "isthmus binary")
	clusterNames = flag.String("clusters", "cluster-eks,cluster-aks", "the sandbox's clusters, the primary first; cluster i is on network i+1")
	clients      = flag.Int("clients", 1000, "simulated ADS clients, spread over the clusters' networks")
	services     = flag.Int("services", 1000, "services in all, spread over the clusters")
	endpoints    = flag.Int("endpoints", 10, "endpoints per service")
	delta        = flag.Bool("delta", false, "incremental (delta) ADS clients instead of state-of-the-world")
	peers        = flag.String("control-planes", "isthmus", "control planes to measure in turn on the same clusters: isthmus, istiod (Istio's pilot-discovery)")
	storm        = flag.Bool("storm", true, "also restart each control plane under its clients (the reconnect storm)")
	heapFile     = flag.String("heap", "", "write isthmus's heap profiles to FILE.connect (when half the clients have their first push), FILE.push (after it) and FILE.storm (after the storm)")
	pushCPUFile  = flag.String("push-cpu", "", "write the CPU profiles of isthmus and of the bench's own clients over the first full push to FILE and FILE.clients")
	memoryLimit  = flag.Int("memory-limit", 10<<10, "stop a control plane's first push when its RSS passes this many MiB: with istiod at 11 GiB the bench's own clients held 9 GiB of its pushes, and this machine has 24")
	istiodEnv    = flag.String("istiod-env", "", "comma-separated NAME=VALUE settings for istiod beyond its defaults, e.g. PILOT_MAX_REQUESTS_PER_SECOND=1000")
	logDir       = flag.String("logs", "", "copy each control plane's log to DIR/NAME.log")
	cpuFile      = flag.String("cpu", "", "write isthmus's CPU profile of the 5 s around the EndpointSlice change to this file")
)

func main() {
	flag.Parse()
	if addr := os.Getenv("CPSCALE_PPROF"); addr != "" {
		// The bench's own profile (its clients), on loopback.
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
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

// result is what one control plane did with the same workload.
type result struct {
	firstPush time.Duration
	// incomplete says how far a first push got that did not reach every
	// client in time; nothing after it was measured.
	incomplete string
	rss, anon  int
	// peak is the process's highest RSS so far (VmHWM): the clients'
	// connecting, not what stays once they are served.
	peak  int
	goMem goMemory
	// pushCPU and pushBenchCPU are the control plane's and the bench's
	// CPU over the first full push; pushBytes what the clients read.
	pushCPU, pushBenchCPU float64
	pushBytes             int64
	p50, p99, max         time.Duration
	cpuChange             float64
	// benchCPU is the bench process's (its clients') CPU for the change.
	benchCPU                     float64
	stormP50, stormP99, stormAll time.Duration
	stormRSS                     int
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	// The control planes run in directories of their own.
	abs, err := filepath.Abs(*isthmusBin)
	if err != nil {
		return err
	}
	*isthmusBin = abs
	var cls []cluster
	for i, name := range strings.Split(*clusterNames, ",") {
		cs, err := clientFor(name)
		if err != nil {
			return err
		}
		cls = append(cls, cluster{name: name, network: fmt.Sprintf("network%d", i+1), index: i, cs: cs})
	}
	if len(cls) < 2 {
		return fmt.Errorf("--clusters: want a primary and at least one remote")
	}
	perCluster := make([]int, len(cls))
	for i := range *services {
		perCluster[i%len(cls)]++
	}
	start := time.Now()
	for i, c := range cls {
		if err := populate(ctx, c, perCluster[i], *endpoints); err != nil {
			return fmt.Errorf("populate %s: %w", c.name, err)
		}
	}
	populateTime := time.Since(start)
	fmt.Fprintf(os.Stderr, "cpscale: populated %d clusters in %s\n", len(cls), populateTime)

	dir, err := os.MkdirTemp("", "cpscale")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	names := strings.Split(*peers, ",")
	results := map[string]result{}
	for k, name := range names {
		var cp *controlPlane
		switch name {
		case "isthmus":
			cp, err = isthmusControlPlane(ctx, dir+"/isthmus", cls)
		case "istiod":
			cp, err = istiodControlPlane(ctx, dir+"/istiod", cls)
		default:
			err = fmt.Errorf("--control-planes: unknown %q (isthmus or istiod)", name)
		}
		if err != nil {
			return err
		}
		// Each control plane watches its own service of the remote, so
		// the one measured first does not leave the second's change made.
		r, err := measure(ctx, cp, cls, k)
		cp.Kill()
		if *logDir != "" {
			if b, rerr := os.ReadFile(cp.Log); rerr == nil {
				_ = os.WriteFile(filepath.Join(*logDir, name+".log"), b, 0o644)
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results[name] = r
	}

	mode := "SotW"
	if *delta {
		mode = "delta"
	}
	total := 0
	for _, n := range perCluster {
		total += n
	}
	// A row says what it shows of a control plane whose first push did
	// not complete: how far the push got, its value then (with the
	// ratio, for the memory the goal compares), or nothing.
	type ifIncomplete int
	const (
		nothing ifIncomplete = iota
		howFar
		valueThen
		valueAndRatioThen
	)
	row := func(figure, goal string, incompleteShows ifIncomplete, cell func(r result) string, ratio func(a, b result) string) {
		fmt.Printf("| %s |", figure)
		for _, n := range names {
			r := results[n]
			switch {
			case r.incomplete == "":
				fmt.Printf(" %s |", cell(r))
			case incompleteShows == howFar:
				fmt.Printf(" %s |", r.incomplete)
			case incompleteShows == valueThen || incompleteShows == valueAndRatioThen:
				fmt.Printf(" %s, measured then |", cell(r))
			default:
				fmt.Print(" - |")
			}
			if r.incomplete != "" && incompleteShows != valueAndRatioThen {
				ratio = nil
			}
		}
		if len(names) == 2 && ratio != nil {
			fmt.Printf(" %s |", ratio(results[names[0]], results[names[1]]))
		} else if len(names) == 2 {
			fmt.Print(" - |")
		}
		fmt.Printf(" %s |\n", goal)
	}
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	fmt.Printf("| populate %d clusters: %d services x %d endpoints through the API servers | %s |", len(cls), total, *endpoints, populateTime.Round(100*time.Millisecond))
	for range names[1:] {
		fmt.Print(" (same clusters) |")
	}
	if len(names) == 2 {
		fmt.Print(" - |")
	}
	fmt.Println(" - |")
	row(fmt.Sprintf("%s: first full push (CDS + EDS) to %d ADS clients", mode, *clients), "<= 10 s", howFar,
		func(r result) string { return r.firstPush.Round(10 * time.Millisecond).String() },
		func(a, b result) string { return ratio(a.firstPush.Seconds(), b.firstPush.Seconds()) })
	row(fmt.Sprintf("%s: CPU over the first full push: control plane / the bench's clients (responses read)", mode), "-", nothing,
		func(r result) string {
			return fmt.Sprintf("%.1f / %.1f CPU-s (%d MiB)", r.pushCPU, r.pushBenchCPU, r.pushBytes>>20)
		},
		func(a, b result) string { return "control plane " + ratio(a.pushCPU, b.pushCPU) })
	row(fmt.Sprintf("%s: control plane RSS with %d clients connected (anonymous memory)", mode, *clients), "<= 600 MB and <= 0.3x istiod", valueAndRatioThen,
		func(r result) string { return fmt.Sprintf("%d MiB (%d MiB)", r.rss, r.anon) },
		func(a, b result) string { return ratio(float64(a.rss), float64(b.rss)) })
	row("of which the Go runtime's: heap in use / goroutine stacks / heap freed, not yet returned to the OS (next GC at)", "-", valueThen,
		func(r result) string { return r.goMem.String() },
		func(a, b result) string { return "heap " + ratio(a.goMem.heapInuse, b.goMem.heapInuse) })
	row(fmt.Sprintf("%s: control plane peak RSS so far (VmHWM: while the %d clients connected and got their first push)", mode, *clients), "-", valueAndRatioThen,
		func(r result) string { return fmt.Sprintf("%d MiB", r.peak) },
		func(a, b result) string { return ratio(float64(a.peak), float64(b.peak)) })
	row(fmt.Sprintf("%s: one EndpointSlice change in %s -> every client has it: p50 / p99 / max", mode, cls[1].name), "p99 <= 300 ms and <= 0.5x istiod", nothing,
		func(r result) string { return ms(r.p50) + " / " + ms(r.p99) + " / " + ms(r.max) },
		func(a, b result) string { return "p99 " + ratio(a.p99.Seconds(), b.p99.Seconds()) })
	row(fmt.Sprintf("%s: control plane CPU for that change (push to %d clients)", mode, *clients), "-", nothing,
		func(r result) string { return fmt.Sprintf("%.2f CPU-s", r.cpuChange) },
		func(a, b result) string { return ratio(a.cpuChange, b.cpuChange) })
	row(fmt.Sprintf("%s: the bench's own CPU for that change (its %d clients decoding and acknowledging, on the same 2 cores)", mode, *clients), "-", nothing,
		func(r result) string { return fmt.Sprintf("%.2f CPU-s", r.benchCPU) },
		func(a, b result) string { return ratio(a.benchCPU, b.benchCPU) })
	if *storm {
		row(fmt.Sprintf("%s: reconnect storm: control plane SIGKILLed and restarted, all %d clients reconnect at once -> each has everything again: p50 / p99 / all (RSS after)", mode, *clients), "all <= first full push + 5 s", nothing,
			func(r result) string {
				return fmt.Sprintf("%s / %s / %s (%d MiB)", r.stormP50.Round(10*time.Millisecond), r.stormP99.Round(10*time.Millisecond), r.stormAll.Round(10*time.Millisecond), r.stormRSS)
			},
			func(a, b result) string { return "all " + ratio(a.stormAll.Seconds(), b.stormAll.Seconds()) })
	}
	return nil
}

// measure runs one control plane under the clients: first full push,
// memory, one change in the first remote, and the reconnect storm.
func measure(ctx context.Context, cp *controlPlane, cls []cluster, k int) (result, error) {
	var r result
	if err := cp.Start(ctx); err != nil {
		return r, err
	}
	if err := cp.waitReady(3 * time.Minute); err != nil {
		return r, err
	}
	time.Sleep(5 * time.Second) // every remote synced (well under a second here)
	fmt.Fprintf(os.Stderr, "cpscale: %s ready\n", cp.name)

	cctx, stopClients := context.WithCancel(ctx)
	defer stopClients()
	conns := make([]*grpc.ClientConn, max(10, *clients/100))
	for i := range conns {
		// Redialled as the proxies redial a control plane that went away.
		var err error
		// Envoy's HTTP/2 stream window (256 MiB): a proxy takes a push as
		// fast as it comes; gRPC's 64 KiB default would have the control
		// plane wait on five thousand readers. The connection's, shared by
		// its 100 clients, is 64 MiB, not Envoy's 256, which let fifty
		// connections buffer 12.5 GB: with istiod the bench process grew
		// to 15 GB of this machine's 24 (2026-12-06).
		conns[i], err = grpc.NewClient(cp.xds, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithInitialWindowSize(256<<20), grpc.WithInitialConnWindowSize(64<<20),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20), grpc.ForceCodecV2(clientCodec{proto: encoding.GetCodecV2("proto")})),
			grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
				MinConnectTimeout: 5 * time.Second}))
		if err != nil {
			return r, err
		}
		defer conns[i].Close()
	}
	// The change: one endpoint more in a service of the first remote.
	remote := cls[1]
	want := fmt.Sprintf("100.%d.250.%d", 64+remote.index, 1+k)
	cs := make([]*adsClient, *clients)
	begin := time.Now()
	cpuBegin, selfBegin, bytesBegin := cpuTicks(cp.Pid()), cpuTicks(os.Getpid()), received.Load()
	if *pushCPUFile != "" && cp.name == "isthmus" {
		go saveProfile(cp.pprof+"profile?seconds=10", *pushCPUFile)
		if f, err := os.Create(*pushCPUFile + ".clients"); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				time.AfterFunc(10*time.Second, func() { pprof.StopCPUProfile(); f.Close() })
			}
		}
	}
	for i := range cs {
		home := cls[i%len(cls)]
		cs[i] = &adsClient{id: i, cluster: home.name, network: home.network, total: *services,
			target: target(remote.index, k), want: want, wantWeight: uint32(*endpoints + 1),
			gotAll: make(chan struct{}), sawWant: make(chan struct{})}
		go cs[i].run(cctx, conns[i%len(conns)], *delta)
	}
	// The first push ends when every client is whole, after 10 minutes,
	// or when the control plane's RSS passes --memory-limit (so that a
	// peer that grows without bound cannot take the machine down).
	deadline := time.After(10 * time.Minute)
	overMemory := make(chan int)
	go func() {
		for tick := time.NewTicker(time.Second); ; {
			select {
			case <-cctx.Done():
				tick.Stop()
				return
			case <-tick.C:
			}
			if total, _, _ := rss(cp.Pid()); total > *memoryLimit {
				tick.Stop()
				select {
				case overMemory <- total:
				case <-cctx.Done():
				}
				return
			}
		}
	}()
	for i, c := range cs {
		if i == len(cs)/2 && *heapFile != "" && cp.name == "isthmus" {
			// In the middle of the clients' first push, where the
			// control plane's memory peaks.
			saveProfile(cp.pprof+"heap", *heapFile+".connect")
		}
		why := ""
		select {
		case <-c.gotAll:
		case <-deadline:
			why = "not done after 10 min"
		case total := <-overMemory:
			why = fmt.Sprintf("stopped at %d MiB RSS (--memory-limit) after %s", total, time.Since(begin).Round(time.Second))
		}
		if why != "" {
			// Reported as it is (a peer that cannot serve this many
			// clients in time is a result), with its memory then.
			whole := 0
			for _, c := range cs {
				select {
				case <-c.gotAll:
					whole++
				default:
				}
			}
			r.incomplete = fmt.Sprintf("%s: %d of %d clients whole", why, whole, len(cs))
			r.rss, r.anon, r.peak = rss(cp.Pid())
			r.goMem = readGoMemory(cp.metrics)
			fmt.Fprintf(os.Stderr, "cpscale: %s: first full push %s (the first missing: %d); its log ends:\n%s\n", cp.name, r.incomplete, i, cp.logTail())
			return r, nil
		}
	}
	r.firstPush = time.Since(begin)
	r.pushCPU = float64(cpuTicks(cp.Pid())-cpuBegin) / 100
	r.pushBenchCPU = float64(cpuTicks(os.Getpid())-selfBegin) / 100
	r.pushBytes = received.Load() - bytesBegin
	fmt.Fprintf(os.Stderr, "cpscale: %s: first full push done in %s\n", cp.name, r.firstPush)
	// Pushes from here on are printed with the change's: one the change
	// did not ask for (a full one) delays it.
	var logAt int64
	if fi, err := os.Stat(cp.Log); err == nil {
		logAt = fi.Size()
	}
	time.Sleep(3 * time.Second)
	r.rss, r.anon, r.peak = rss(cp.Pid())
	r.goMem = readGoMemory(cp.metrics)
	if *heapFile != "" && cp.name == "isthmus" {
		saveProfile(cp.pprof+"heap", *heapFile+".push")
	}

	var profiled chan struct{}
	if *cpuFile != "" && cp.name == "isthmus" {
		profiled = make(chan struct{})
		go func() {
			defer close(profiled)
			saveProfile(cp.pprof+"profile?seconds=5", *cpuFile)
		}()
		time.Sleep(200 * time.Millisecond)
	}
	cpu0, self0 := cpuTicks(cp.Pid()), cpuTicks(os.Getpid())
	push0 := readMetrics(cp.metrics, "isthmus_push_time_")
	changed := time.Now()
	if err := addEndpoint(ctx, remote, serviceName(remote.index, k), want); err != nil {
		return r, err
	}
	fmt.Fprintf(os.Stderr, "cpscale: %s: change written at %s (the API server took %s)\n", cp.name, time.Now().UTC().Format("15:04:05.000"), time.Since(changed).Round(time.Millisecond))
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
	r.cpuChange = float64(cpuTicks(cp.Pid())-cpu0) / 100
	r.benchCPU = float64(cpuTicks(os.Getpid())-self0) / 100
	if push := readMetrics(cp.metrics, "isthmus_push_time_"); push["isthmus_push_time_count"] > push0["isthmus_push_time_count"] {
		// Where the time went: isthmus's own measure of its pushes
		// (the change seen to every proxy's snapshot updated).
		n := push["isthmus_push_time_count"] - push0["isthmus_push_time_count"]
		fmt.Fprintf(os.Stderr, "cpscale: %s: %.0f push(es) for the change, %.0f ms in all\n", cp.name, n, 1000*(push["isthmus_push_time_sum"]-push0["isthmus_push_time_sum"]))
		// And how it split them: gathering (debounce) and the push itself.
		b, _ := os.ReadFile(cp.Log)
		if int64(len(b)) >= logAt {
			b = b[logAt:]
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if strings.Contains(line, "msg=pushed") {
				fmt.Fprintf(os.Stderr, "cpscale: %s: push since the first full push: %s\n", cp.name, line)
			}
		}
	}
	r.p50, r.p99, r.max = pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1)
	if profiled != nil {
		<-profiled
	}
	fmt.Fprintf(os.Stderr, "cpscale: %s: change p99 %s\n", cp.name, r.p99)
	if !*storm {
		return r, nil
	}

	// The reconnect storm: the control plane SIGKILLed and started again;
	// every client reconnects at once and needs everything again.
	cp.Kill()
	if err := cp.Start(ctx); err != nil {
		return r, err
	}
	restarted := time.Now()
	storm := make([]time.Duration, len(cs))
	for i, c := range cs {
		for {
			if n, at := c.fullTimes(); n >= 2 {
				storm[i] = at.Sub(restarted)
				break
			}
			if time.Since(restarted) > 10*time.Minute {
				return r, fmt.Errorf("reconnect storm: client %d of %d not resynced 10 minutes after the restart; the log ends:\n%s", i, len(cs), cp.logTail())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	r.stormRSS, _, _ = rss(cp.Pid())
	r.stormP50, r.stormP99, r.stormAll = pct(storm, 0.5), pct(storm, 0.99), pct(storm, 1)
	if *heapFile != "" && cp.name == "isthmus" {
		saveProfile(cp.pprof+"heap", *heapFile+".storm")
	}
	fmt.Fprintf(os.Stderr, "cpscale: %s: storm all back in %s\n", cp.name, r.stormAll)
	return r, nil
}

func saveProfile(url, file string) {
	resp, err := http.Get(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cpscale: profile %s: %v\n", url, err)
		return
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	_ = os.WriteFile(file, b, 0o644)
}

// rss reads a process's VmRSS, RssAnon and VmHWM (its peak RSS) in MiB.
func rss(pid int) (total, anon, peak int) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "VmRSS:":
			total, _ = strconv.Atoi(f[1])
		case "RssAnon:":
			anon, _ = strconv.Atoi(f[1])
		case "VmHWM:":
			peak, _ = strconv.Atoi(f[1])
		}
	}
	return total / 1024, anon / 1024, peak / 1024
}

// goMemory is what the Go runtime says of a process's memory, in MiB.
type goMemory struct{ heapInuse, stacks, heapFree, nextGC float64 }

func (m goMemory) String() string {
	if m == (goMemory{}) {
		return "-"
	}
	return fmt.Sprintf("%.0f / %.0f / %.0f MiB (%.0f MiB)", m.heapInuse, m.stacks, m.heapFree, m.nextGC)
}

// readGoMemory reads the Go collector's gauges from a Prometheus page
// (both control planes register it): where RSS beyond the live heap goes.
func readGoMemory(url string) goMemory {
	v := readMetrics(url, "go_memstats_")
	const mib = 1 << 20
	return goMemory{heapInuse: v["go_memstats_heap_inuse_bytes"] / mib, stacks: v["go_memstats_stack_inuse_bytes"] / mib,
		heapFree: (v["go_memstats_heap_idle_bytes"] - v["go_memstats_heap_released_bytes"]) / mib, nextGC: v["go_memstats_next_gc_bytes"] / mib}
}

// readMetrics reads the unlabelled samples whose names start with prefix
// from a Prometheus page; none when it cannot.
func readMetrics(url, prefix string) map[string]float64 {
	v := map[string]float64{}
	c := http.Client{Timeout: 30 * time.Second} // a control plane at its limit answers slowly
	resp, err := c.Get(url)
	if err != nil {
		return v
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && strings.HasPrefix(f[0], prefix) {
			v[f[0]], _ = strconv.ParseFloat(f[1], 64)
		}
	}
	return v
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
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
