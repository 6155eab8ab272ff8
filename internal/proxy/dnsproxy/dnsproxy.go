// Package dnsproxy is the sidecar's DNS server, Istio's DNS proxying
// (ISTIO_META_DNS_CAPTURE): the app's DNS queries, captured to it, are
// answered from the name table the control plane sends, so a service that
// exists only in another cluster still resolves; every other query goes,
// unchanged, to the pod's own nameservers.
package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const (
	// DefaultAddr is where Istio's agent listens and the DNS capture redirects.
	DefaultAddr = "127.0.0.1:15053"
	// DefaultResolvConf supplies the upstream nameservers and the search list.
	DefaultResolvConf = "/etc/resolv.conf"
	// DefaultUpstreamTimeout is Istio's DNS_FORWARD_TIMEOUT default.
	DefaultUpstreamTimeout = 5 * time.Second
	// TTL of local answers, kept low so that clients which cache pick up
	// address changes soon.
	TTL = 30
	// ednsSize is the buffer size local answers advertise back to EDNS clients.
	ednsSize = 1232
)

// Options configure a Server; the zero value plus Namespace is Istio's set-up.
type Options struct {
	// Namespace is the pod's namespace: only its services answer to their
	// bare name.
	Namespace string
	// Domain is the proxy's DNS domain (pilot-agent's --domain); empty means
	// Namespace.svc.cluster.local. Short names are made only for services
	// under it, less its namespace label.
	Domain string
	// ResolvConf is read for nameservers and the search list; empty means
	// /etc/resolv.conf. It is not read when both Upstreams and Search are set.
	ResolvConf string
	// Upstreams (host:port) replace resolv.conf's nameservers when non-nil.
	Upstreams []string
	// Search replaces resolv.conf's search list when non-nil (empty: none).
	Search []string
	// UpstreamTimeout bounds each upstream attempt; zero means 5 s.
	UpstreamTimeout time.Duration
	// Parallel asks every upstream at once and keeps the first answer
	// (Istio's DNS_FORWARD_PARALLEL); otherwise they are tried one by one
	// in random order.
	Parallel bool
	// ForwardBeforeSync forwards every query until the first table arrives;
	// otherwise such queries get SERVFAIL, as in Istio, where capture starts
	// before the control plane answered.
	ForwardBeforeSync bool
	// Dialer opens the upstream connections (a source address, a socket
	// mark); nil uses net.Dialer with the timeout.
	Dialer *net.Dialer
	// Registerer, when set, receives Istio's agent DNS metrics.
	Registerer prometheus.Registerer
}

// Server answers DNS from the name table and forwards the rest.
type Server struct {
	cfg       tableConfig
	upstreams []string
	timeout   time.Duration
	parallel  bool
	before    bool
	dialer    *net.Dialer
	m         metrics

	table atomic.Pointer[table]
	// forwarding bounds the queries waiting on upstreams (each may wait
	// seconds): a flood from the app gets SERVFAIL, not a goroutine each.
	forwarding chan struct{}

	mu        sync.Mutex
	listeners []listener
	running   bool
}

type listener struct {
	pc net.PacketConn
	l  net.Listener
}

type metrics struct {
	requests, upstreamRequests, upstreamFailures prometheus.Counter
	upstreamDuration                             prometheus.Histogram
}

// New reads resolv.conf (unless Options replace all of it) and returns a
// server with no table yet.
func New(opts Options) (*Server, error) {
	s := &Server{
		upstreams: opts.Upstreams,
		timeout:   opts.UpstreamTimeout,
		parallel:  opts.Parallel,
		before:    opts.ForwardBeforeSync,
		dialer:    opts.Dialer,

		forwarding: make(chan struct{}, maxForwarding),
	}
	if s.timeout <= 0 {
		s.timeout = DefaultUpstreamTimeout
	}
	search := opts.Search
	if opts.Upstreams == nil || opts.Search == nil {
		path := opts.ResolvConf
		if path == "" {
			path = DefaultResolvConf
		}
		rc, err := dns.ClientConfigFromFile(path)
		if err != nil {
			return nil, fmt.Errorf("dns proxy: %w", err)
		}
		if s.upstreams == nil {
			for _, ns := range rc.Servers {
				s.upstreams = append(s.upstreams, net.JoinHostPort(ns, rc.Port))
			}
		}
		if search == nil {
			search = rc.Search
		}
	}
	s.cfg = newTableConfig(opts.Namespace, opts.Domain, search)
	s.m = metrics{
		requests: prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_agent_dns_requests_total",
			Help: "Total number of DNS requests."}),
		upstreamRequests: prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_agent_dns_upstream_requests_total",
			Help: "Total number of DNS requests forwarded to upstream."}),
		upstreamFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "istio_agent_dns_upstream_failures_total",
			Help: "Total number of DNS failures."}),
		upstreamDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "istio_agent_dns_upstream_request_duration_seconds",
			Help:    "Total time in seconds Istio takes to get DNS response from upstream.",
			Buckets: []float64{.001, .005, .01, .1, 1, 5}}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.requests, s.m.upstreamRequests, s.m.upstreamFailures, s.m.upstreamDuration} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("dns proxy metrics: %w", err)
			}
		}
	}
	return s, nil
}

// SetTable replaces the name table in one step; queries in flight finish
// on the table they started with. Safe to call at any time.
func (s *Server) SetTable(names []Name) {
	s.table.Store(buildTable(s.cfg, names))
}

// Table returns the names of the current table, nil before the first one.
func (s *Server) Table() []Name {
	t := s.table.Load()
	if t == nil {
		return nil
	}
	return slices.Clone(t.names)
}

// Ready tells whether a table has arrived: Istio's agent is not ready
// before, since mesh names would not resolve.
func (s *Server) Ready() bool { return s.table.Load() != nil }

// Upstreams are the nameservers misses are forwarded to.
func (s *Server) Upstreams() []string { return slices.Clone(s.upstreams) }

// Listen binds UDP and TCP on addr, on the same port; with port 0 it picks
// a port free for both. It may be called for several addresses (127.0.0.1
// and ::1) before Run, and returns the address bound.
func (s *Server) Listen(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("dns proxy address %q: %w", addr, err)
	}
	ln, err := listenPair(host, port)
	if err != nil {
		return "", fmt.Errorf("dns proxy: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		ln.pc.Close()
		ln.l.Close()
		return "", errors.New("dns proxy: Listen after Run")
	}
	s.listeners = append(s.listeners, ln)
	return ln.l.Addr().String(), nil
}

// listenPair binds UDP and TCP on one port; port 0 takes the UDP port the
// system picks and tries again when TCP has that port taken.
func listenPair(host, port string) (ln listener, err error) {
	for try := 0; try < 20; try++ {
		ln, err = listenOnce(host, port)
		if err == nil || port != "0" || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return ln, err
}

func listenOnce(host, port string) (listener, error) {
	pc, err := net.ListenPacket("udp", net.JoinHostPort(host, port))
	if err != nil {
		return listener{}, err
	}
	_, p, _ := net.SplitHostPort(pc.LocalAddr().String())
	l, err := net.Listen("tcp", net.JoinHostPort(host, p))
	if err != nil {
		pc.Close()
		return listener{}, err
	}
	return listener{pc: pc, l: l}, nil
}

// Run serves what Listen bound until ctx ends, then shuts the listeners.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running || len(s.listeners) == 0 {
		s.mu.Unlock()
		return errors.New("dns proxy: Run needs Listen first, and runs once")
	}
	s.running = true
	lns := s.listeners
	s.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var servers []*dns.Server
	for _, ln := range lns {
		servers = append(servers,
			&dns.Server{PacketConn: ln.pc, Handler: &handler{s, ctx, "udp"}, UDPSize: dns.DefaultMsgSize},
			&dns.Server{Listener: ln.l, Handler: &handler{s, ctx, "tcp"}})
	}
	errc := make(chan error, len(servers))
	started := make(chan struct{}, len(servers))
	for _, srv := range servers {
		srv.NotifyStartedFunc = func() { started <- struct{}{} }
		go func() { errc <- srv.ActivateAndServe() }()
	}
	var err error
	up, done := 0, 0
	for up < len(servers) && err == nil {
		select {
		case <-started:
			up++
		case err = <-errc:
			done++
		}
	}
	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-errc:
			done++
		}
	}
	cancel() // ends the forwards in flight, which shutdown waits for
	// A server that never started cannot be shut down; close its socket.
	for _, srv := range servers {
		if srv.Shutdown() != nil {
			if srv.PacketConn != nil {
				srv.PacketConn.Close()
			} else {
				srv.Listener.Close()
			}
		}
	}
	for ; done < len(servers); done++ {
		<-errc
	}
	return err
}

// Serve is Listen then Run.
func (s *Server) Serve(ctx context.Context, addr string) error {
	if _, err := s.Listen(addr); err != nil {
		return err
	}
	return s.Run(ctx)
}

// handler serves one protocol, since answers are sized for it and
// forwarded over it.
type handler struct {
	s     *Server
	ctx   context.Context
	proto string
}

func (h *handler) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := h.s.resolve(h.ctx, h.proto, req)
	resp.Truncate(maxSize(h.proto, req))
	_ = w.WriteMsg(resp)
}

func (s *Server) resolve(ctx context.Context, proto string, req *dns.Msg) *dns.Msg {
	s.m.requests.Inc()
	if len(req.Question) == 0 {
		return failure(req)
	}
	t := s.table.Load()
	if t == nil {
		if !s.before {
			return failure(req)
		}
		return s.forwardBounded(ctx, proto, req)
	}
	q := req.Question[0]
	// Only addresses come from the table; other types of a known name go
	// upstream, as in Istio.
	if q.Qtype == dns.TypeA || q.Qtype == dns.TypeAAAA {
		if e, ok := t.lookup(strings.ToLower(q.Name)); ok {
			return answer(req, q, e)
		}
	}
	return s.forwardBounded(ctx, proto, req)
}

// maxForwarding is how many queries may wait on upstreams at once.
const maxForwarding = 512

// forwardBounded forwards unless maxForwarding queries already wait.
func (s *Server) forwardBounded(ctx context.Context, proto string, req *dns.Msg) *dns.Msg {
	select {
	case s.forwarding <- struct{}{}:
		defer func() { <-s.forwarding }()
		return s.forward(ctx, proto, req)
	default:
		return failure(req)
	}
}

// answer is authoritative and NOERROR even without a record of the asked
// type: NXDOMAIN on AAAA would make clients that ask A and AAAA together
// (curl, glibc) give up on a v4-only service.
func answer(req *dns.Msg, q dns.Question, e entry) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = true
	if req.IsEdns0() != nil {
		m.SetEdns0(ednsSize, false)
	}
	ips := e.ips.v4
	if q.Qtype == dns.TypeAAAA {
		ips = e.ips.v6
	}
	if len(ips) == 0 {
		return m
	}
	owner := q.Name
	if e.cname != "" {
		// The chain in one answer: some resolvers do not chase a CNAME.
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(owner, dns.TypeCNAME), Target: e.cname})
		owner = e.cname
	}
	// Shuffled, like kube-dns, so that clients taking the first address
	// spread over a headless service's pods.
	order := rand.Perm(len(ips))
	for _, i := range order {
		m.Answer = append(m.Answer, addrRR(owner, ips[i]))
	}
	return m
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: TTL}
}

func addrRR(owner string, ip netip.Addr) dns.RR {
	if ip.Is4() {
		return &dns.A{Hdr: hdr(owner, dns.TypeA), A: ip.AsSlice()}
	}
	return &dns.AAAA{Hdr: hdr(owner, dns.TypeAAAA), AAAA: ip.AsSlice()}
}

// forward sends the query as it came, over the protocol it came on, and
// returns the upstream's reply as it is, or SERVFAIL.
func (s *Server) forward(ctx context.Context, proto string, req *dns.Msg) *dns.Msg {
	s.m.upstreamRequests.Inc()
	start := time.Now()
	defer func() { s.m.upstreamDuration.Observe(time.Since(start).Seconds()) }()
	c := &dns.Client{Net: proto, Dialer: s.dialer, Timeout: s.timeout}
	var resp *dns.Msg
	if s.parallel && len(s.upstreams) > 1 {
		resp = s.forwardParallel(ctx, c, req)
	} else {
		for _, i := range rand.Perm(len(s.upstreams)) {
			if resp = exchange(ctx, c, req, s.upstreams[i], s.timeout); resp != nil {
				break
			}
		}
	}
	if resp == nil {
		s.m.upstreamFailures.Inc()
		return failure(req)
	}
	return resp
}

func (s *Server) forwardParallel(ctx context.Context, c *dns.Client, req *dns.Msg) *dns.Msg {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan *dns.Msg, len(s.upstreams))
	for _, up := range s.upstreams {
		// Each its own copy: packing is not safe to share.
		m := req.Copy()
		go func() { results <- exchange(ctx, c, m, up, s.timeout) }()
	}
	for range s.upstreams {
		if r := <-results; r != nil {
			return r
		}
	}
	return nil
}

func exchange(ctx context.Context, c *dns.Client, req *dns.Msg, upstream string, timeout time.Duration) *dns.Msg {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	r, _, err := c.ExchangeContext(ctx, req, upstream)
	if err != nil {
		return nil
	}
	return r
}

func failure(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}

// maxSize is what the client can take: all of TCP's 64 KiB, or over UDP
// its EDNS0 buffer, at least 512 bytes.
func maxSize(proto string, req *dns.Msg) int {
	if proto == "tcp" {
		return dns.MaxMsgSize
	}
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	return size
}
