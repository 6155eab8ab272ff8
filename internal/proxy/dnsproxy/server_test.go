package dnsproxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var protos = []string{"udp", "tcp"}

// fakeUpstream is a nameserver on loopback that knows example.org and
// records what it was asked, over which protocol.
type fakeUpstream struct {
	addr string
	mu   sync.Mutex
	seen []string
}

func (u *fakeUpstream) asked() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

func startUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	ln, err := listenPair("127.0.0.1", "0")
	if err != nil {
		t.Fatal(err)
	}
	u := &fakeUpstream{addr: ln.l.Addr().String()}
	h := func(proto string) dns.HandlerFunc {
		return func(w dns.ResponseWriter, r *dns.Msg) {
			q := r.Question[0]
			u.mu.Lock()
			u.seen = append(u.seen, proto+" "+dns.TypeToString[q.Qtype]+" "+q.Name)
			u.mu.Unlock()
			m := new(dns.Msg)
			m.SetReply(r)
			switch {
			case q.Name == "example.org." && q.Qtype == dns.TypeA:
				m.Answer = []dns.RR{&dns.A{Hdr: hdr(q.Name, dns.TypeA), A: net.IPv4(192, 0, 2, 1)}}
			case q.Name == "example.org.":
			default:
				m.Rcode = dns.RcodeNameError
			}
			_ = w.WriteMsg(m)
		}
	}
	startDNS(t, &dns.Server{PacketConn: ln.pc, Handler: h("udp")})
	startDNS(t, &dns.Server{Listener: ln.l, Handler: h("tcp")})
	return u
}

func startDNS(t *testing.T, srv *dns.Server) {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
}

// deadAddr is a loopback port nobody listens on, for UDP or TCP.
func deadAddr(t *testing.T) string {
	ln, err := listenPair("127.0.0.1", "0")
	if err != nil {
		t.Fatal(err)
	}
	ln.pc.Close()
	ln.l.Close()
	return ln.l.Addr().String()
}

// blackhole takes queries and never answers.
func blackhole(t *testing.T) string {
	ln, err := listenPair("127.0.0.1", "0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := ln.pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		for {
			c, err := ln.l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.pc.Close()
		ln.l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return ln.l.Addr().String()
}

// start runs a server on a loopback port until the test ends.
func start(t *testing.T, opts Options, names []Name) (*Server, string) {
	t.Helper()
	if opts.Namespace == "" {
		opts.Namespace = "multicluster"
	}
	if opts.Search == nil {
		opts.Search = kubeSearch(opts.Namespace)
	}
	if opts.Upstreams == nil {
		opts.Upstreams = []string{}
	}
	if opts.UpstreamTimeout == 0 {
		opts.UpstreamTimeout = 300 * time.Millisecond
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if names != nil {
		s.SetTable(names)
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, addr
}

func query(t *testing.T, proto, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return exchangeMsg(t, proto, addr, m)
}

func exchangeMsg(t *testing.T, proto, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: proto, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s: %v", proto, m.Question[0].Name, err)
	}
	return r
}

// describe lists the answers as "owner TYPE value ttl".
func describe(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, fmt.Sprintf("%s A %s %d", rr.Hdr.Name, rr.A, rr.Hdr.Ttl))
		case *dns.AAAA:
			out = append(out, fmt.Sprintf("%s AAAA %s %d", rr.Hdr.Name, rr.AAAA, rr.Hdr.Ttl))
		case *dns.CNAME:
			out = append(out, fmt.Sprintf("%s CNAME %s %d", rr.Hdr.Name, rr.Target, rr.Hdr.Ttl))
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

func TestTableAnswers(t *testing.T) {
	up := startUpstream(t)
	_, addr := start(t, Options{Upstreams: []string{up.addr}}, demoNames())
	cases := []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"profile.multicluster.svc.cluster.local.", dns.TypeA, []string{"profile.multicluster.svc.cluster.local. A 10.96.0.20 30"}},
		{"profile.multicluster.svc.", dns.TypeA, []string{"profile.multicluster.svc. A 10.96.0.20 30"}},
		{"profile.multicluster.", dns.TypeA, []string{"profile.multicluster. A 10.96.0.20 30"}},
		{"profile.", dns.TypeA, []string{"profile. A 10.96.0.20 30"}},
		// Case is the client's, matching is not.
		{"PROFILE.MultiCluster.", dns.TypeA, []string{"PROFILE.MultiCluster. A 10.96.0.20 30"}},
		{"profile.multicluster.multicluster.svc.cluster.local.", dns.TypeA, []string{
			"profile.multicluster.multicluster.svc.cluster.local. CNAME profile.multicluster. 30",
			"profile.multicluster. A 10.96.0.20 30"}},
		{"api.example.com.multicluster.svc.cluster.local.", dns.TypeA, []string{
			"api.example.com.multicluster.svc.cluster.local. CNAME api.example.com. 30",
			"api.example.com. A 240.240.0.1 30"}},
		{"x.wild.example.com.", dns.TypeA, []string{"x.wild.example.com. A 240.240.0.2 30"}},
		{"dual.multicluster.", dns.TypeAAAA, []string{"dual.multicluster. AAAA fd00::21 30"}},
		{"dual.multicluster.", dns.TypeA, []string{"dual.multicluster. A 10.96.0.21 30"}},
		// Known name, no address of the type: empty NOERROR, not NXDOMAIN.
		{"profile.multicluster.svc.cluster.local.", dns.TypeAAAA, nil},
		{"v6only.multicluster.", dns.TypeA, nil},
		{"profile.multicluster.multicluster.svc.cluster.local.", dns.TypeAAAA, nil},
	}
	for _, proto := range protos {
		for _, c := range cases {
			r := query(t, proto, addr, c.name, c.qtype)
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative || !r.Response {
				t.Errorf("%s %s: rcode %s aa=%v", proto, c.name, dns.RcodeToString[r.Rcode], r.Authoritative)
			}
			if got := describe(r); !slices.Equal(got, c.want) {
				t.Errorf("%s %s %s:\n got %q\nwant %q", proto, dns.TypeToString[c.qtype], c.name, got, c.want)
			}
		}
	}
	if got := up.asked(); len(got) != 0 {
		t.Errorf("table hits went upstream: %q", got)
	}
}

func TestShortNameFromAnotherNamespace(t *testing.T) {
	up := startUpstream(t)
	_, addr := start(t, Options{Namespace: "sample", Upstreams: []string{up.addr}}, demoNames())
	for _, proto := range protos {
		r := query(t, proto, addr, "profile.", dns.TypeA)
		if r.Rcode != dns.RcodeNameError || len(r.Answer) != 0 {
			t.Errorf("%s: bare name of another namespace answered: %s", proto, r)
		}
		r = query(t, proto, addr, "profile.multicluster.svc.cluster.local.sample.svc.cluster.local.", dns.TypeA)
		want := []string{
			"profile.multicluster.svc.cluster.local.sample.svc.cluster.local. CNAME profile.multicluster.svc.cluster.local. 30",
			"profile.multicluster.svc.cluster.local. A 10.96.0.20 30"}
		if got := describe(r); !slices.Equal(got, want) {
			t.Errorf("%s: search expansion: %q", proto, got)
		}
	}
	if got, want := up.asked(), []string{"udp A profile.", "tcp A profile."}; !slices.Equal(got, want) {
		t.Errorf("upstream asked %q, want %q", got, want)
	}
}

func TestForward(t *testing.T) {
	up := startUpstream(t)
	s, addr := start(t, Options{Upstreams: []string{up.addr}}, demoNames())
	for _, proto := range protos {
		r := query(t, proto, addr, "example.org.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
			t.Errorf("%s: forwarded answer: %s", proto, r)
		}
		r = query(t, proto, addr, "nowhere.example.", dns.TypeA)
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: NXDOMAIN not passed on: %s", proto, r)
		}
		// Only addresses come from the table.
		r = query(t, proto, addr, "profile.multicluster.", dns.TypeMX)
		if r.Rcode != dns.RcodeNameError {
			t.Errorf("%s: MX of a table name: %s", proto, r)
		}
	}
	want := []string{"udp A example.org.", "udp A nowhere.example.", "udp MX profile.multicluster.",
		"tcp A example.org.", "tcp A nowhere.example.", "tcp MX profile.multicluster."}
	if got := up.asked(); !slices.Equal(got, want) {
		t.Errorf("upstream asked\n %q\nwant %q", got, want)
	}
	if got := s.Upstreams(); !slices.Equal(got, []string{up.addr}) {
		t.Errorf("Upstreams() = %q", got)
	}
}

func TestUpstreamDown(t *testing.T) {
	for _, c := range []struct {
		name      string
		upstreams func(t *testing.T) []string
	}{
		{"refused", func(t *testing.T) []string { return []string{deadAddr(t)} }},
		{"silent", func(t *testing.T) []string { return []string{blackhole(t)} }},
		{"none", func(t *testing.T) []string { return []string{} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			const timeout = 300 * time.Millisecond
			_, addr := start(t, Options{Upstreams: c.upstreams(t), UpstreamTimeout: timeout}, demoNames())
			for _, proto := range protos {
				begin := time.Now()
				r := query(t, proto, addr, "example.org.", dns.TypeA)
				if took := time.Since(begin); took > timeout+time.Second {
					t.Errorf("%s: SERVFAIL after %v, timeout %v", proto, took, timeout)
				}
				if r.Rcode != dns.RcodeServerFailure {
					t.Errorf("%s: rcode %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
				}
			}
		})
	}
}

func TestUpstreamFailover(t *testing.T) {
	for _, parallel := range []bool{false, true} {
		t.Run(fmt.Sprint("parallel=", parallel), func(t *testing.T) {
			up := startUpstream(t)
			_, addr := start(t, Options{Upstreams: []string{deadAddr(t), blackhole(t), up.addr}, Parallel: parallel,
				UpstreamTimeout: 200 * time.Millisecond}, demoNames())
			for range 4 {
				for _, proto := range protos {
					r := query(t, proto, addr, "example.org.", dns.TypeA)
					if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
						t.Fatalf("%s: %s", proto, r)
					}
				}
			}
		})
	}
}

func TestBeforeFirstTable(t *testing.T) {
	up := startUpstream(t)
	s, addr := start(t, Options{Upstreams: []string{up.addr}}, nil)
	if s.Ready() || s.Table() != nil {
		t.Fatal("ready without a table")
	}
	if r := query(t, "udp", addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("before sync: %s", r)
	}
	s.SetTable(nil) // an empty table is a table
	if !s.Ready() {
		t.Fatal("not ready after SetTable")
	}
	if r := query(t, "udp", addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after sync: %s", r)
	}

	_, addr = start(t, Options{Upstreams: []string{up.addr}, ForwardBeforeSync: true}, nil)
	if r := query(t, "tcp", addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("ForwardBeforeSync: %s", r)
	}
}

// TestReplaceTableUnderLoad swaps tables while clients query: every answer
// comes whole from one table or the other. Meant for -race.
func TestReplaceTableUnderLoad(t *testing.T) {
	table := func(ip string) []Name {
		return []Name{{Host: "profile.multicluster.svc.cluster.local", IPs: ips(ip), Registry: RegistryKubernetes,
			Shortname: "profile", Namespace: "multicluster"}}
	}
	s, addr := start(t, Options{}, table("10.0.0.1"))
	stop := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.SetTable(table(fmt.Sprintf("10.0.0.%d", 1+i%2)))
			_ = s.Table()
			swaps.Add(1)
		}
	})
	var queries sync.WaitGroup
	for i := range 8 {
		proto := protos[i%2]
		queries.Go(func() {
			c := &dns.Client{Net: proto, Timeout: 3 * time.Second}
			for range 100 {
				m := new(dns.Msg)
				m.SetQuestion("profile.multicluster.multicluster.svc.cluster.local.", dns.TypeA)
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					t.Error(err)
					return
				}
				got := describe(r)
				if len(got) != 2 || (got[1] != "profile.multicluster. A 10.0.0.1 30" && got[1] != "profile.multicluster. A 10.0.0.2 30") {
					t.Errorf("%s: torn answer %q", proto, got)
					return
				}
			}
		})
	}
	queries.Wait()
	close(stop)
	wg.Wait()
	if swaps.Load() < 2 {
		t.Errorf("only %d swaps", swaps.Load())
	}
}

func TestTruncation(t *testing.T) {
	var many []netip.Addr
	for i := range 200 {
		many = append(many, netip.AddrFrom4([4]byte{10, 1, byte(i / 256), byte(i)}))
	}
	_, addr := start(t, Options{}, []Name{{Host: "giant.multicluster.svc.cluster.local", IPs: many,
		Registry: RegistryKubernetes, Shortname: "giant", Namespace: "multicluster"}})

	// Plain UDP: 512 bytes and TC, so the resolver retries over TCP.
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("giant.", dns.TypeA)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true // Len measures as sent
	if !r.Truncated || r.Len() > dns.MinMsgSize || len(r.Answer) == 0 || len(r.Answer) >= 200 {
		t.Errorf("udp: tc=%v len=%d answers=%d", r.Truncated, r.Len(), len(r.Answer))
	}

	// EDNS0 with a bigger buffer: up to that size, with an OPT back.
	m.SetEdns0(1232, false)
	c.UDPSize = 1232
	r, _, err = c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	r.Compress = true
	if !r.Truncated || r.Len() > 1232 || len(r.Answer) <= 30 || r.IsEdns0() == nil {
		t.Errorf("udp edns 1232: tc=%v len=%d answers=%d opt=%v", r.Truncated, r.Len(), len(r.Answer), r.IsEdns0())
	}
	m = new(dns.Msg)
	m.SetQuestion("giant.", dns.TypeA)
	m.SetEdns0(4096, false)
	c.UDPSize = 4096
	r, _, err = c.Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 200 {
		t.Errorf("udp edns 4096: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}

	// TCP: everything.
	r = query(t, "tcp", addr, "giant.", dns.TypeA)
	if r.Truncated || len(r.Answer) != 200 {
		t.Errorf("tcp: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
}

func TestShuffle(t *testing.T) {
	_, addr := start(t, Options{}, []Name{{Host: "headless.multicluster.svc.cluster.local",
		IPs: ips("10.2.0.1", "10.2.0.2", "10.2.0.3", "10.2.0.4"), Registry: RegistryKubernetes, Shortname: "headless", Namespace: "multicluster"}})
	firsts := map[string]bool{}
	for range 50 {
		r := query(t, "udp", addr, "headless.", dns.TypeA)
		if len(r.Answer) != 4 {
			t.Fatalf("answers: %q", describe(r))
		}
		firsts[r.Answer[0].(*dns.A).A.String()] = true
	}
	if len(firsts) < 2 {
		t.Errorf("order never changes: %v", firsts)
	}
}

func TestMalformed(t *testing.T) {
	_, addr := start(t, Options{}, demoNames())
	header := func(qd uint16) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b[0:], 0x1234)
		binary.BigEndian.PutUint16(b[4:], qd)
		return b
	}
	bad := [][]byte{
		{0x01},
		[]byte("not dns at all, not at all"),
		header(0), // no question
		header(1), // a question announced, none there
		append(header(1), 0x3f, 'a', 'b', 0, 0, 1),                      // label longer than the packet
		append(header(2), 0, 0, 1, 0, 1),                                // two questions announced, one there
		{0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}, // a response
	}
	uc, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	for _, b := range bad {
		if _, err := uc.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range bad {
		tc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		framed := binary.BigEndian.AppendUint16(nil, uint16(len(b)))
		_, _ = tc.Write(append(framed, b...))
		_ = tc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, _ = tc.Read(make([]byte, 512))
		tc.Close()
	}
	// A TCP frame announcing more than it sends, then hanging up.
	if tc, err := net.Dial("tcp", addr); err == nil {
		_, _ = tc.Write([]byte{0xff, 0xff, 1, 2, 3})
		tc.Close()
	}
	for _, proto := range protos {
		if r := query(t, proto, addr, "profile.", dns.TypeA); len(r.Answer) != 1 {
			t.Errorf("%s after garbage: %s", proto, r)
		}
	}
}

func TestResolvConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "resolv.conf")
	conf := "# kubelet\nnameserver 10.96.0.10\nnameserver fd00::a\nsearch sample.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Namespace: "sample", ResolvConf: path})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.Upstreams(), []string{"10.96.0.10:53", "[fd00::a]:53"}; !slices.Equal(got, want) {
		t.Errorf("upstreams %q, want %q", got, want)
	}
	if s.cfg.search != "sample.svc.cluster.local" || s.cfg.domain != "svc.cluster.local" {
		t.Errorf("config %+v", s.cfg)
	}
	// Options override each part.
	s, err = New(Options{Namespace: "sample", ResolvConf: path, Upstreams: []string{"127.0.0.1:5353"}})
	if err != nil || !slices.Equal(s.Upstreams(), []string{"127.0.0.1:5353"}) || s.cfg.search != "sample.svc.cluster.local" {
		t.Errorf("upstream override: %v %v %+v", err, s.Upstreams(), s.cfg)
	}
	if _, err := New(Options{ResolvConf: filepath.Join(dir, "missing")}); err == nil {
		t.Error("missing resolv.conf accepted")
	}
	if _, err := New(Options{ResolvConf: filepath.Join(dir, "missing"), Upstreams: []string{}, Search: []string{}}); err != nil {
		t.Errorf("resolv.conf read though not needed: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	up := startUpstream(t)
	reg := prometheus.NewRegistry()
	s, addr := start(t, Options{Upstreams: []string{up.addr}, Registerer: reg}, demoNames())
	query(t, "udp", addr, "profile.", dns.TypeA)
	query(t, "udp", addr, "example.org.", dns.TypeA)
	for name, want := range map[string]float64{
		"istio_agent_dns_requests_total":          2,
		"istio_agent_dns_upstream_requests_total": 1,
		"istio_agent_dns_upstream_failures_total": 0,
	} {
		var c prometheus.Collector
		switch {
		case strings.Contains(name, "failures"):
			c = s.m.upstreamFailures
		case strings.Contains(name, "upstream"):
			c = s.m.upstreamRequests
		default:
			c = s.m.requests
		}
		if got := testutil.ToFloat64(c); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 4 {
		t.Errorf("registered families: %d, %v", n, err)
	}
	if _, err := New(Options{Upstreams: []string{}, Search: []string{}, Registerer: reg}); err == nil {
		t.Error("second registration accepted")
	}
}

func TestListenAndRun(t *testing.T) {
	s, err := New(Options{Namespace: "multicluster", Upstreams: []string{}, Search: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("Run without Listen")
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Listen(addr); err == nil {
		t.Fatal("second Listen on a taken address")
	}
	if _, err := s.Listen("no-port"); err == nil {
		t.Fatal("address without port accepted")
	}
	s.SetTable(demoNames())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	if r := query(t, "tcp", addr, "profile.", dns.TypeA); len(r.Answer) != 1 {
		t.Fatalf("answer %s", r)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("still listening after Run returned")
	}
	if _, err := s.Listen("127.0.0.1:0"); err == nil {
		t.Error("Listen after Run accepted")
	}
}

func TestServeIPv6(t *testing.T) {
	s, err := New(Options{Namespace: "multicluster", Upstreams: []string{}, Search: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	s.SetTable(demoNames())
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Serve(ctx, addr) }()
	defer func() { cancel(); <-done }()
	var r *dns.Msg
	for range 50 {
		c := &dns.Client{Net: "udp", Timeout: 200 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("dual.", dns.TypeAAAA)
		if r, _, err = c.Exchange(m, addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond) // refused at once until Serve has bound
	}
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("over ::1: %v %v", err, r)
	}
}

// With maxForwarding queries already waiting on upstreams, the next miss
// gets SERVFAIL at once instead of another wait; table hits still answer.
func TestForwardingIsBounded(t *testing.T) {
	u := startUpstream(t)
	s, addr := start(t, Options{Upstreams: []string{u.addr}}, demoNames())
	for range maxForwarding {
		s.forwarding <- struct{}{}
	}
	if r := query(t, "udp", addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeServerFailure || len(u.asked()) != 0 {
		t.Errorf("a miss beyond the bound: rcode %s, upstream asked %v", dns.RcodeToString[r.Rcode], u.asked())
	}
	<-s.forwarding
	if r := query(t, "udp", addr, "example.org.", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("a miss within the bound: rcode %s", dns.RcodeToString[r.Rcode])
	}
}
