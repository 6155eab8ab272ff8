package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/discovery/registry"
)

// Extra pods of the benchmark: a client and a server with no mesh, for the
// direct call and for nginx's two hops.
const (
	nsClient = "isthmus-ptest-c"
	nsServer = "isthmus-ptest-d"
	ipClient = "10.213.0.4"
	ipServer = "10.213.0.5"
	vipX     = "10.96.213.12" // profile reached across networks
	hostX    = "profilex.test.svc.cluster.local"
)

// BenchmarkDataPlane is the data-plane part of `make bench`: fortio at
// 1000 rps and at full speed, HTTP/1.1 and gRPC, over four paths — direct;
// two isthmus sidecars with mTLS; the same through the east-west gateway;
// nginx two hops with mTLS — with each proxy's CPU and memory. It writes
// Markdown to $BENCH_OUT and is skipped without it.
func BenchmarkDataPlane(b *testing.B) {
	out := os.Getenv("BENCH_OUT")
	fortio := os.Getenv("FORTIO")
	if out == "" || fortio == "" {
		b.Skip("run by bench/parts/40-dataplane.sh (BENCH_OUT, FORTIO)")
	}
	if b.N > 1 {
		return // one measured run; the figures are in BENCH_OUT
	}
	runFor := envDuration("BENCH_DURATION", 6*time.Second)
	rounds := 5 // issue 27: medians of single runs land either side of the peer; judge over 5
	if n, err := strconv.Atoi(os.Getenv("BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	podNetworks(b, append(meshPods, pod{nsClient, ipClient}, pod{nsServer, ipServer}))
	// Profile is on network n1 for sleep; profilex is the same pod seen
	// from network n2's side, reached through the gateway.
	reg := meshRegistry(false)
	reg.SetGateways("c2", []registry.Gateway{{Network: "n2", Cluster: "c2", Address: ipGW, Port: 15443}})
	// tcp-http is fortio's HTTP declared as TCP: the sidecars relay bytes
	// (mTLS, no HTTP), the floor any HTTP proxy in Go has on this machine.
	ports := []registry.Port{{Name: "http", Port: 8080, Protocol: "TCP", AppProtocol: "http"}, {Name: "grpc", Port: 8079, Protocol: "TCP", AppProtocol: "grpc"},
		{Name: "tcp-http", Port: 8090, Protocol: "TCP", AppProtocol: "tcp"}}
	epPorts := map[string]int32{"http": 8080, "grpc": 8079, "tcp-http": 8090}
	reg.SetService("c1", profHost, &registry.Service{Namespace: "test", Name: "profile", Hostname: profHost, Ports: ports, ClusterIP: vipProf})
	reg.SetEndpoints("c1", profHost, []registry.Endpoint{{Address: ipProfile, Ports: epPorts, Cluster: "c1", Network: "n1",
		ServiceAccount: "profile", Namespace: "test", TLSMode: "istio", Ready: true}})
	reg.SetService("c2", hostX, &registry.Service{Namespace: "test", Name: "profilex", Hostname: hostX, Ports: ports, ClusterIP: vipX})
	reg.SetEndpoints("c2", hostX, []registry.Endpoint{{Address: ipProfile, Ports: epPorts, Cluster: "c2", Network: "n2",
		ServiceAccount: "profile", Namespace: "test", TLSMode: "istio", Ready: true}})
	routerNetwork, proxyFlags = "n2", nil // quiet proxies, as in production
	defer func() { routerNetwork, proxyFlags = "n1", []string{"-v", "--access-log", "/dev/stdout"} }()
	m := startMesh(b, reg)
	servers := [][]string{{nsProfile, "8080", "8079"}, {nsServer, "8080", "8079"}, {nsProfile, "8090", "disabled"}}
	for _, s := range servers {
		srv := exec.Command("nsenter", "--net=/run/netns/"+s[0], fortio, "server", "-http-port", s[1], "-grpc-port", s[2], "-redirect-port", "disabled", "-loglevel", "Warning")
		if err := srv.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	nginxPIDs := startNginx(b)
	nginxHops := map[string]int{}
	for name, pid := range nginxPIDs {
		if !strings.HasPrefix(name, "gateway") {
			nginxHops[name] = pid
		}
	}

	sidecars := map[string]int{"client sidecar": m.procs[nsSleep].Process.Pid, "server sidecar": m.procs[nsProfile].Process.Pid}
	withGW := map[string]int{"client sidecar": sidecars["client sidecar"], "server sidecar": sidecars["server sidecar"], "gateway": m.procs[nsGW].Process.Pid}
	paths := []benchPath{
		{"direct", nsClient, "http://" + ipServer + ":8080/echo", nil},
		{"isthmus, two sidecars, mTLS", nsSleep, "http://" + vipProf + ":8080/echo", sidecars},
		{"isthmus, two sidecars + east-west gateway", nsSleep, "http://" + vipX + ":8080/echo", withGW},
		{"nginx two hops, mTLS", nsClient, "http://127.0.0.1:18080/echo", nginxHops},
		{"isthmus, two sidecars, mTLS, as TCP (no HTTP)", nsSleep, "http://" + vipProf + ":8090/echo", sidecars},
		{"nginx two hops + nginx SNI gateway (stream, ssl_preread)", nsClient, "http://127.0.0.1:18081/echo", nginxPIDs},
	}
	grpcPaths := []benchPath{
		{"direct", nsClient, ipServer + ":8079", nil},
		{"isthmus, two sidecars, mTLS", nsSleep, vipProf + ":8079", sidecars},
		{"isthmus, two sidecars + east-west gateway", nsSleep, vipX + ":8079", withGW},
		{"nginx two hops, mTLS", nsClient, "127.0.0.1:18079", nginxHops},
	}
	// Warm up every path (connections, certificates, pools).
	for _, p := range paths {
		if _, err := load(fortio, p.ns, p.url, false, 100, 2*time.Second); err != nil {
			b.Fatalf("%s: %v", p.name, err)
		}
	}
	for _, p := range grpcPaths {
		if _, err := load(fortio, p.ns, p.url, true, 100, 2*time.Second); err != nil {
			b.Fatalf("gRPC %s: %v", p.name, err)
		}
	}
	var md strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&md, format+"\n", a...) }
	w("## Data plane")
	w("")
	w("`make bench` part 40: fortio %s (`-r 0.00001`: 10 us histogram buckets), %s per run, 8 connections at 1000 rps and 16 at full speed, pods in network namespaces on one bridge (no Kubernetes),", fortioVersion(fortio), runFor)
	w("the test control plane and CA of `test/e2e` (isthmus's generators behind go-control-plane). Each section runs every path once per round, %d rounds, the paths interleaved;"+
		" every figure is its median over the rounds (RSS: at the end of the rounds). Latency added = path minus direct at the same percentile."+
		" The CPU profiles come from one more run of the profiled paths after the rounds, not counted.", rounds)
	w("Proxy CPU is the sum over the path's proxies in CPU-seconds per 1000 requests; RSS and RssAnon (anonymous memory, what a proxy really owns; the rest is the shared binary) are per proxy at the end of the run.")
	w("")
	// profile saves CPU profiles of the mesh path's proxies while it runs.
	profile := func(tag string) func() {
		dir := os.Getenv("BENCH_PPROF_DIR")
		if dir == "" {
			return func() {}
		}
		done := make(chan struct{})
		for _, ns := range []string{nsSleep, nsProfile} {
			go func() {
				body := adminGetTimeout(ns, fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(runFor.Seconds())-1), runFor+10*time.Second)
				_ = os.WriteFile(filepath.Join(dir, tag+"-"+ns+".pprof"), []byte(body), 0o644)
				// Allocations since the proxy started, sampled (pprof's allocs).
				allocs := adminGetTimeout(ns, "/debug/pprof/allocs", 10*time.Second)
				_ = os.WriteFile(filepath.Join(dir, tag+"-"+ns+".allocs.pprof"), []byte(allocs), 0o644)
				done <- struct{}{}
			}()
		}
		return func() { <-done; <-done }
	}
	results := map[string]*fortioResult{}    // "grpc/qps/path"
	perRound := map[string][]*fortioResult{} // the same key: each round's run, nil where it failed
	cpuPer1000 := map[string]float64{}       // HTTP at 1000 rps: CPU-s per 1000 requests by path
	var sidecarRSS float64                   // HTTP at 1000 rps: the larger sidecar's VmRSS at the end, MB
	// section runs every path once per round, the paths interleaved, and
	// reports each figure's median over the rounds (the machine is shared:
	// one run of a path can land in another tenant's burst).
	section := func(title string, ps []benchPath, grpc bool, qps int, conns int) {
		w("### %s", title)
		w("")
		w("| path | rps | p50 ms | p90 ms | p99 ms | added p50/p90/p99 ms | proxy CPU-s per 1000 req | proxies RSS / RssAnon MB |")
		w("|---|---|---|---|---|---|---|---|")
		runs := make([][]*fortioResult, len(ps))
		byRound := make([][]*fortioResult, len(ps)) // per round, nil where it failed
		cpus := make([][]float64, len(ps))
		failed := make([]error, len(ps))
		for range rounds {
			for i, p := range ps {
				before := cpuOf(p.procs)
				r, err := load(fortio, p.ns, p.url, grpc, qps, runFor, conns)
				byRound[i] = append(byRound[i], r)
				if err != nil {
					failed[i] = err
					continue
				}
				runs[i] = append(runs[i], r)
				if r.count > 0 {
					cpus[i] = append(cpus[i], (cpuOf(p.procs)-before)/float64(r.count)*1000)
				}
			}
		}
		// Memory as the rounds left it, before any profile: serving one
		// (symbolizing every sampled stack) touches pages of the binary a
		// proxy in production never reads.
		mem := make([]string, len(ps))
		for i, p := range ps {
			mem[i] = memOf(p.procs)
			if qps == 1000 && !grpc && p.name == paths[1].name {
				for _, pid := range p.procs {
					if rss, _ := procMem(pid); rss > sidecarRSS {
						sidecarRSS = rss
					}
				}
			}
		}
		// The profiles come from one more run of the profiled paths, not
		// counted in the figures (the profiler costs the proxies a little).
		for _, p := range ps {
			if p.name != paths[1].name && (p.name != paths[4].name || grpc) {
				continue
			}
			kind := "http"
			switch {
			case grpc:
				kind = "grpc"
			case p.name == paths[4].name:
				kind = "tcp" // the same HTTP relayed as bytes: the floor to compare with
			}
			wait := profile(fmt.Sprintf("%s-%dqps", kind, qps))
			_, _ = load(fortio, p.ns, p.url, grpc, qps, runFor, conns)
			wait()
		}
		for i, p := range ps {
			perRound[fmt.Sprintf("%t/%d/%s", grpc, qps, p.name)] = byRound[i]
		}
		var direct *fortioResult
		for i, p := range ps {
			if len(runs[i]) == 0 {
				w("| %s | failed: %v | | | | | | |", p.name, failed[i])
				continue
			}
			r := medianResult(runs[i])
			results[fmt.Sprintf("%t/%d/%s", grpc, qps, p.name)] = r
			if direct == nil {
				direct = r
			}
			added := "—"
			if r != direct {
				added = fmt.Sprintf("%.3f / %.3f / %.3f", r.p50-direct.p50, r.p90-direct.p90, r.p99-direct.p99)
			}
			cpuPer := "—"
			if p.procs != nil && len(cpus[i]) > 0 {
				cpu := median(cpus[i])
				cpuPer = fmt.Sprintf("%.3f", cpu)
				if qps == 1000 && !grpc {
					cpuPer1000[p.name] = cpu
				}
			}
			w("| %s | %.0f | %.3f | %.3f | %.3f | %s | %s | %s |", p.name, r.qps, r.p50, r.p90, r.p99, added, cpuPer, mem[i])
		}
		w("")
	}
	section("HTTP/1.1 at 1000 rps", paths, false, 1000, 8)
	section("HTTP/1.1 at full speed", paths, false, 0, 16)
	anatomy(b, &md, fortio, runFor, []benchPath{paths[1], paths[4], paths[3]})
	section("gRPC (fortio ping) at 1000 rps", grpcPaths, true, 1000, 8)
	section("gRPC (fortio ping) at full speed", grpcPaths, true, 0, 16)
	result := func(grpc bool, qps int, p benchPath) *fortioResult {
		if r := results[fmt.Sprintf("%t/%d/%s", grpc, qps, p.name)]; r != nil {
			return r
		}
		return &fortioResult{}
	}
	get := func(qps int, p benchPath) *fortioResult { return result(false, qps, p) }
	grpcGet := func(qps int, p benchPath) *fortioResult { return result(true, qps, p) }
	direct, mesh, gw, nginx, l4, nginxGW := paths[0], paths[1], paths[2], paths[3], paths[4], paths[5]
	// held counts the rounds in which ok held of the path's run and the
	// peer's, each against direct's run of the same round.
	held := func(grpc bool, qps int, path, peer benchPath, ok func(d, r, n *fortioResult) bool) string {
		key := func(p benchPath) []*fortioResult { return perRound[fmt.Sprintf("%t/%d/%s", grpc, qps, p.name)] }
		ds, rs, ns := key(grpcOr(grpc, grpcPaths[0], paths[0])), key(path), key(peer)
		n, of := 0, 0
		for i := range rs {
			if i >= len(ds) || i >= len(ns) || ds[i] == nil || rs[i] == nil || ns[i] == nil {
				continue
			}
			of++
			if ok(ds[i], rs[i], ns[i]) {
				n++
			}
		}
		return fmt.Sprintf("%d of %d", n, of)
	}
	p99NoWorse := func(d, r, n *fortioResult) bool { return r.p99-d.p99 <= n.p99-d.p99 }
	w("### Against the goals")
	w("")
	w("Issue 27's goals, each judged in every round (a round runs the paths one after another, so a path and its peer meet the same moment of the machine); the value is the median over the rounds.")
	w("")
	w("| figure | value (median) | peer | goal | rounds it held |")
	w("|---|---|---|---|---|")
	w("| HTTP/1.1 at 1000 rps: two sidecars with mTLS, added p99 | %.2f ms | nginx two hops: %.2f ms | <= nginx's | %s |",
		get(1000, mesh).p99-get(1000, direct).p99, get(1000, nginx).p99-get(1000, direct).p99, held(false, 1000, mesh, nginx, p99NoWorse))
	w("| HTTP/1.1 at full speed: two sidecars with mTLS / nginx two hops mTLS, requests per second | %.2f (%.0f / %.0f) | - | >= 1.0 | %s |",
		get(0, mesh).qps/max(get(0, nginx).qps, 1), get(0, mesh).qps, get(0, nginx).qps, held(false, 0, mesh, nginx, func(_, r, n *fortioResult) bool { return r.qps >= n.qps }))
	w("| HTTP/1.1 at full speed, the same relayed as TCP (bytes over mTLS, no HTTP) / nginx two hops mTLS: the floor for a proxy in Go here | %.2f (%.0f / %.0f) | - | - | %s |",
		get(0, l4).qps/max(get(0, nginx).qps, 1), get(0, l4).qps, get(0, nginx).qps, held(false, 0, l4, nginx, func(_, r, n *fortioResult) bool { return r.qps >= n.qps }))
	w("| gRPC at 1000 rps: two sidecars with mTLS, added p99 | %.2f ms | nginx two hops: %.2f ms | <= nginx's | %s |",
		grpcGet(1000, grpcPaths[1]).p99-grpcGet(1000, grpcPaths[0]).p99, grpcGet(1000, grpcPaths[3]).p99-grpcGet(1000, grpcPaths[0]).p99, held(true, 1000, grpcPaths[1], grpcPaths[3], p99NoWorse))
	w("| gRPC at full speed: two sidecars with mTLS / nginx two hops mTLS, requests per second | %.2f (%.0f / %.0f) | - | - | %s |",
		grpcGet(0, grpcPaths[1]).qps/max(grpcGet(0, grpcPaths[3]).qps, 1), grpcGet(0, grpcPaths[1]).qps, grpcGet(0, grpcPaths[3]).qps, held(true, 0, grpcPaths[1], grpcPaths[3], func(_, r, n *fortioResult) bool { return r.qps >= n.qps }))
	w("| HTTP/1.1 at 1000 rps: the east-west gateway hop, added p50 (two sidecars + gateway minus two sidecars) | %.3f ms | nginx's SNI gateway on its two hops: %.3f ms | <= 0.10 ms | %s |",
		get(1000, gw).p50-get(1000, mesh).p50, get(1000, nginxGW).p50-get(1000, nginx).p50, held(false, 1000, gw, mesh, func(_, g, m *fortioResult) bool { return g.p50-m.p50 <= 0.10 }))
	w("| HTTP/1.1 at 1000 rps: the larger sidecar's RSS, shared binary pages included (what kubectl top shows) | %.0f MB | Istio's published figure for Envoy: 60 MB per 1000 rps | <= 30 MB | - |", sidecarRSS)
	w("| HTTP/1.1 at 1000 rps: sidecar CPU (half the two sidecars' CPU-s per 1000 requests) | %.2f vCPU | Istio's published figure for Envoy: 0.20 vCPU per 1000 rps | - | - |", cpuPer1000[mesh.name]/2)
	w("")
	if err := os.WriteFile(out, []byte(md.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

func envDuration(k string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(k)); err == nil {
		return d
	}
	return def
}

// grpcOr picks a or b by grpc.
func grpcOr(grpc bool, a, b benchPath) benchPath {
	if grpc {
		return a
	}
	return b
}

// medianResult is each figure's median over runs of one path.
func medianResult(rs []*fortioResult) *fortioResult {
	pick := func(f func(*fortioResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		return median(v)
	}
	return &fortioResult{qps: pick(func(r *fortioResult) float64 { return r.qps }), count: rs[0].count,
		p50: pick(func(r *fortioResult) float64 { return r.p50 }), p90: pick(func(r *fortioResult) float64 { return r.p90 }),
		p99: pick(func(r *fortioResult) float64 { return r.p99 })}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func fortioVersion(fortio string) string {
	out, _ := exec.Command(fortio, "version").Output()
	return strings.TrimSpace(string(out))
}

type fortioResult struct {
	qps           float64
	count         int64
	p50, p90, p99 float64 // ms
}

// load runs fortio from a namespace as root (captured by the pod's
// sidecar where there is one).
func load(fortio, ns, url string, grpc bool, qps int, d time.Duration, conns ...int) (*fortioResult, error) {
	c := 8
	if len(conns) > 0 {
		c = conns[0]
	}
	jsonPath := filepath.Join(os.TempDir(), fmt.Sprintf("fortio-%d.json", time.Now().UnixNano()))
	defer os.Remove(jsonPath)
	args := []string{"--net=/run/netns/" + ns, fortio, "load", "-qps", strconv.Itoa(qps), "-c", strconv.Itoa(c), "-t", d.String(),
		"-p", "50,90,99", "-r", "0.00001", "-json", jsonPath, "-loglevel", "Error", "-allow-initial-errors"}
	if grpc {
		args = append(args, "-grpc", "-ping")
	}
	args = append(args, url)
	if out, err := exec.Command("nsenter", args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fortio: %v: %s", err, out)
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return nil, err
	}
	var res struct {
		ActualQPS         float64
		DurationHistogram struct {
			Count       int64
			Percentiles []struct{ Percentile, Value float64 }
		}
		RetCodes map[string]int64
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, err
	}
	r := &fortioResult{qps: res.ActualQPS, count: res.DurationHistogram.Count}
	for _, p := range res.DurationHistogram.Percentiles {
		switch p.Percentile {
		case 50:
			r.p50 = p.Value * 1000
		case 90:
			r.p90 = p.Value * 1000
		case 99:
			r.p99 = p.Value * 1000
		}
	}
	ok := res.RetCodes["200"] + res.RetCodes["SERVING"]
	if ok < r.count*99/100 {
		return nil, fmt.Errorf("only %d of %d requests succeeded: %v", ok, r.count, res.RetCodes)
	}
	return r, nil
}

// cpuOf sums user+system CPU seconds of processes (and their children for nginx).
func cpuOf(procs map[string]int) float64 {
	var total float64
	for _, pid := range procs {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		total += (u + s) / 100 // USER_HZ
	}
	return total
}

// memOf lists each process's VmRSS and RssAnon in MB.
func memOf(procs map[string]int) string {
	if procs == nil {
		return "—"
	}
	var names []string
	for n := range procs {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		rss, anon := procMem(procs[n])
		parts = append(parts, fmt.Sprintf("%s %.0f / %.0f", n, rss, anon))
	}
	return strings.Join(parts, "; ")
}

// procMem is a process's VmRSS and RssAnon in MB: what kubectl top shows
// for a container (its binary's pages included), and what it owns.
func procMem(pid int) (rss, anon float64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	field := func(k string) float64 {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, k+":"); ok {
				kb, _ := strconv.ParseFloat(strings.Fields(v)[0], 64)
				return kb / 1024
			}
		}
		return 0
	}
	return field("VmRSS"), field("RssAnon")
}

// startNginx runs nginx in the client namespace (127.0.0.1:18080, mTLS
// upstream) and in the server namespace (:8443 requiring a client
// certificate, to fortio on 127.0.0.1:8080): the peer two-hop path.
// It returns the worker processes.
func startNginx(b *testing.B) map[string]int {
	b.Helper()
	dir := b.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name string, blocks ...*pem.Block) string {
		p := filepath.Join(dir, name)
		var buf []byte
		for _, blk := range blocks {
			buf = append(buf, pem.EncodeToMemory(blk)...)
		}
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			b.Fatal(err)
		}
		return p
	}
	root := write("root.pem", &pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	leaf := func(name string, serial int64) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		t := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, _ := x509.CreateCertificate(rand.Reader, t, caCert, k.Public(), caKey)
		kd, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", &pem.Block{Type: "CERTIFICATE", Bytes: der}), write(name+".key", &pem.Block{Type: "EC PRIVATE KEY", Bytes: kd})
	}
	serverCert, serverKey := leaf("server.bench", 2)
	clientCert, clientKey := leaf("client.bench", 3)
	// keepalive_requests as the research anchors ran nginx: its default
	// (1000) would cost it a TLS handshake every 1000 requests per
	// connection, which the sidecars do not pay.
	common := "worker_processes auto; daemon off; pid %s; error_log stderr error;\nevents { worker_connections 4096; }\nhttp { access_log off; keepalive_requests 100000; %s }\n"
	// HTTP/1.1 on 18080 -> 8443 -> the app's 8080; gRPC (HTTP/2) on
	// 18079 -> 8444 -> the app's 8079.
	// 18081 is the same as 18080 through nginx's own east-west gateway
	// (stream, ssl_preread: TLS passed through by SNI, as isthmus's router).
	client := fmt.Sprintf(`upstream hop { server %[1]s:8443; keepalive 64; keepalive_requests 100000; }
upstream grpchop { server %[1]s:8444; keepalive 64; keepalive_requests 100000; }
upstream gwhop { server %[5]s:18443; keepalive 64; keepalive_requests 100000; }
server { listen 127.0.0.1:18080; location / { proxy_pass https://hop; proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_ssl_certificate %[2]s; proxy_ssl_certificate_key %[3]s; proxy_ssl_trusted_certificate %[4]s; proxy_ssl_verify on;
  proxy_ssl_name server.bench; proxy_ssl_session_reuse on; } }
server { listen 127.0.0.1:18081; location / { proxy_pass https://gwhop; proxy_http_version 1.1; proxy_set_header Connection "";
  proxy_ssl_certificate %[2]s; proxy_ssl_certificate_key %[3]s; proxy_ssl_trusted_certificate %[4]s; proxy_ssl_verify on;
  proxy_ssl_name server.bench; proxy_ssl_server_name on; proxy_ssl_session_reuse on; } }
server { listen 127.0.0.1:18079 http2; location / { grpc_pass grpcs://grpchop;
  grpc_ssl_certificate %[2]s; grpc_ssl_certificate_key %[3]s; grpc_ssl_trusted_certificate %[4]s; grpc_ssl_verify on;
  grpc_ssl_name server.bench; grpc_ssl_session_reuse on; } }`, ipServer, clientCert, clientKey, root, ipGW)
	server := fmt.Sprintf(`upstream app { server 127.0.0.1:8080; keepalive 64; keepalive_requests 100000; }
upstream grpcapp { server 127.0.0.1:8079; keepalive 64; keepalive_requests 100000; }
server { listen %[1]s:8443 ssl; ssl_certificate %[2]s; ssl_certificate_key %[3]s; ssl_client_certificate %[4]s; ssl_verify_client on;
  location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
server { listen %[1]s:8444 ssl http2; ssl_certificate %[2]s; ssl_certificate_key %[3]s; ssl_client_certificate %[4]s; ssl_verify_client on;
  location / { grpc_pass grpc://grpcapp; } }`, ipServer, serverCert, serverKey, root)
	gateway := fmt.Sprintf(`map $ssl_preread_server_name $up { server.bench %s:8443; }
server { listen %s:18443; ssl_preread on; proxy_pass $up; }`, ipServer, ipGW)
	gatewayCommon := "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nworker_processes auto; daemon off; pid %s; error_log stderr error;\nevents { worker_connections 4096; }\nstream { %s }\n"
	procs := map[string]int{}
	for _, n := range []struct{ name, ns, conf string }{{"client nginx", nsClient, client}, {"server nginx", nsServer, server}, {"gateway nginx", nsGW, gateway}} {
		conf := filepath.Join(dir, strings.ReplaceAll(n.name, " ", "-")+".conf")
		pid := conf + ".pid"
		tmpl := common
		if n.ns == nsGW {
			tmpl = gatewayCommon
		}
		if err := os.WriteFile(conf, []byte(fmt.Sprintf(tmpl, pid, n.conf)), 0o644); err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("nsenter", "--net=/run/netns/"+n.ns, "nginx", "-c", conf, "-p", dir, "-e", "stderr")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		workers := children(cmd.Process.Pid)
		b.Cleanup(func() {
			// SIGTERM: the master stops its workers (a killed master leaves
			// them running); then make sure of both.
			stopProcess(cmd, syscall.SIGTERM, 5*time.Second)
			for _, w := range workers {
				// Only if it still is an nginx (its pid could be reused).
				if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", w)); strings.HasPrefix(string(cmdline), "nginx") {
					_ = syscall.Kill(w, syscall.SIGKILL)
				}
			}
		})
		// Workers are the master's children; count them all.
		for i, w := range workers {
			procs[fmt.Sprintf("%s worker %d", n.name, i+1)] = w
		}
		procs[n.name+" master"] = cmd.Process.Pid
	}
	return procs
}

// children lists the child processes of pid.
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// benchPath is a way from fortio to its server: the namespace fortio runs
// in, the URL it calls, and the proxies on the way (name to pid).
type benchPath struct {
	name, ns, url string
	procs         map[string]int
}

// anatomy writes what one proxy hop does per request at full speed, counted
// by perf stat over the processes of paths of two hops each: CPU time,
// system calls by kind and context switches. These runs are extra: tracing
// every system call slows it, so they are not among the measured rounds.
func anatomy(b *testing.B, md *strings.Builder, fortio string, runFor time.Duration, ps []benchPath) {
	const hops = 2
	w := func(format string, a ...any) { fmt.Fprintf(md, format+"\n", a...) }
	w("### What one proxy hop does per request (HTTP/1.1 at full speed, perf stat)")
	w("")
	if _, err := exec.LookPath("perf"); err != nil {
		w("perf is not installed (Debian: linux-perf): no counts.")
		w("")
		return
	}
	kinds := []struct{ title, events string }{
		{"reads", "read,recvfrom,readv,recvmsg"},
		{"writes", "write,writev,sendto,sendmsg"},
		{"epoll waits", "epoll_wait,epoll_pwait"},
		{"futex", "futex"},
		{"nanosleep", "nanosleep"},
	}
	events := []string{"task-clock", "context-switches", "raw_syscalls:sys_enter"}
	for _, k := range kinds {
		for _, e := range strings.Split(k.events, ",") {
			events = append(events, "syscalls:sys_enter_"+e)
		}
	}
	w("A run of %s per path with `perf stat -e %s,... -p <the path's proxies>`; each count divided by the requests fortio completed and by the hops.", runFor, strings.Join(events[:3], ","))
	w("")
	head := "| path | CPU µs | system calls |"
	sep := "|---|---|---|"
	for _, k := range kinds {
		head += " " + k.title + " |"
		sep += "---|"
	}
	w("%s context switches |", head)
	w("%s---|", sep)
	for _, p := range ps {
		var pids []string
		for _, pid := range p.procs {
			pids = append(pids, strconv.Itoa(pid))
		}
		out := filepath.Join(b.TempDir(), "perf.csv")
		perf := exec.Command("perf", "stat", "-x,", "-o", out, "-e", strings.Join(events, ","), "-p", strings.Join(pids, ","), "--", "sleep", strconv.Itoa(int(runFor.Seconds())))
		if err := perf.Start(); err != nil {
			w("| %s | perf: %v |", p.name, err)
			continue
		}
		r, err := load(fortio, p.ns, p.url, false, 0, runFor, 16)
		perfErr := perf.Wait()
		if err != nil || perfErr != nil || r.count == 0 {
			w("| %s | failed: %v %v |", p.name, err, perfErr)
			continue
		}
		counts := map[string]float64{}
		csv, _ := os.ReadFile(out)
		for _, line := range strings.Split(string(csv), "\n") {
			f := strings.Split(line, ",")
			if len(f) < 3 {
				continue
			}
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				counts[f[2]] = v
			}
		}
		per := func(v float64) string { return fmt.Sprintf("%.2f", v/float64(r.count)/hops) }
		row := fmt.Sprintf("| %s | %.1f | %s |", p.name, counts["task-clock"]*1000/float64(r.count)/hops, per(counts["raw_syscalls:sys_enter"]))
		for _, k := range kinds {
			var v float64
			for _, e := range strings.Split(k.events, ",") {
				v += counts["syscalls:sys_enter_"+e]
			}
			row += " " + per(v) + " |"
		}
		w("%s %s |", row, per(counts["context-switches"]))
	}
	w("")
}
