package proxy

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
	"github.com/isthmus-mesh/isthmus/internal/proxy/lb"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
	"golang.org/x/net/http/httpguts"
)

// httpConn carries the downstream state into net/http's per-connection context.
type httpConn struct {
	net.Conn
	d *downstream
}

type ctxKey int

const (
	downstreamKey ctxKey = iota
	routeKey
	decisionKey
)

// oneConn is a listener that yields one connection, so net/http serves a
// connection the proxy already accepted and classified.
type oneConn struct {
	c    chan net.Conn
	addr net.Addr
	done chan struct{}
	once sync.Once
}

func (o *oneConn) Accept() (net.Conn, error) {
	select {
	case c := <-o.c:
		return c, nil
	case <-o.done:
		return nil, net.ErrClosed
	}
}
func (o *oneConn) Close() error   { o.once.Do(func() { close(o.done) }); return nil }
func (o *oneConn) Addr() net.Addr { return o.addr }

// trackedConn closes the one-connection listener when the connection ends.
type trackedConn struct {
	net.Conn
	ln *oneConn
}

func (t *trackedConn) Close() error { t.ln.Close(); return t.Conn.Close() }

// httpServer serves the HTTP/1.1 connections the loop hands over
// (h1serve.go); HTTP/2 has its own relay (h2serve.go).
func (p *Proxy) httpServer() *http.Server {
	p.httpOnce.Do(func() {
		var protos http.Protocols
		protos.SetHTTP1(true)
		p.http = &http.Server{
			Handler:           http.HandlerFunc(p.handle),
			Protocols:         &protos,
			ReadHeaderTimeout: p.opts.Limits.HeaderTimeout,
			IdleTimeout:       time.Hour, // Envoy's default idle timeout
			ConnContext: func(ctx context.Context, c net.Conn) context.Context {
				if tc, ok := c.(*trackedConn); ok {
					if hc, ok := tc.Conn.(*httpConn); ok {
						return context.WithValue(ctx, downstreamKey, hc.d)
					}
				}
				return ctx
			},
			ErrorLog: nil,
		}
		p.proxyHandler = &httputil.ReverseProxy{
			Rewrite:        func(*httputil.ProxyRequest) {},
			Transport:      roundTripper{p},
			FlushInterval:  -1,
			ErrorHandler:   p.upstreamError,
			ModifyResponse: p.exchange,
			BufferPool:     bufferPool{},
		}
	})
	return p.http
}

// serveHTTP serves an HTTP chain's connection: HTTP/1.1 in the proxy's own
// loop (h1serve.go), HTTP/2 negotiated by ALPN in its relay (h2serve.go);
// the loop passes HTTP/2 with prior knowledge on to the relay.
func (p *Proxy) serveHTTP(d *downstream) {
	if tc, ok := d.conn.(*tls.Conn); ok {
		if proto := tc.ConnectionState().NegotiatedProtocol; proto == "h2" || proto == "istio-h2" {
			p.serveH2(d, d.conn)
			return
		}
	}
	p.serveH1(d)
}

// serveStd serves conn, the downstream connection or what replays it,
// with net/http's server and the handler below.
func (p *Proxy) serveStd(d *downstream, conn net.Conn) {
	srv := p.httpServer()
	ln := &oneConn{c: make(chan net.Conn, 1), addr: d.conn.LocalAddr(), done: make(chan struct{})}
	ln.c <- &trackedConn{Conn: &httpConn{Conn: conn, d: d}, ln: ln}
	_ = srv.Serve(ln)
}

// route is what the handler decided for one request.
type route struct {
	rt      *runtime
	d       *downstream
	r       *config.Route
	cluster string
	// flags are Envoy's response flags (NR, UH, UF, UT) for the metrics.
	flags string
	// peer is the other side, learned from the metadata exchange.
	peer telemetry.Peer
	// upstream is the endpoint of the last attempt.
	upstream string
	// respOps are the route's operations on the answer's headers.
	respOps config.HeaderOps
	// h2: HTTP/2 upstream whatever the cluster says (a gRPC export).
	h2 bool
}

// remoteIP is the downstream client's address; none for the proxy's own
// requests (span exports).
func (rc *route) remoteIP() netip.Addr {
	if rc.d == nil || rc.d.conn == nil {
		return netip.Addr{}
	}
	return remoteIP(rc.d.conn)
}

// handle routes one request: route table -> virtual host by Host -> route
// by path -> weighted cluster, then proxies it.
func (p *Proxy) handle(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	d, _ := r.Context().Value(downstreamKey).(*downstream)
	if d == nil {
		http.Error(w, "no downstream", http.StatusInternalServerError)
		return
	}
	rt := p.cur.Load()
	rc := &route{rt: rt, d: d, peer: telemetry.Decode("")}
	ev := &telemetry.Event{Protocol: "http", MTLS: d.chain.TLS != nil}
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		ev.Protocol = "grpc"
	}
	inbound := d.inbound()
	if inbound {
		// The caller's metadata is for us, not for the app; it is believed
		// only from a caller that proved its identity.
		if !d.peer.IsZero() {
			rc.peer = telemetry.Decode(r.Header.Get(telemetry.HeaderMetadata))
		}
		r.Header.Del(telemetry.HeaderMetadata)
		r.Header.Del(telemetry.HeaderMetadataID)
		if !d.peer.IsZero() {
			rc.peer.Principal = d.peer.String()
		}
	} else {
		id, md := p.opts.Self.Headers()
		r.Header.Set(telemetry.HeaderMetadataID, id)
		r.Header.Set(telemetry.HeaderMetadata, md)
	}
	hm := currentHTTP(rt, d)
	// Envoy sanitizes XFCC unless an inbound chain forwards it.
	if inbound && hm.ForwardClientCert {
		p.setXFCC(r, d)
	} else {
		r.Header.Del("X-Forwarded-Client-Cert")
	}
	if r.Header.Get("X-Request-Id") == "" {
		r.Header.Set("X-Request-Id", requestID())
	}
	// An HTTP/2 stream the relay handed over comes decided.
	dec, _ := r.Context().Value(decisionKey).(*decision.Decision)
	if dec == nil {
		decided := p.decide(rt, d, hm, &decision.Request{Method: r.Method, Target: requestTarget(r), Host: r.Host, Header: requestHeader(r)})
		dec = &decided
	}
	rc.r, rc.cluster, rc.flags, rc.respOps = dec.Route, dec.Cluster, dec.Flags, dec.Response
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	upgrade := upgradeType(r.Header)
	switch {
	case r.Method == http.MethodConnect || upgrade != "" && !hm.UpgradeAllowed(rc.r, upgrade):
		// Envoy's upgrade_failed: only the upgrades the connection manager
		// (or the route) lists switch; no CONNECT tunnels.
		rec.WriteHeader(http.StatusForbidden)
	case dec.Location != "":
		rec.Header().Set("Location", dec.Location)
		rec.WriteHeader(dec.Status)
	case len(dec.ReplyHeaders) > 0:
		for _, h := range dec.ReplyHeaders {
			rec.Header().Set(h[0], h[1])
		}
		rec.WriteHeader(dec.Status)
		_, _ = io.WriteString(rec, dec.Body)
	case dec.Status != 0:
		http.Error(rec, dec.Body, dec.Status)
	case dec.Delay > 0 && !delay(dec.Delay, rec, r, rc):
		// the client left during the delay
	case dec.Abort != 0:
		rc.flags = "FI"
		code, body := dec.Reply()
		http.Error(rec, body, code)
	default:
		setTarget(r, dec.Target)
		r.Host = dec.Host
		for _, h := range dec.Remove {
			r.Header.Del(h)
		}
		for _, h := range dec.Set {
			r.Header.Set(h[0], h[1])
		}
		for _, h := range dec.Add {
			r.Header.Add(h[0], h[1])
		}
		if dec.XFF != "" {
			r.Header.Set("X-Forwarded-For", dec.XFF)
		}
		if len(rc.r.Mirrors) > 0 {
			p.mirror(rc, r)
		}
		ctx := context.WithValue(r.Context(), routeKey, rc)
		if rc.r.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, rc.r.Timeout)
			defer cancel()
		}
		p.proxyHandler.ServeHTTP(rec, r.WithContext(ctx))
	}
	ev.Code, ev.Flags = rec.code, rc.flags
	ev.GRPCStatus = rec.Header().Get("Grpc-Status")
	p.sides(ev, inbound, rc.peer, r.Host, rc.cluster)
	dur := time.Since(start)
	p.stats.istio.Request(ev, dur, r.ContentLength, rec.bytes)
	if w, js := p.accessLogOf(d.chain); w != nil || dec.Span != nil {
		a := accessEntry{start: start, dur: dur, method: r.Method, uri: r.URL.RequestURI(), proto: r.Proto, code: rec.code, flags: rc.flags,
			in: r.ContentLength, out: rec.bytes, xff: r.Header.Get("X-Forwarded-For"), ua: r.UserAgent(), requestID: r.Header.Get("X-Request-Id"),
			host: r.Host, upstream: rc.upstream, cluster: rc.cluster, d: d}
		if rc.r != nil {
			a.route = rc.r.Name
		}
		if w != nil {
			p.accessLog(w, js, &a)
		}
		p.endSpan(dec, &a)
	}
}

// upgradeType is the protocol a request asks to switch its connection to
// (ReverseProxy's rule: an Upgrade header that Connection names), or "".
func upgradeType(h http.Header) string {
	if !httpguts.HeaderValuesContainsToken(h["Connection"], "Upgrade") {
		return ""
	}
	return h.Get("Upgrade")
}

// sides fills in who reports a request and its two ends: the destination
// side names the service by the Host it was asked for, the source side by
// the cluster it chose; peer is the other end (the metadata exchange).
func (p *Proxy) sides(ev *telemetry.Event, inbound bool, peer telemetry.Peer, host, cluster string) {
	if inbound {
		ev.Reporter, ev.Src, ev.Dst, ev.Service = "destination", peer, p.opts.Self.Peer, telemetry.ServiceOf(host)
		return
	}
	ev.Reporter, ev.Src, ev.Dst, ev.Service = "source", p.opts.Self.Peer, peer, telemetry.ServiceOfCluster(cluster)
}

// accessEntry is what an HTTP access log line says.
type accessEntry struct {
	start                                              time.Time
	dur                                                time.Duration
	method, uri, proto                                 string
	code                                               int
	flags                                              string
	in, out                                            int64
	xff, ua, requestID, host, upstream, cluster, route string
	d                                                  *downstream
}

// accessLog writes Istio's default text access log line, or its JSON.
func (p *Proxy) accessLog(w io.Writer, js bool, a *accessEntry) {
	if js {
		p.writeAccessLog(w, accessJSON(map[string]any{
			"start_time": a.start.UTC().Format(accessTime), "method": a.method, "path": a.uri, "protocol": a.proto,
			"response_code": a.code, "response_flags": orDash(a.flags), "bytes_received": max(a.in, 0), "bytes_sent": a.out,
			"duration": a.dur.Milliseconds(), "x_forwarded_for": orNil(a.xff), "user_agent": orNil(a.ua), "request_id": orNil(a.requestID),
			"authority": a.host, "upstream_host": orNil(a.upstream), "upstream_cluster": orNil(a.cluster), "route_name": orNil(a.route),
			"downstream_local_address": a.d.dst.String(), "downstream_remote_address": a.d.conn.RemoteAddr().String(),
		}))
		return
	}
	line := fmt.Sprintf("[%s] \"%s %s %s\" %d %s - - \"-\" %d %d %d - \"%s\" \"%s\" \"%s\" \"%s\" \"%s\" %s - %s %s - %s\n",
		a.start.UTC().Format(accessTime), a.method, a.uri, a.proto, a.code, orDash(a.flags),
		max(a.in, 0), a.out, a.dur.Milliseconds(), orDash(a.xff), orDash(a.ua), orDash(a.requestID),
		a.host, orDash(a.upstream), orDash(a.cluster), a.d.dst, a.d.conn.RemoteAddr(), orDash(a.route))
	p.writeAccessLog(w, line)
}

// accessTime is how access log lines write their start time (Envoy's
// %START_TIME%).
const accessTime = "2006-01-02T15:04:05.000Z"

// accessJSON is one JSON access log line with Istio's default keys; the
// keys it has no value for are null, as Envoy writes them.
func accessJSON(fields map[string]any) string {
	for _, k := range []string{"start_time", "route_name", "method", "path", "protocol", "response_code", "response_flags",
		"response_code_details", "connection_termination_details", "upstream_transport_failure_reason", "bytes_received",
		"bytes_sent", "duration", "upstream_service_time", "x_forwarded_for", "user_agent", "request_id", "authority",
		"upstream_host", "upstream_cluster", "upstream_local_address", "downstream_local_address", "downstream_remote_address",
		"requested_server_name"} {
		if _, ok := fields[k]; !ok {
			fields[k] = nil
		}
	}
	b, _ := json.Marshal(fields)
	return string(b) + "\n"
}

func orNil(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// exchange handles the metadata exchange on the way back: an outbound
// proxy learns (and removes) the destination's metadata; an inbound one
// adds its own.
func (p *Proxy) exchange(resp *http.Response) error {
	rc, _ := resp.Request.Context().Value(routeKey).(*route)
	if rc == nil {
		return nil
	}
	for _, h := range rc.respOps.Remove {
		resp.Header.Del(h)
	}
	for _, h := range rc.respOps.Set {
		resp.Header.Set(h[0], h[1])
	}
	for _, h := range rc.respOps.Add {
		resp.Header.Add(h[0], h[1])
	}
	if rc.d.inbound() {
		id, md := p.opts.Self.Headers()
		resp.Header.Set(telemetry.HeaderMetadataID, id)
		resp.Header.Set(telemetry.HeaderMetadata, md)
		return nil
	}
	rc.peer = telemetry.Decode(resp.Header.Get(telemetry.HeaderMetadata))
	resp.Header.Del(telemetry.HeaderMetadata)
	resp.Header.Del(telemetry.HeaderMetadataID)
	return nil
}

// currentHTTP is the HTTP manager of the connection's chain in the
// current configuration: requests on a long-lived connection follow policy
// and route changes made after it was accepted (Envoy drains such
// connections; answering each request with the current config is the same
// for the client). A chain that is gone keeps its last configuration.
func currentHTTP(rt *runtime, d *downstream) *config.HTTPManager {
	if rt.snap == d.snap {
		return d.chain.HTTP
	}
	if l := rt.snap.Listeners[d.listener.Name]; l != nil {
		for _, c := range l.Chains {
			if c.Name == d.chain.Name && c.HTTP != nil {
				return c.HTTP
			}
		}
	}
	return d.chain.HTTP
}

// requestHeader looks headers up as the request decision names them:
// lowercase, with the pseudo-headers :method, :authority and :path, and
// repeated headers joined (see decision.Request).
func requestHeader(r *http.Request) func(string) (string, bool) {
	return func(name string) (string, bool) {
		switch name {
		case ":method":
			return r.Method, true
		case ":authority":
			return r.Host, true
		case ":path":
			return requestTarget(r), true
		case ":scheme":
			if r.TLS != nil {
				return "https", true
			}
			return "http", true
		}
		v, ok := r.Header[http.CanonicalHeaderKey(name)]
		if !ok || len(v) == 0 {
			return "", false
		}
		return joinValues(name, v), true
	}
}

// joinValues is a repeated header's values as one: joined by commas, or
// by "; " for cookies.
func joinValues(name string, v []string) string {
	if len(v) == 1 {
		return v[0]
	}
	if name == "cookie" {
		return strings.Join(v, "; ")
	}
	return strings.Join(v, ",")
}

// requestTarget is the request's target as the client sent it (the path
// form, for a request in absolute form).
func requestTarget(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// setTarget makes target (path and query) what the request sends
// upstream, byte for byte: net/http would otherwise write its own
// escaping of the path (a backslash as %5C).
func setTarget(r *http.Request, target string) {
	path, query, _ := strings.Cut(target, "?")
	r.URL.RawQuery = query
	if !strings.HasPrefix(path, "//") {
		r.URL.Opaque = path
		return
	}
	// An opaque "//x" would read as an authority: keep it as the raw path.
	r.URL.Opaque, r.URL.RawPath = "", path
	if u, err := url.PathUnescape(path); err == nil {
		r.URL.Path = u
	} else {
		r.URL.Path, r.URL.RawPath = path, ""
	}
}

// delay waits out a fault's delay. It returns false when the client left
// meanwhile (and answers 499 for the log).
func delay(d time.Duration, w http.ResponseWriter, r *http.Request, rc *route) bool {
	t := time.NewTimer(d)
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		t.Stop()
		rc.flags = "DC"
		w.WriteHeader(499)
		return false
	}
}

// decide is the request decision (package decision) for a request on
// d's chain, with what the connection says; it counts and logs what an
// AUDIT policy matched and what a policy refused.
func (p *Proxy) decide(rt *runtime, d *downstream, hm *config.HTTPManager, req *decision.Request) decision.Decision {
	table := hm.Inline
	if table == nil {
		table = rt.snap.Routes[hm.RouteName]
	}
	_, req.Secure = d.conn.(*tls.Conn)
	req.RemoteIP, req.DestPort = remoteIP(d.conn), uint32(d.dst.Port())
	if len(hm.Authz) > 0 && !d.peer.IsZero() {
		req.Principal = d.peer.String()
	}
	dec := decision.Decide(hm, table, req)
	p.trace(d, hm, req, &dec)
	switch {
	case dec.DeniedBy != "":
		p.opts.Log.Debug("request denied", "peer", req.Principal, "path", dec.Target, "by", dec.DeniedBy)
	case dec.Audited != "":
		p.stats.audited.Inc()
		p.opts.Log.Info("RBAC audit", "policy", dec.Audited, "peer", req.Principal, "remote", req.RemoteIP, "port", req.DestPort,
			"method", req.Method, "path", dec.Target)
	}
	return dec
}

// setXFCC appends the caller's identity as Istio's inbound does:
// By=<our identity>;Hash=<sha256 of the client certificate>;Subject="";URI=<caller>.
func (p *Proxy) setXFCC(r *http.Request, d *downstream) {
	if d.peer.IsZero() {
		// A plaintext caller (PERMISSIVE) cannot vouch for anyone.
		r.Header.Del("X-Forwarded-Client-Cert")
		return
	}
	v := d.xfcc
	if old := r.Header.Get("X-Forwarded-Client-Cert"); old != "" {
		v = old + "," + v
	}
	r.Header.Set("X-Forwarded-Client-Cert", v)
}

func requestID() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	hex.Encode(out[9:13], b[4:6])
	hex.Encode(out[14:18], b[6:8])
	hex.Encode(out[19:23], b[8:10])
	hex.Encode(out[24:], b[10:])
	out[8], out[13], out[18], out[23] = '-', '-', '-', '-'
	return string(out[:])
}

type statusRecorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// errNoHealthy is a cluster without endpoints to try.
var errNoHealthy = errors.New("no healthy upstream")

// errOverflow is a request a cluster's circuit breaker refused.
var errOverflow = errors.New("circuit breaker: too many requests in flight")

func (p *Proxy) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	code, flag, text := errorReply(err)
	if rc, _ := r.Context().Value(routeKey).(*route); rc != nil {
		rc.flags = flag
	}
	if text == "" {
		w.WriteHeader(code)
		return
	}
	http.Error(w, text, code)
}

// errorReply is Envoy's answer to a request that got no response: status,
// response flag and body text.
func errorReply(err error) (code int, flag, text string) {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, "UT", "upstream request timeout"
	case errors.Is(err, errOverflow):
		return http.StatusServiceUnavailable, "UO", "upstream connect error or disconnect/reset before headers. reset reason: overflow"
	case errors.Is(err, errNoHealthy):
		return http.StatusServiceUnavailable, "UH", "no healthy upstream"
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads the answer.
		return 499, "DC", ""
	default:
		return http.StatusServiceUnavailable, "UF", "upstream connect error or disconnect/reset before headers: " + err.Error()
	}
}

type bufferPool struct{}

var bufs = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

func (bufferPool) Get() []byte  { return *(bufs.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { bufs.Put(&b) }

// roundTripper sends a request to an endpoint of the route's cluster,
// retrying as the route's policy says (another endpoint each time).
type roundTripper struct{ p *Proxy }

// maxRetryBody is how much request body is kept so a retry can resend it.
const maxRetryBody = 64 << 10

func (t roundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	rc, _ := r.Context().Value(routeKey).(*route)
	if rc == nil {
		return nil, errors.New("request without a route")
	}
	p := t.p
	c := rc.rt.snap.Clusters[rc.cluster]
	if c == nil {
		return nil, fmt.Errorf("%w: no cluster %q", errNoHealthy, rc.cluster)
	}
	release := p.admit("rq|"+c.Name, c.MaxRequests)
	if release == nil {
		p.stats.upstreamOverflow.WithLabelValues(c.Name).Inc()
		return nil, errOverflow
	}
	// The slot is held until the response body is done.
	held := false
	defer func() {
		if !held {
			release()
		}
	}()
	retries := uint32(0)
	if rc.r.Retry != nil {
		retries = rc.r.Retry.NumRetries
	}
	// HTTP/2 upstream when the cluster says so (or the client's own): the
	// HTTP/1.1 loop hands such requests here, and the HTTP/2 relay hands
	// over those for HTTP/1.1 upstreams.
	h2 := rc.h2 || c.Protocol == config.UpstreamHTTP2 || c.Protocol == config.UpstreamAsDownstream && r.ProtoMajor == 2
	// A body of known length up to maxRetryBody is read ahead (sent again
	// on a stale connection or a retry), others stream and are sent once.
	// HTTP/1.1 upstreams always read it ahead (they write it in one go);
	// HTTP/2 upstreams (net/http's Transport) only when the route retries.
	var body []byte
	stream := false
	if !h2 || retries > 0 {
		b, s, err := readAheadBody(r)
		if err != nil {
			return nil, err
		}
		body, stream = b, s
		if stream {
			retries = 0 // streaming or large: not replayable
		}
	}
	var pick picker = rc.rt.pickers[rc.cluster]
	if c.LB == config.RingHash {
		key := decision.HashKey(rc.r.Hash, &decision.Request{Header: requestHeader(r), RemoteIP: rc.remoteIP()}, requestTarget(r))
		pick = pickFunc(rc.rt.pickers[rc.cluster].Keyed(key))
	}
	var tried tried
	skip := p.skipper(c, &tried)
	var lastErr error = errNoHealthy
	for attempt := uint32(0); attempt <= retries; attempt++ {
		var ep *config.Endpoint
		var addr string
		if c.Type == config.OriginalDst {
			if rc.d == nil {
				return nil, fmt.Errorf("%w: %q is an original destination cluster, and the proxy's own request has none", errNoHealthy, c.Name)
			}
			addr = rc.d.dst.String()
		} else {
			var lease lb.Lease
			ep, lease = nextEndpoint(pick, skip, &tried)
			if ep == nil {
				return nil, lastErr
			}
			defer lease.Release()
			addr = ep.Addr.String()
			rc.upstream = addr
		}
		// ReverseProxy hands us its own copy: use it for the first attempt.
		out := r
		if attempt > 0 {
			out = r.Clone(r.Context())
		}
		out.URL.Scheme = "http"
		out.URL.Host = addr
		if body != nil {
			out.Body = io.NopCloser(bytes.NewReader(body))
			out.ContentLength = int64(len(body))
		}
		if attempt > 0 {
			out.Header.Set("X-Envoy-Attempt-Count", strconv.Itoa(int(attempt+1)))
		}
		var perTry *time.Timer
		var timedOut atomic.Bool
		cancel := func() {}
		if rc.r.Retry != nil && rc.r.Retry.PerTryTimeout > 0 {
			// Until the response headers: the body streams on.
			var ctx context.Context
			ctx, cancel = context.WithCancel(out.Context())
			out = out.WithContext(ctx)
			perTry = time.AfterFunc(rc.r.Retry.PerTryTimeout, func() { timedOut.Store(true); cancel() })
		}
		var resp *http.Response
		var err error
		if h2 {
			resp, err = p.transport(c, ep, addr).RoundTrip(out)
		} else {
			dial := func(ctx context.Context) (net.Conn, error) {
				return p.dialFor(ctx, c, ep, addr, []string{"istio-http/1.1"})
			}
			resp, err = p.roundTripH1(out, upstreamKey{pool: poolKeyFor(c, ep), addr: addr}, body, stream, dial)
		}
		if perTry != nil {
			perTry.Stop()
		}
		if ep != nil {
			if err != nil {
				p.outliers.Report(c, ep.Addr, lb.GatewayFailure)
			} else {
				p.outliers.Report(c, ep.Addr, lb.ResultOf(resp.StatusCode))
			}
		}
		if err != nil {
			cancel()
			if timedOut.Load() {
				err = fmt.Errorf("per-try timeout %s: %w", rc.r.Retry.PerTryTimeout, context.DeadlineExceeded)
			}
			lastErr = err
			if r.Context().Err() != nil || !(retryableError(rc.r.Retry, err) || timedOut.Load() && retryableTimeout(rc.r.Retry)) {
				return nil, err
			}
			continue
		}
		if perTry != nil {
			resp.Body = onClose(resp.Body, cancel)
		}
		if attempt < retries && retryableStatus(rc.r.Retry, resp.StatusCode, resp.Header.Get("Grpc-Status")) {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			lastErr = fmt.Errorf("upstream answered %d", resp.StatusCode)
			continue
		}
		held = true
		resp.Body = onClose(resp.Body, release)
		return resp, nil
	}
	return nil, lastErr
}

// picker is lb.Picker's Pick, or a keyed pick (pickFunc).
type picker interface {
	Pick(skip func(*config.Endpoint) bool) (*config.Endpoint, lb.Lease)
}

// pickFunc is a pick function as a picker.
type pickFunc func(skip func(*config.Endpoint) bool) (*config.Endpoint, lb.Lease)

func (f pickFunc) Pick(skip func(*config.Endpoint) bool) (*config.Endpoint, lb.Lease) { return f(skip) }

// nextEndpoint picks an attempt's endpoint: one not tried yet (nor
// ejected), else, when every endpoint failed once or is ejected, any of
// them again (Envoy's panic mode). nil when the cluster has none.
func nextEndpoint(pk picker, skip func(*config.Endpoint) bool, tried *tried) (*config.Endpoint, lb.Lease) {
	ep, lease := pk.Pick(skip)
	if ep == nil {
		*tried = (*tried)[:0]
		ep, lease = pk.Pick(nil)
	}
	if ep != nil {
		tried.add(ep)
	}
	return ep, lease
}

// retryableTimeout says whether a per-try timeout is retried: Envoy
// counts it as 5xx, gateway-error and reset.
func retryableTimeout(rp *config.RetryPolicy) bool {
	return rp.On["5xx"] || rp.On["gateway-error"] || rp.On["reset"]
}

// cancelOnClose ends an attempt's context when its body is done.
type cancelOnClose struct {
	io.ReadCloser
	cancel func()
}

func (c *cancelOnClose) Close() error { err := c.ReadCloser.Close(); c.cancel(); return err }

// switchedOnClose is cancelOnClose for the body of a 101 response, which
// ReverseProxy writes to as well.
type switchedOnClose struct {
	cancelOnClose
	w io.Writer
}

func (s *switchedOnClose) Write(b []byte) (int, error) { return s.w.Write(b) }

// onClose has body call cancel once closed, and stay writable if it was.
func onClose(body io.ReadCloser, cancel func()) io.ReadCloser {
	if w, ok := body.(io.ReadWriteCloser); ok {
		return &switchedOnClose{cancelOnClose: cancelOnClose{ReadCloser: body, cancel: cancel}, w: w}
	}
	return &cancelOnClose{ReadCloser: body, cancel: cancel}
}

func retryableError(rp *config.RetryPolicy, err error) bool {
	if rp == nil {
		return false
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return rp.On["connect-failure"] || rp.On["5xx"] || rp.On["gateway-error"] || rp.On["reset"]
	}
	if strings.Contains(err.Error(), "REFUSED_STREAM") {
		return rp.On["refused-stream"] || rp.On["5xx"]
	}
	return rp.On["reset"] || rp.On["5xx"]
}

func retryableStatus(rp *config.RetryPolicy, code int, grpcStatus string) bool {
	if rp == nil {
		return false
	}
	switch {
	case rp.On["5xx"] && code >= 500:
		return true
	case rp.On["gateway-error"] && (code == 502 || code == 503 || code == 504):
		return true
	case rp.On["retriable-status-codes"] && rp.StatusCodes[uint32(code)]:
		return true
	case rp.On["unavailable"] && grpcStatus == "14":
		return true
	case rp.On["cancelled"] && grpcStatus == "1":
		return true
	}
	return false
}

// transport returns net/http's HTTP/2 connection pool of an endpoint
// address (HTTP/2 upstreams of requests net/http's handler serves): one
// per address, so the address's connections go when it leaves the
// cluster (pools.go). HTTP/1.1 upstreams are h1.go's.
func (p *Proxy) transport(c *config.Cluster, ep *config.Endpoint, addr string) http.RoundTripper {
	key := upstreamKey{pool: poolKeyFor(c, ep), addr: addr}
	if v, ok := p.pools.Load(key); ok {
		tp := v.(*transportPool)
		tp.last.Store(time.Now().UnixNano())
		return tp.tr
	}
	alpn := []string{"istio-h2"}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tp := &transportPool{}
	tp.tr = &http.Transport{
		Protocols:           &protos,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     c.IdleTimeout,
		DisableCompression:  true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			rc, _ := ctx.Value(routeKey).(*route)
			if rc == nil {
				return nil, errors.New("dial without a route")
			}
			cl := rc.rt.snap.Clusters[rc.cluster]
			if cl == nil {
				return nil, fmt.Errorf("no cluster %q", rc.cluster)
			}
			var ep *config.Endpoint
			if cl.Type != config.OriginalDst {
				for _, e := range cl.Endpoints {
					if e.Addr.String() == addr {
						ep = e
						break
					}
				}
				if ep == nil {
					return nil, fmt.Errorf("endpoint %s left cluster %q", addr, rc.cluster)
				}
			}
			c, err := p.dialFor(ctx, cl, ep, addr, alpn)
			if err != nil {
				return nil, err
			}
			tp.open.Add(1)
			return &pooledConn{Conn: c, open: &tp.open}, nil
		},
	}
	tp.last.Store(time.Now().UnixNano())
	v, loaded := p.pools.LoadOrStore(key, tp)
	if !loaded {
		p.pooled()
	}
	return v.(*transportPool).tr
}

// poolKeyFor names the connection pool of an endpoint: connections are
// shared by cluster, protocol and TLS identity.
func poolKeyFor(c *config.Cluster, ep *config.Endpoint) poolKey {
	key := poolKey{cluster: c.Name}
	if t := c.TransportFor(ep); t != nil {
		key.tls = t.SNI + "|" + strings.Join(t.SANs, ",")
		if o := t.Originate; o != nil {
			key.tls += "|" + o.CASecret + "|" + o.CAFile + "|" + o.CRLFile + "|" + o.CertSecret + "|" + o.Secrets + "|" + strconv.FormatBool(o.Insecure)
		}
	}
	return key
}

// dialFor opens a connection to an endpoint of a cluster (ep nil for an
// original-destination cluster: addr as the client asked).
func (p *Proxy) dialFor(ctx context.Context, c *config.Cluster, ep *config.Endpoint, addr string, alpn []string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	if c.Type == config.OriginalDst || ep == nil {
		return p.dialTransport(dctx, addr, c.TLS, alpn)
	}
	return p.dialEndpoint(dctx, c, ep, alpn)
}

type poolKey struct {
	cluster string
	tls     string
}
