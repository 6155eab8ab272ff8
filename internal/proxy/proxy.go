// Package proxy is the data plane, Envoy's role in Istio: a sidecar next
// to each workload and a router (the east-west gateway). It follows the
// configuration the control plane sends over ADS (see xdsclient and
// config), binds the listeners it names, and moves each connection along
// the listener -> filter chain -> cluster -> endpoint path.
//
// Configuration swaps are atomic: a connection uses the snapshot current
// when it was accepted; listeners that disappear stop accepting while
// their open connections run to completion.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/proxy/lb"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rawtcp"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
	"github.com/isthmus-mesh/isthmus/internal/proxy/xdsclient"
)

// Options configure a proxy.
type Options struct {
	// Identity supplies the workload certificate for mTLS; nil serves
	// plaintext only (a router passes TLS through and needs none).
	Identity *identity.Agent
	// ListenAddr overrides the host of every bound listener (tests bind
	// 127.0.0.1 instead of 0.0.0.0); empty keeps the listener's own.
	ListenAddr string
	// Self is the local workload for metrics and the metadata exchange.
	Self *telemetry.Self
	// AccessLog receives one line per request or connection (Istio's
	// default text format); nil logs nothing.
	AccessLog io.Writer
	// AccessLogJSON writes Istio's JSON access log instead of its text
	// (meshConfig accessLogEncoding JSON).
	AccessLogJSON bool
	// Dial reaches upstreams (default: a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Limits bound what clients may hold of the proxy; zero fields take
	// DefaultLimits'.
	Limits Limits
	Log    *slog.Logger
}

// Limits bound what one client, or many, can hold of the proxy.
type Limits struct {
	// ConnectionsPerListener: a listener's connections beyond are closed
	// as they are accepted (counted in envoy_listener_downstream_cx_overflow).
	ConnectionsPerListener int64
	// HeaderTimeout: once a request head has begun, all of it must arrive
	// within this (a client dribbling a head holds nothing for long).
	HeaderTimeout time.Duration
	// TCPIdleTimeout closes a TCP relay that carried no byte either way
	// for this long (Envoy's tcp_proxy idle_timeout), unless its route
	// says otherwise.
	TCPIdleTimeout time.Duration
	// PrematureResets: an HTTP/2 connection on which the client reset at
	// least this many streams within a second of opening them, and at
	// least half of all its streams so, is closed (CVE-2023-44487, the
	// rapid reset; Envoy's premature reset rule).
	PrematureResets int
}

// DefaultLimits are the limits of a proxy whose Options leave them zero.
var DefaultLimits = Limits{ConnectionsPerListener: 32768, HeaderTimeout: time.Minute, TCPIdleTimeout: time.Hour, PrematureResets: 250}

func (l Limits) withDefaults() Limits {
	if l.ConnectionsPerListener == 0 {
		l.ConnectionsPerListener = DefaultLimits.ConnectionsPerListener
	}
	if l.HeaderTimeout == 0 {
		l.HeaderTimeout = DefaultLimits.HeaderTimeout
	}
	if l.TCPIdleTimeout == 0 {
		l.TCPIdleTimeout = DefaultLimits.TCPIdleTimeout
	}
	if l.PrematureResets == 0 {
		l.PrematureResets = DefaultLimits.PrematureResets
	}
	return l
}

// Proxy is one running data plane.
type Proxy struct {
	opts Options
	cur  atomic.Pointer[runtime]

	mu    sync.Mutex // guards bound
	bound map[string]*bound

	ready     chan struct{}
	readyOnce sync.Once
	draining  atomic.Bool
	conns     atomic.Int64 // open downstream connections
	stats     *Stats
	outliers  *lb.Outliers
	// inflight counts requests and TCP connections per cluster name, for
	// the circuit breakers; it outlives configuration swaps.
	inflight sync.Map // string -> *atomic.Int64
	// mirrorSlots holds one token per mirrored copy in flight (mirror.go).
	mirrorSlots chan struct{}
	// spans sends ended spans to the tracing provider (trace.go).
	spans spanExporter

	httpOnce     sync.Once
	http         *http.Server
	proxyHandler *httputil.ReverseProxy
	pools        sync.Map    // upstreamKey -> *transportPool
	h1Pools      sync.Map    // upstreamKey -> *h1Idle
	h1Conns      sync.Map    // *h1Down -> nil: downstream connections of the HTTP/1.1 loop
	h2Pools      sync.Map    // upstreamKey -> *h2Pool
	sweeping     atomic.Bool // the pools' sweeps run (pools.go)
	caFiles      sync.Map    // path -> *parsedFile[*x509.CertPool]: trust bundles TLS origination reads
	crlFiles     sync.Map    // path -> *parsedFile[[]*x509.RevocationList]: revocation lists TLS origination reads
	h2Conns      sync.Map    // *h2Conn -> nil: HTTP/2 downstream connections
	logMu        sync.Mutex
	logFiles     sync.Map // path -> io.Writer: access logs the control plane named (never closed: few paths)
}

// writeAccessLog writes one line; concurrent requests do not interleave.
func (p *Proxy) writeAccessLog(w io.Writer, line string) {
	p.logMu.Lock()
	_, _ = io.WriteString(w, line)
	p.logMu.Unlock()
}

// accessLogOf is where a chain's requests or connections are logged and
// whether as JSON: the chain's own access log (meshConfig's, through the
// control plane, so a change reaches running proxies), else as the proxy
// was started (--access-log); nil: not logged.
func (p *Proxy) accessLogOf(c *config.Chain) (io.Writer, bool) {
	al := chainLog(c)
	if al == nil {
		return p.opts.AccessLog, p.opts.AccessLogJSON
	}
	w, err := p.openLog(al.Path)
	if err != nil {
		return nil, false // Apply refused the configuration that named it
	}
	return w, al.JSON
}

// chainLog is a chain's own access log (nil: none).
func chainLog(c *config.Chain) *config.AccessLog {
	switch {
	case c == nil:
	case c.HTTP != nil:
		return c.HTTP.AccessLog
	case c.TCP != nil:
		return c.TCP.AccessLog
	}
	return nil
}

// openAccessLog opens an access log for appending: /dev/stdout (or -) and
// /dev/stderr are the process's own streams, which the caller does not
// own (close).
func openAccessLog(path string) (f *os.File, own bool, err error) {
	switch path {
	case "/dev/stdout", "-":
		return os.Stdout, false, nil
	case "/dev/stderr":
		return os.Stderr, false, nil
	}
	f, err = os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	return f, err == nil, err
}

// openLog opens an access log the control plane named, once.
func (p *Proxy) openLog(path string) (io.Writer, error) {
	if w, ok := p.logFiles.Load(path); ok {
		return w.(io.Writer), nil
	}
	f, own, err := openAccessLog(path)
	if err != nil {
		return nil, err
	}
	actual, loaded := p.logFiles.LoadOrStore(path, f)
	if loaded && own {
		f.Close() // another request opened it first
	}
	return actual.(io.Writer), nil
}

// openLogs opens the access logs a snapshot's chains name: one that
// cannot be written refuses the configuration (a NACK), rather than
// requests going unlogged.
func (p *Proxy) openLogs(snap *config.Snapshot) error {
	for name, l := range snap.Listeners {
		for _, c := range append(slices.Clone(l.Chains), l.Default) {
			if al := chainLog(c); al != nil {
				if _, err := p.openLog(al.Path); err != nil {
					return fmt.Errorf("listener %q: access log: %w", name, err)
				}
			}
		}
	}
	return nil
}

// runtime is a snapshot plus what the data path derives from it.
type runtime struct {
	snap    *config.Snapshot
	pickers map[string]*lb.Picker
}

// bound is an open listening socket.
type bound struct {
	name string
	addr netip.AddrPort
	ln   net.Listener
	// open counts its connections being served.
	open atomic.Int64
}

// New makes a proxy; Apply gives it configuration, Serve runs it.
func New(opts Options) *Proxy {
	opts.Limits = opts.Limits.withDefaults()
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Dial == nil {
		d := &net.Dialer{KeepAlive: 30 * time.Second}
		opts.Dial = d.DialContext
	}
	// Upstream sockets, as accepted ones, are read and written with raw
	// system calls (rawtcp: the scheduler need not watch them).
	dial := opts.Dial
	opts.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return rawtcp.Wrap(c), nil
	}
	if opts.Self == nil {
		opts.Self = telemetry.NewSelf("", "unknown", "unknown", "unknown", "unknown", nil)
	}
	p := &Proxy{opts: opts, bound: map[string]*bound{}, ready: make(chan struct{}), stats: newStats(), outliers: lb.NewOutliers(),
		mirrorSlots: make(chan struct{}, maxMirrors)}
	p.cur.Store(&runtime{snap: &config.Snapshot{Listeners: map[string]*config.Listener{}, Clusters: map[string]*config.Cluster{}, Routes: map[string]*config.RouteTable{}}, pickers: map[string]*lb.Picker{}})
	return p
}

var _ xdsclient.Applier = (*Proxy)(nil)

// Apply validates a whole candidate configuration, opens the sockets of new
// listeners, and only then swaps it in; any failure leaves the running
// configuration untouched and is returned for the NACK.
func (p *Proxy) Apply(st xdsclient.State, changed string) (map[string][]string, error) {
	snap, want, err := config.Build(config.Resources(st))
	if err != nil {
		return nil, err
	}
	if err := p.openLogs(snap); err != nil {
		return nil, err
	}
	rt := &runtime{snap: snap, pickers: make(map[string]*lb.Picker, len(snap.Clusters))}
	for name, c := range snap.Clusters {
		rt.pickers[name] = lb.New(c)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var opened []*bound
	for _, l := range snap.Listeners {
		if !l.Bind {
			continue
		}
		addr := p.listenAddr(l.Addr)
		if b, ok := p.bound[l.Name]; ok && b.addr == addr {
			continue
		}
		ln, err := net.Listen("tcp", addr.String())
		if err != nil {
			for _, b := range opened {
				b.ln.Close()
			}
			return nil, fmt.Errorf("listener %q: %w", l.Name, err)
		}
		opened = append(opened, &bound{name: l.Name, addr: addr, ln: ln})
	}
	p.cur.Store(rt)
	p.retirePools(snap)
	for name, b := range p.bound {
		l, ok := snap.Listeners[name]
		if !ok || !l.Bind || p.listenAddr(l.Addr) != b.addr {
			b.ln.Close() // open connections finish on their own
			delete(p.bound, name)
		}
	}
	for _, b := range opened {
		if old, ok := p.bound[b.name]; ok {
			old.ln.Close()
		}
		p.bound[b.name] = b
		go p.accept(b)
	}
	// Ready once listeners arrived, even none (a gateway before any
	// Gateway selects it), as Envoy is LIVE after its first LDS.
	if len(snap.Listeners) > 0 || strings.HasSuffix(changed, ".Listener") {
		p.readyOnce.Do(func() { close(p.ready) })
	}
	return want, nil
}

func (p *Proxy) listenAddr(a netip.AddrPort) netip.AddrPort {
	if p.opts.ListenAddr == "" {
		return a
	}
	return netip.AddrPortFrom(netip.MustParseAddr(p.opts.ListenAddr), a.Port())
}

// Ready is closed once the first listeners are configured.
func (p *Proxy) Ready() <-chan struct{} { return p.ready }

// Drain stops accepting on every listener and waits (up to ctx) for open
// connections to finish.
func (p *Proxy) Drain(ctx context.Context) error {
	p.draining.Store(true)
	p.mu.Lock()
	for name, b := range p.bound {
		b.ln.Close()
		delete(p.bound, name)
	}
	p.mu.Unlock()
	// Closes idle keep-alive connections; busy ones finish their request.
	go func() { _ = p.httpServer().Shutdown(ctx) }()
	p.h1Conns.Range(func(k, _ any) bool {
		if c := k.(*h1Down); c.idle.Load() {
			_ = c.d.conn.SetReadDeadline(time.Now()) // wakes its read; it sees draining
		}
		return true
	})
	p.h2Conns.Range(func(k, _ any) bool {
		k.(*h2Conn).drain()
		return true
	})
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for p.conns.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("%d connections still open after the drain period", p.conns.Load())
		}
	}
	return nil
}

func (p *Proxy) accept(b *bound) {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.opts.Log.Warn("accept", "listener", b.name, "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if b.open.Add(1) > p.opts.Limits.ConnectionsPerListener {
			b.open.Add(-1)
			p.stats.cxOverflow.WithLabelValues(b.name).Inc()
			c.Close()
			continue
		}
		c = rawtcp.Wrap(c)
		p.conns.Add(1)
		go func() {
			defer p.conns.Add(-1)
			defer b.open.Add(-1)
			p.serve(c, b.name)
		}()
	}
}

// Snapshot is the configuration in force.
func (p *Proxy) Snapshot() *config.Snapshot { return p.cur.Load().snap }

// Metrics is the proxy's Prometheus registry.
func (p *Proxy) Metrics() *prometheus.Registry { return p.stats.Registry }

// Draining reports whether Drain was called.
func (p *Proxy) Draining() bool { return p.draining.Load() }

// admit takes one of a cluster's circuit-breaker slots (requests or
// connections, by key); it returns a release func, or nil when the cluster
// is at its bound.
func (p *Proxy) admit(key string, bound uint32) func() {
	if bound == 0 {
		return func() {}
	}
	v, _ := p.inflight.LoadOrStore(key, new(atomic.Int64))
	n := v.(*atomic.Int64)
	if n.Add(1) > int64(bound) {
		n.Add(-1)
		return nil
	}
	var once sync.Once
	return func() { once.Do(func() { n.Add(-1) }) }
}
