package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
	"github.com/isthmus-mesh/isthmus/internal/proxy/identity"
	"github.com/isthmus-mesh/isthmus/internal/proxy/iptables"
	"github.com/isthmus-mesh/isthmus/internal/proxy/lb"
	"github.com/isthmus-mesh/isthmus/internal/proxy/origdst"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rawtcp"
	"github.com/isthmus-mesh/isthmus/internal/proxy/rbac"
	"github.com/isthmus-mesh/isthmus/internal/proxy/sniff"
	"github.com/isthmus-mesh/isthmus/internal/proxy/tcpproxy"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// inboundPassthrough is Istio's cluster for inbound ports no service names.
const inboundPassthrough = "InboundPassthroughCluster"

// sniffTimeout bounds how long a client may take to send its first bytes.
const sniffTimeout = 5 * time.Second

// downstream is an accepted connection on its way through a listener.
type downstream struct {
	conn net.Conn
	// dst is where the client meant to go (original destination).
	dst netip.AddrPort
	// peer is the verified mTLS identity of the client, if any.
	peer spiffeid.ID
	// xfcc is the X-Forwarded-Client-Cert element the inbound proxy adds
	// for that caller, made once per connection: it hashes the certificate.
	xfcc     string
	listener *config.Listener
	chain    *config.Chain
	// snap is the configuration the connection was accepted under.
	snap *config.Snapshot
}

func (p *Proxy) serve(c net.Conn, name string) {
	rt := p.cur.Load()
	l := rt.snap.Listeners[name]
	if l == nil {
		c.Close()
		return
	}
	d := &downstream{conn: c, dst: c.LocalAddr().(*net.TCPAddr).AddrPort(), listener: l, snap: rt.snap}
	if l.UseOriginalDst || l.RestoreDst {
		if od, err := origdst.Get(c); err == nil {
			d.dst = od
		}
	}
	if l.UseOriginalDst {
		if v := rt.virtual(d.dst); v != nil {
			d.listener = v
		}
	}
	m := config.Connection{DestPort: uint32(d.dst.Port()), Transport: "raw_buffer"}
	if d.listener.InspectTLS {
		hello, sc, err := sniff.TLS(c, sniffTimeout)
		if err != nil {
			c.Close()
			return
		}
		d.conn = sc
		if hello.TLS {
			m.Transport, m.SNI, m.ALPN = "tls", hello.ServerName, hello.ALPN
		}
	}
	if d.listener.InspectHTTP && m.Transport == "raw_buffer" {
		proto, sc, err := sniff.HTTP(d.conn, sniffTimeout)
		var ne net.Error
		if err != nil && len(sc.Prefix()) == 0 && !(errors.As(err, &ne) && ne.Timeout()) {
			c.Close() // gone before saying anything
			return
		}
		// A client that stays silent (a server-first protocol) is TCP.
		d.conn = sc
		if proto != "" {
			m.ALPN = []string{proto}
		}
	}
	d.chain = d.listener.Match(m)
	if d.chain == nil {
		p.stats.noChain.WithLabelValues(d.listener.Name).Inc()
		p.opts.Log.Debug("no filter chain matches; closing", "listener", d.listener.Name, "dst", d.dst, "sni", m.SNI)
		d.conn.Close()
		return
	}
	if d.chain.TLS != nil {
		if err := p.terminateTLS(d); err != nil {
			p.opts.Log.Debug("downstream TLS handshake failed", "listener", d.listener.Name, "err", err)
			d.conn.Close()
			return
		}
	}
	if len(d.chain.Authz) > 0 {
		req := &rbac.Request{DestPort: uint32(d.dst.Port()), RemoteIP: remoteIP(d.conn)}
		if !d.peer.IsZero() {
			req.Principal = d.peer.String()
		}
		if ok, by := rbac.Allowed(d.chain.Authz, req); !ok {
			p.opts.Log.Debug("connection denied", "peer", req.Principal, "port", req.DestPort, "by", by)
			d.conn.Close()
			return
		}
		if by := rbac.Audited(d.chain.Authz, req); by != "" && d.chain.TCP != nil {
			p.stats.audited.Inc()
			p.opts.Log.Info("RBAC audit", "policy", by, "peer", req.Principal, "remote", req.RemoteIP, "port", req.DestPort)
		}
	}
	switch {
	case d.chain.TCP != nil:
		p.proxyTCP(rt, d)
	case d.chain.HTTP != nil:
		p.serveHTTP(d)
	default:
		d.conn.Close()
	}
}

// virtual finds the listener of an original destination: IP_PORT, then 0.0.0.0_PORT.
func (rt *runtime) virtual(dst netip.AddrPort) *config.Listener {
	if l := rt.snap.Listeners[fmt.Sprintf("%s_%d", dst.Addr(), dst.Port())]; l != nil && !l.Bind {
		return l
	}
	if l := rt.snap.Listeners[fmt.Sprintf("0.0.0.0_%d", dst.Port())]; l != nil && !l.Bind {
		return l
	}
	return nil
}

// istioALPN are the protocols an Istio mTLS client offers; accepting them
// tells the inbound side what runs inside the tunnel.
var istioALPN = []string{"istio-h2", "istio-http/1.1", "istio-http/1.0", "istio", "istio-peer-exchange", "h2", "http/1.1"}

func (p *Proxy) terminateTLS(d *downstream) error {
	var conf *tls.Config
	switch {
	case d.chain.TLS.CertSecret != "":
		c, err := p.gatewayTLS(d.chain.TLS)
		if err != nil {
			return err
		}
		conf = c
	case p.opts.Identity == nil:
		return errors.New("a TLS filter chain but no workload identity")
	default:
		conf = p.opts.Identity.ServerConfig(memberOf(d.chain.TLS.PeerTrustDomains), istioALPN...)
	}
	tc := tls.Server(d.conn, conf)
	ctx, cancel := context.WithTimeout(context.Background(), sniffTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	cs := tc.ConnectionState()
	d.peer, _ = identity.PeerID(cs)
	if !d.peer.IsZero() && len(cs.PeerCertificates) > 0 {
		d.xfcc = p.xfcc(d.peer, cs.PeerCertificates[0].Raw)
	}
	d.conn = tc
	return nil
}

// memberOf accepts peers of the mesh's trust domains only (any under the
// mesh's root when none are named).
func memberOf(trustDomains []string) tlsconfig.Authorizer {
	if len(trustDomains) == 0 {
		return tlsconfig.AuthorizeAny()
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if slices.Contains(trustDomains, id.TrustDomain().Name()) {
			return nil
		}
		return fmt.Errorf("peer %s is not in the mesh's trust domains %v", id, trustDomains)
	}
}

// xfcc is the element the inbound proxy adds for a verified caller:
// By=<our identity>;Hash=<sha256 of the client certificate>;Subject="";URI=<caller>.
func (p *Proxy) xfcc(peer spiffeid.ID, cert []byte) string {
	sum := sha256.Sum256(cert)
	return "By=" + p.opts.Identity.ID().String() + ";Hash=" + hex.EncodeToString(sum[:]) + `;Subject="";URI=` + peer.String()
}

// gatewayTLS is a gateway server's TLS from the SDS secrets of the current
// configuration, so a renewed credential serves the next handshake.
func (p *Proxy) gatewayTLS(t *config.DownstreamTLS) (*tls.Config, error) {
	secrets := p.cur.Load().snap.Secrets
	cert := secrets[t.CertSecret]
	if cert == nil || cert.Cert == nil {
		return nil, fmt.Errorf("secret %q not received yet", t.CertSecret)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{*cert.Cert}, NextProtos: t.ALPN, MinVersion: tls.VersionTLS12}
	if t.RequireClientCert || t.CASecret != "" {
		ca := secrets[t.CASecret]
		if ca == nil || ca.CA == nil {
			return nil, fmt.Errorf("client CA secret %q not received yet", t.CASecret)
		}
		conf.ClientCAs, conf.ClientAuth = ca.CA, tls.VerifyClientCertIfGiven
		if t.RequireClientCert {
			conf.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return conf, nil
}

// inbound tells the destination side (virtualInbound) from the source side.
func (d *downstream) inbound() bool { return d.listener.RestoreDst }

func (p *Proxy) proxyTCP(rt *runtime, d *downstream) {
	cl := d.chain.TCP.Cluster
	if len(d.chain.TCP.Weighted) > 0 {
		cl = decision.PickWeighted(d.chain.TCP.Weighted)
	}
	if c := rt.snap.Clusters[cl]; c != nil && c.MaxConnections > 0 {
		release := p.admit("cx|"+cl, c.MaxConnections)
		if release == nil {
			p.stats.upstreamOverflow.WithLabelValues(cl).Inc()
			d.conn.Close()
			return
		}
		defer release()
	}
	key := ""
	if d.chain.TCP.HashSourceIP {
		key = remoteIP(d.conn).String()
	}
	up, ep, lease, err := p.dialCluster(rt, cl, d.dst, []string{"istio-peer-exchange", "istio"}, key)
	if err != nil {
		p.stats.upstreamFail.WithLabelValues(cl).Inc()
		p.opts.Log.Debug("upstream connect failed", "cluster", cl, "err", err)
		d.conn.Close()
		return
	}
	defer lease.Release()
	down := d.conn
	// Replay what sniffing read, then relay the rest from the socket itself.
	if sc, ok := down.(*sniff.Conn); ok {
		if pre := sc.Prefix(); len(pre) > 0 {
			if _, err := up.Write(pre); err != nil {
				up.Close()
				down.Close()
				return
			}
			sc.DropPrefix()
		}
		down = sc.Raw()
	}
	start := time.Now()
	closed := p.stats.istio.TCPOpened(p.tcpEvent(d, cl, ep, up))
	idle := p.opts.Limits.TCPIdleTimeout
	if d.chain.TCP.IdleTimeout != nil {
		idle = *d.chain.TCP.IdleTimeout // the route's own; 0 turns it off
	}
	sent, recv := tcpproxy.Pipe(down, up, idle)
	closed(sent, recv)
	if w, js := p.accessLogOf(d.chain); w != nil && js {
		p.writeAccessLog(w, accessJSON(map[string]any{"start_time": start.UTC().Format(accessTime),
			"response_code": 0, "response_flags": "-", "bytes_received": sent, "bytes_sent": recv, "duration": time.Since(start).Milliseconds(),
			"upstream_host": up.RemoteAddr().String(), "upstream_cluster": cl, "downstream_local_address": d.dst.String(),
			"downstream_remote_address": d.conn.RemoteAddr().String()}))
	} else if w != nil {
		p.writeAccessLog(w, fmt.Sprintf("[%s] \"- - -\" 0 - - - \"-\" %d %d %d - \"-\" \"-\" \"-\" \"-\" \"%s\" %s - %s %s - -\n",
			start.UTC().Format(accessTime), sent, recv, time.Since(start).Milliseconds(), up.RemoteAddr(), cl, d.dst, d.conn.RemoteAddr()))
	}
}

// tcpEvent labels a TCP connection. Without an exchange over TCP, the
// other side is known by its certificate and endpoint metadata only.
func (p *Proxy) tcpEvent(d *downstream, cluster string, ep *config.Endpoint, up net.Conn) *telemetry.Event {
	self := p.opts.Self.Peer
	if d.inbound() {
		src := telemetry.Decode("")
		if !d.peer.IsZero() {
			src.Principal = d.peer.String()
		}
		return &telemetry.Event{Reporter: "destination", Src: src, Dst: self, Service: telemetry.ServiceOf(""), Protocol: "tcp", MTLS: d.chain.TLS != nil}
	}
	dst := telemetry.Decode("")
	mtls := false
	if tc, ok := up.(*tls.Conn); ok {
		mtls = true
		if id, err := identity.PeerID(tc.ConnectionState()); err == nil {
			dst.Principal = id.String()
		}
	}
	if ep != nil && ep.Cluster != "" {
		dst.Cluster = ep.Cluster
	}
	return &telemetry.Event{Reporter: "source", Src: self, Dst: dst, Service: telemetry.ServiceOfCluster(cluster), Protocol: "tcp", MTLS: mtls}
}

// dialCluster connects to an endpoint of a cluster, trying up to three
// endpoints on connect failure; a consistent-hash cluster picks by key when
// one is given. For ORIGINAL_DST clusters it connects to dst.
func (p *Proxy) dialCluster(rt *runtime, name string, dst netip.AddrPort, alpn []string, key string) (net.Conn, *config.Endpoint, lb.Lease, error) {
	c := rt.snap.Clusters[name]
	if c == nil {
		return nil, nil, lb.Lease{}, fmt.Errorf("no cluster %q", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.ConnectTimeout)
	defer cancel()
	if c.Type == config.OriginalDst {
		if name == inboundPassthrough {
			// From 127.0.0.6, which the pod's capture rules let through.
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(iptables.InboundPassthroughSource)}}
			conn, err := d.DialContext(ctx, "tcp", dst.String())
			if err != nil {
				return nil, nil, lb.Lease{}, err
			}
			return rawtcp.Wrap(conn), nil, lb.Lease{}, nil
		}
		conn, err := p.dialTransport(ctx, dst.String(), c.TLS, alpn)
		return conn, nil, lb.Lease{}, err
	}
	picker := rt.pickers[name]
	var tried tried
	err := fmt.Errorf("cluster %q has no healthy endpoint", name)
	skip := p.skipper(c, &tried)
	pick := picker.Keyed(key)
	for range 3 {
		ep, lease := pick(skip)
		if ep == nil && len(tried) == 0 {
			ep, lease = pick(nil) // every endpoint ejected: try them anyway, as Envoy's panic mode
		}
		if ep == nil {
			break
		}
		conn, derr := p.dialEndpoint(ctx, c, ep, alpn)
		if derr == nil {
			p.outliers.Report(c, ep.Addr, lb.Success)
			return conn, ep, lease, nil
		}
		p.outliers.Report(c, ep.Addr, lb.GatewayFailure)
		lease.Release()
		tried.add(ep)
		err = fmt.Errorf("cluster %q endpoint %s: %w", name, ep.Addr, derr)
	}
	return nil, nil, lb.Lease{}, err
}

// skipper leaves out endpoints already tried and those outlier detection ejected.
func (p *Proxy) skipper(c *config.Cluster, t *tried) func(*config.Endpoint) bool {
	if c.Outlier == nil {
		return t.has
	}
	return func(e *config.Endpoint) bool { return t.has(e) || p.outliers.Ejected(c, e.Addr) }
}

// tried are the endpoints a request or connection already failed on.
type tried []*config.Endpoint

func (t *tried) add(e *config.Endpoint) { *t = append(*t, e) }

func (t tried) has(e *config.Endpoint) bool {
	for _, x := range t {
		if x == e {
			return true
		}
	}
	return false
}

// dialEndpoint opens the transport the endpoint's metadata calls for:
// Istio mTLS (SNI outbound_.PORT_._.HOST, the given ALPN) or plaintext.
func (p *Proxy) dialEndpoint(ctx context.Context, c *config.Cluster, ep *config.Endpoint, alpn []string) (net.Conn, error) {
	return p.dialTransport(ctx, ep.Addr.String(), c.TransportFor(ep), alpn)
}

// dialTransport connects to addr and, with t, originates Istio mTLS over
// it. An original-destination cluster (a headless service's) has one
// transport for every address, as Istio sends it: no endpoint metadata
// exists to choose by.
func (p *Proxy) dialTransport(ctx context.Context, addr string, t *config.UpstreamTLS, alpn []string) (net.Conn, error) {
	raw, err := p.opts.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return raw, nil
	}
	if t.Originate != nil {
		tc, err := p.originate(ctx, raw, t, alpn)
		if err != nil {
			raw.Close()
			return nil, err
		}
		return tc, nil
	}
	if p.opts.Identity == nil {
		raw.Close()
		return nil, errors.New("mTLS endpoint but no workload identity")
	}
	authorize := tlsconfig.AuthorizeAny()
	if len(t.SANs) > 0 {
		var ids []spiffeid.ID
		for _, s := range t.SANs {
			if id, err := spiffeid.FromString(s); err == nil {
				ids = append(ids, id)
			}
		}
		authorize = tlsconfig.AuthorizeOneOf(ids...)
	}
	if len(alpn) == 0 {
		alpn = t.ALPN
	}
	tc := tls.Client(raw, p.opts.Identity.ClientConfig(t.SNI, authorize, alpn...))
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("mTLS handshake: %w", err)
	}
	return tc, nil
}

// originate opens TLS of the proxy's own over raw, to a server outside
// the mesh (DestinationRule tls SIMPLE or MUTUAL): its certificate
// verified against the CA the cluster names and its name against the
// SANs (else the SNI), the client certificate presented for MUTUAL. The
// engines' Istio ALPN becomes the plain protocol.
func (p *Proxy) originate(ctx context.Context, raw net.Conn, t *config.UpstreamTLS, alpn []string) (*tls.Conn, error) {
	o := t.Originate
	cfg := &tls.Config{ServerName: t.SNI, MinVersion: tls.VersionTLS12}
	for _, a := range alpn {
		switch a {
		case "istio-h2", "h2":
			cfg.NextProtos = append(cfg.NextProtos, "h2")
		case "istio-http/1.1", "http/1.1":
			cfg.NextProtos = append(cfg.NextProtos, "http/1.1")
		}
	}
	secret := func(name string) *config.Secret {
		if rt := p.cur.Load(); rt != nil && rt.snap != nil {
			return rt.snap.Secrets[name]
		}
		return nil
	}
	switch {
	case o.Insecure:
		cfg.InsecureSkipVerify = true
	case o.CASecret != "":
		s := secret(o.CASecret)
		if s == nil || s.CA == nil {
			return nil, fmt.Errorf("TLS origination: CA secret %q not received from the control plane", o.CASecret)
		}
		cfg.RootCAs = s.CA
	default:
		pool, err := p.caPool(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("TLS origination: %w", err)
		}
		cfg.RootCAs = pool
	}
	if o.CertSecret != "" {
		s := secret(o.CertSecret)
		if s == nil || s.Cert == nil {
			return nil, fmt.Errorf("TLS origination: client certificate %q not received from the control plane", o.CertSecret)
		}
		cfg.Certificates = []tls.Certificate{*s.Cert}
	}
	var crls []*x509.RevocationList
	if o.CRLFile != "" && !o.Insecure {
		var err error
		if crls, err = p.crlList(o.CRLFile); err != nil {
			return nil, fmt.Errorf("TLS origination: CRL: %w", err)
		}
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return notRevoked(cs.VerifiedChains, crls, time.Now()) }
	}
	if len(t.SANs) > 0 && !o.Insecure {
		// The chain as usual, the name against the SANs instead of the SNI.
		roots := cfg.RootCAs
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			chains, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
			if err != nil {
				return err
			}
			if o.CRLFile != "" {
				if err := notRevoked(chains, crls, time.Now()); err != nil {
					return err
				}
			}
			for _, san := range t.SANs {
				if leaf.VerifyHostname(san) == nil || slices.ContainsFunc(leaf.URIs, func(u *url.URL) bool { return u.String() == san }) {
					return nil
				}
			}
			return fmt.Errorf("the server's certificate names none of %v", t.SANs)
		}
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS origination to %s (%s): %w", raw.RemoteAddr(), t.SNI, err)
	}
	return tc, nil
}

// parsedFile is what a file parsed to, kept while the file is unchanged.
type parsedFile[T any] struct {
	mod  time.Time
	size int64
	v    T
}

// parseCached parses the file at path once, and again when it changes;
// cache holds path -> *parsedFile[T].
func parseCached[T any](cache *sync.Map, path string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	fi, err := os.Stat(path)
	if err != nil {
		return zero, err
	}
	if v, ok := cache.Load(path); ok {
		if c := v.(*parsedFile[T]); c.mod.Equal(fi.ModTime()) && c.size == fi.Size() {
			return c.v, nil
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return zero, err
	}
	v, err := parse(b)
	if err != nil {
		return zero, err
	}
	cache.Store(path, &parsedFile[T]{mod: fi.ModTime(), size: fi.Size(), v: v})
	return v, nil
}

// caPool is the certificates of a PEM file, parsed again only when the
// file changes: the system's bundle has some hundred and fifty, too many
// to parse for every connection.
func (p *Proxy) caPool(path string) (*x509.CertPool, error) {
	return parseCached(&p.caFiles, path, func(b []byte) (*x509.CertPool, error) {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("no PEM certificate in %s", path)
		}
		return pool, nil
	})
}

// remoteIP is the client's address on the downstream connection.
func remoteIP(c net.Conn) netip.Addr {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.AddrPort().Addr().Unmap()
	}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}
