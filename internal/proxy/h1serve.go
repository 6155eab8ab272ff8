package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
	"github.com/isthmus-mesh/isthmus/internal/proxy/lb"
	"github.com/isthmus-mesh/isthmus/internal/proxy/sniff"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// HTTP/1.1 from downstream, served by the proxy itself on the connection's
// goroutine: the request head is parsed in place, routed, written to a
// pooled upstream connection with the mesh's headers, and the response
// relayed back as it arrives. net/http's server spends a goroutine per
// request (its background read), deadlines and a context per request and
// a full header map twice (server and ReverseProxy); in the data-plane
// profiles that was most of what an HTTP hop cost beyond the bytes. The
// same two sidecars relaying the traffic as TCP were four times cheaper.
//
// The loop serves requests it is sure of: HTTP/1.1, a plain path, no body
// or a Content-Length of at most 64 KiB (kept for retries), no Upgrade or
// Expect, routed to an HTTP/1.1 upstream without mirrors. What to do with a request is the
// proxy's one decision (package decision), which the loop carries out,
// answering refusals, redirects and fault aborts itself. The first request
// that is not for the loop, or an HTTP/2 preface, hands the connection
// with every byte read so far to net/http (serveStd), which serves it from
// then on with the full handler. Nothing has been sent upstream or
// downstream for that request when it is handed over.

// maxH1Head bounds a message head the loop reads; larger go to net/http.
const maxH1Head = 16 << 10

// idleTimeout is Envoy's default idle timeout for downstream connections.
const idleTimeout = time.Hour

// errNotFast is a request head the loop leaves to net/http.
var errNotFast = errors.New("not for the HTTP/1.1 loop")

// h1Down is one downstream connection served by the loop.
type h1Down struct {
	p  *Proxy
	d  *downstream
	br *bufio.Reader
	bw *bufio.Writer
	// head, fields: the request head; out: the upstream request head;
	// resp, rfields: the response head; body: the request body.
	head, out, resp, body []byte
	fields, rfields       []h1Field
	// idle is set while waiting for a request: Drain wakes it to close.
	idle atomic.Bool
	// series and md/mdPeer: the connection's last metrics series and
	// decoded peer metadata, which its next request most likely shares.
	series telemetry.LastSeries
	md     []byte
	mdPeer *telemetry.Peer
	watch  clientWatch
	// req and host are the request being served; headerFn looks its
	// headers up for route matching, and tried/skipFn are its attempts'
	// endpoints (skipOutlier: the cluster whose ejections skipFn honours).
	// Kept here, made once, so that a request allocates none of them.
	req         h1Req
	host        string
	dreq        decision.Request
	headerFn    func(string) (string, bool)
	tried       tried
	skipFn      func(*config.Endpoint) bool
	skipOutlier *config.Cluster
	// last is the upstream endpoint of the last request and its pool:
	// the next one most likely goes there too (configuration objects are
	// immutable, so their pointers identify them).
	last struct {
		cl   *config.Cluster
		ep   *config.Endpoint
		addr string
		idle *h1Idle
	}
	// closing: the answer ends the connection (the client asked, or the
	// proxy drains); it says Connection: close.
	closing     bool
	deadlineSet time.Time
}

var (
	downReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	downWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 8<<10) }}
)

// serveH1 serves a downstream connection of an HTTP chain.
func (p *Proxy) serveH1(d *downstream) {
	c := &h1Down{p: p, d: d, br: downReaders.Get().(*bufio.Reader), bw: downWriters.Get().(*bufio.Writer)}
	c.br.Reset(d.conn)
	c.bw.Reset(d.conn)
	p.h1Conns.Store(c, nil)
	defer func() {
		// A bug here must cost one connection, not the proxy (net/http's
		// server recovers its handlers the same way).
		if v := recover(); v != nil {
			p.h1Conns.Delete(c)
			d.conn.Close()
			p.opts.Log.Error("HTTP/1.1 loop panicked; connection closed", "panic", v, "stack", string(debug.Stack()))
		}
	}()
	for {
		// idle before draining is read, as Drain sets draining before it
		// looks for idle connections: one of the two sees the other.
		c.idle.Store(true)
		if p.draining.Load() {
			break
		}
		err := c.readHead()
		c.idle.Store(false)
		if err == nil {
			var ok bool
			c.req, c.fields, ok = parseRequestHead(c.head, c.fields)
			if ok {
				switch c.serve(&c.req) {
				case keepAlive:
					continue
				case closeAfter:
					err = io.EOF
				}
			}
		}
		if errors.Is(err, errNotFast) || err == nil {
			p.h1Conns.Delete(c)
			c.handOver()
			return
		}
		break
	}
	p.h1Conns.Delete(c)
	c.free()
	d.conn.Close()
}

// handOver gives the connection to net/http, or to the HTTP/2 relay if it
// began with the HTTP/2 preface, replaying what was read.
func (c *h1Down) handOver() {
	buffered, _ := c.br.Peek(c.br.Buffered())
	read := make([]byte, 0, len(c.head)+len(buffered))
	read = append(append(read, c.head...), buffered...)
	c.free()
	conn := sniff.Replay(c.d.conn, read)
	if bytes.HasPrefix(read, []byte("PRI * HTTP/2.0\r\n")) {
		c.p.serveH2(c.d, conn)
		return
	}
	c.p.serveStd(c.d, conn)
}

func (c *h1Down) free() {
	c.br.Reset(nil)
	c.bw.Reset(nil)
	downReaders.Put(c.br)
	downWriters.Put(c.bw)
	c.br, c.bw = nil, nil
}

// readHead reads a request head, refreshing the idle deadline now and then
// (a deadline per request costs timer work on every one).
func (c *h1Down) readHead() error {
	if now := time.Now(); now.Sub(c.deadlineSet) > time.Minute {
		if err := c.d.conn.SetReadDeadline(now.Add(idleTimeout)); err != nil {
			return err
		}
		c.deadlineSet = now
		if c.p.draining.Load() {
			return net.ErrClosed // Drain may have just woken the connection
		}
	}
	// The idle deadline waits for a request; once one begins, its head
	// must arrive within the header timeout. Most heads arrive whole in
	// one read, and those need no deadline of their own.
	if _, err := c.br.Peek(1); err != nil {
		return err
	}
	slow := !bytes.Contains(c.peekBuffered(), headEnd)
	if slow {
		if err := c.d.conn.SetReadDeadline(time.Now().Add(c.p.opts.Limits.HeaderTimeout)); err != nil {
			return err
		}
	}
	var err error
	c.head, err = readHeadInto(c.br, c.head[:0])
	if slow && err == nil {
		c.deadlineSet = time.Now()
		err = c.d.conn.SetReadDeadline(c.deadlineSet.Add(idleTimeout))
	}
	return err
}

var headEnd = []byte("\r\n\r\n")

// peekBuffered is what the reader holds, unread.
func (c *h1Down) peekBuffered() []byte {
	b, _ := c.br.Peek(c.br.Buffered())
	return b
}

// readHeadInto appends a message head (through its empty line) to buf.
// Bare LF line ends and heads over maxH1Head are errNotFast.
func readHeadInto(br *bufio.Reader, buf []byte) ([]byte, error) {
	start := len(buf)
	for {
		line, err := br.ReadSlice('\n')
		buf = append(buf, line...)
		if len(buf) > maxH1Head {
			return buf, errNotFast
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return buf, err
		}
		n := len(buf)
		switch {
		case n-start < 2 || buf[n-2] != '\r':
			return buf, errNotFast // a bare LF
		case n-start == 2:
			return buf, errNotFast // an empty line before the request: rare, net/http skips it
		case buf[n-3] == '\n':
			return buf, nil // the empty line that ends the head
		}
	}
}

type outcome int

const (
	keepAlive  outcome = iota // answered; the connection carries on
	closeAfter                // answered or failed; the connection is done
	notServed                 // not for the loop; nothing was sent
)

// serve routes one request and proxies it.
func (c *h1Down) serve(req *h1Req) outcome {
	p, d := c.p, c.d
	start := time.Now()
	rt := p.cur.Load()
	hm := currentHTTP(rt, d)
	inbound := d.inbound()
	host := string(req.host)
	c.host = host
	if c.headerFn == nil {
		c.headerFn = c.header
	}
	c.dreq = decision.Request{Method: method(req.method), Target: string(req.target), Host: host, Header: c.headerFn}
	dec := p.decide(rt, d, hm, &c.dreq)
	r, name := dec.Route, dec.Cluster
	var cl *config.Cluster
	if dec.Status == 0 {
		cl = rt.snap.Clusters[name]
		// HTTP/2 upstreams and mirrors are net/http's handler's.
		if cl != nil && cl.Protocol == config.UpstreamHTTP2 || r != nil && len(r.Mirrors) > 0 {
			return notServed
		}
	}

	// From here on the request is the loop's.
	if req.length > 0 {
		c.body = growTo(c.body, int(req.length))
		if _, err := io.ReadFull(c.br, c.body); err != nil {
			return closeAfter
		}
	} else {
		c.body = c.body[:0]
	}
	ev := telemetry.Event{Protocol: "http", MTLS: d.chain.TLS != nil}
	var peer telemetry.Peer
	reqID := c.buildUpstreamHead(req, &dec, hm, inbound, &peer, &ev)
	c.closing = req.close || p.draining.Load()
	x := h1Exchange{req: req, route: r, cluster: name, c: cl, flags: dec.Flags, respOps: dec.Response}
	if dec.Delay > 0 {
		// A fault's delay: the connection's requests are serial, so the
		// loop waits (a client that leaves meanwhile is found on writing).
		time.Sleep(dec.Delay)
	}
	var res outcome
	if dec.Status != 0 || dec.Abort != 0 {
		if dec.Abort != 0 {
			x.flags = "FI"
		}
		code, body := dec.Reply()
		res = c.reply(&x, code, body, dec.Location, dec.ReplyHeaders...)
	} else {
		res = c.forward(rt, &x)
	}
	if !inbound {
		peer = x.peer // the destination, from the answer's metadata
	}
	p.sides(&ev, inbound, peer, host, name)
	ev.Code, ev.Flags, ev.GRPCStatus = x.code, x.flags, x.grpcStatus
	dur := time.Since(start)
	p.stats.istio.RequestOn(&c.series, &ev, dur, req.length, x.sent)
	if w, js := p.accessLogOf(d.chain); w != nil || dec.Span != nil {
		a := accessEntry{start: start, dur: dur, method: string(req.method), uri: string(req.target), proto: "HTTP/1.1",
			code: x.code, flags: x.flags, in: req.length, out: x.sent, xff: c.get("x-forwarded-for"), ua: c.get("user-agent"),
			requestID: reqID, host: dec.Host, upstream: x.upstream, cluster: name, d: d}
		if r != nil {
			a.route = r.Name
		}
		if w != nil {
			p.accessLog(w, js, &a)
		}
		p.endSpan(&dec, &a)
	}
	if res != keepAlive || c.closing {
		_ = c.bw.Flush()
		return closeAfter
	}
	if err := c.bw.Flush(); err != nil {
		return closeAfter
	}
	return keepAlive
}

// dropped is Decision.Drops for a header name as the client wrote it.
func dropped(dec *decision.Decision, name []byte) bool {
	if dec.XFF != "" && fieldIs(name, "x-forwarded-for") {
		return true
	}
	return opsDrop(&config.HeaderOps{Remove: dec.Remove, Set: dec.Set}, name)
}

// opsDrop is HeaderOps.Drops for a header name as the peer wrote it.
func opsDrop(ops *config.HeaderOps, name []byte) bool {
	for _, r := range ops.Remove {
		if fieldIs(name, r) {
			return true
		}
	}
	for _, s := range ops.Set {
		if fieldIs(name, s[0]) {
			return true
		}
	}
	return false
}

// method is a request's method as a string, without allocating for the
// common ones.
func method(b []byte) string {
	switch string(b) {
	case "GET":
		return "GET"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "HEAD":
		return "HEAD"
	case "DELETE":
		return "DELETE"
	case "PATCH":
		return "PATCH"
	case "OPTIONS":
		return "OPTIONS"
	}
	return string(b)
}

// peerOf decodes an x-envoy-peer-metadata value, the connection's last
// one without decoding (or hashing) it again.
func (c *h1Down) peerOf(v []byte) telemetry.Peer {
	if c.mdPeer == nil || !bytes.Equal(v, c.md) {
		p := telemetry.Decode(string(v))
		c.md, c.mdPeer = append(c.md[:0], v...), &p
	}
	return *c.mdPeer
}

// header looks the current request's headers up as route matchers name
// them (see requestHeader).
func (c *h1Down) header(name string) (string, bool) {
	switch name {
	case ":method":
		return string(c.req.method), true
	case ":authority":
		return c.host, true
	case ":path":
		return string(c.req.target), true
	case ":scheme":
		// As Envoy for HTTP/1.1: the downstream connection's.
		if c.d.chain.TLS != nil {
			return "https", true
		}
		return "http", true
	}
	var v []byte
	n := 0
	for _, f := range c.fields {
		if fieldIs(f.name, name) {
			if n == 0 {
				v = f.value
			} else {
				sep := ","
				if name == "cookie" {
					sep = "; "
				}
				v = append(append(append([]byte(nil), v...), sep...), f.value...)
			}
			n++
		}
	}
	return string(v), n > 0
}

// skip leaves out the endpoints the request tried and those outlier
// detection ejected (see Proxy.skipper).
func (c *h1Down) skip(e *config.Endpoint) bool {
	return c.tried.has(e) || c.skipOutlier != nil && c.p.outliers.Ejected(c.skipOutlier, e.Addr)
}

// get is a request header's first value, "" if absent.
func (c *h1Down) get(lower string) string {
	for _, f := range c.fields {
		if fieldIs(f.name, lower) {
			return string(f.value)
		}
	}
	return ""
}

func growTo(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// hopByHop are the headers of one connection, never forwarded.
func hopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return fieldIs(name, "te")
	case 7:
		return fieldIs(name, "trailer") || fieldIs(name, "upgrade")
	case 10:
		return fieldIs(name, "connection") || fieldIs(name, "keep-alive")
	case 16:
		return fieldIs(name, "proxy-connection")
	case 17:
		return fieldIs(name, "transfer-encoding")
	case 18:
		return fieldIs(name, "proxy-authenticate")
	case 19:
		return fieldIs(name, "proxy-authorization")
	}
	return false
}

// exchangeHeader tells the metadata exchange's headers.
func exchangeHeader(name []byte) bool {
	return fieldIs(name, "x-envoy-peer-metadata") || fieldIs(name, "x-envoy-peer-metadata-id")
}

// buildUpstreamHead writes the request head for upstreams into c.out
// (without the final empty line): the route's rewrites, hop-by-hop headers
// dropped, and the mesh's own headers as handle sets them. It returns the
// request ID.
func (c *h1Down) buildUpstreamHead(req *h1Req, dec *decision.Decision, hm *config.HTTPManager, inbound bool, peer *telemetry.Peer, ev *telemetry.Event) (reqID string) {
	p, d := c.p, c.d
	out := append(c.out[:0], req.method...)
	out = append(out, ' ')
	out = append(out, dec.Target...)
	out = append(out, " HTTP/1.1\r\nHost: "...)
	out = append(out, dec.Host...)
	out = append(out, "\r\n"...)
	*peer = telemetry.Decode("")
	var xfcc []byte
	for _, f := range c.fields {
		switch {
		case fieldIs(f.name, "host"):
			continue
		case hopByHop(f.name):
			if !fieldIs(f.name, "te") || !fieldIs(f.value, "trailers") {
				continue
			}
		case exchangeHeader(f.name):
			if inbound && len(f.name) == len(telemetry.HeaderMetadata) && !d.peer.IsZero() { // believed from mTLS callers only
				*peer = c.peerOf(f.value)
			}
			continue
		case fieldIs(f.name, "x-forwarded-client-cert"):
			if xfcc == nil {
				xfcc = f.value
			}
			continue
		case dec.Rewrites() && dropped(dec, f.name):
			continue // removed, or replaced below
		case fieldIs(f.name, "x-request-id"):
			if reqID == "" {
				reqID = string(f.value)
			}
		case fieldIs(f.name, "content-type"):
			if len(f.value) >= 16 && fieldIs(f.value[:16], "application/grpc") {
				ev.Protocol = "grpc"
			}
		}
		out = appendField(out, f.name, f.value)
	}
	if reqID == "" {
		reqID = requestID()
		out = appendField(out, []byte("X-Request-Id"), []byte(reqID))
	}
	for _, h := range dec.Set {
		out = appendField(out, []byte(h[0]), []byte(h[1]))
	}
	for _, h := range dec.Add {
		out = appendField(out, []byte(h[0]), []byte(h[1]))
	}
	if dec.XFF != "" {
		out = appendField(out, []byte("X-Forwarded-For"), []byte(dec.XFF))
	}
	if inbound {
		if !d.peer.IsZero() {
			peer.Principal = d.peer.String()
		}
		if hm.ForwardClientCert && !d.peer.IsZero() {
			v := d.xfcc
			if len(xfcc) > 0 {
				v = string(xfcc) + "," + v
			}
			out = appendField(out, []byte("X-Forwarded-Client-Cert"), []byte(v))
		}
	} else {
		id, md := p.opts.Self.Headers()
		out = appendField(out, []byte(telemetry.HeaderMetadataID), []byte(id))
		out = appendField(out, []byte(telemetry.HeaderMetadata), []byte(md))
	}
	c.out = out
	return reqID
}

func writeField(bw *bufio.Writer, name, value []byte) {
	_, _ = bw.Write(name)
	_, _ = bw.WriteString(": ")
	_, _ = bw.Write(value)
	_, _ = bw.WriteString("\r\n")
}

func appendField(b, name, value []byte) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

// h1Exchange is one request's way upstream and what came of it.
type h1Exchange struct {
	req     *h1Req
	route   *config.Route
	cluster string
	c       *config.Cluster
	// Set by forward: the answer's status, Envoy's response flags, the
	// body bytes sent downstream, the last upstream endpoint, and the
	// destination learned from the metadata exchange.
	code       int
	flags      string
	sent       int64
	upstream   string
	peer       telemetry.Peer
	grpcStatus string
	// respOps are the route's operations on the answer's headers.
	respOps config.HeaderOps
}

// forward sends the request to the route's cluster, retrying as its policy
// says, and relays the answer (or an error response) downstream.
func (c *h1Down) forward(rt *runtime, x *h1Exchange) outcome {
	p, d, r := c.p, c.d, x.route
	x.peer = telemetry.Decode("")
	cl := x.c
	if cl == nil {
		return c.fail(x, fmt.Errorf("%w: no cluster %q", errNoHealthy, x.cluster))
	}
	if cl.MaxRequests > 0 {
		release := p.admit("rq|"+cl.Name, cl.MaxRequests)
		if release == nil {
			p.stats.upstreamOverflow.WithLabelValues(cl.Name).Inc()
			return c.fail(x, errOverflow)
		}
		defer release()
	}
	retries := uint32(0)
	var perTry time.Duration
	if r.Retry != nil {
		retries, perTry = r.Retry.NumRetries, r.Retry.PerTryTimeout
	}
	var deadline time.Time // the route's timeout, to the end of the response
	if r.Timeout > 0 {
		deadline = time.Now().Add(r.Timeout)
	}
	var picker picker = rt.pickers[x.cluster]
	if cl.LB == config.RingHash && len(r.Hash) > 0 {
		req := decision.Request{Header: c.headerFn, RemoteIP: remoteIP(d.conn)}
		picker = pickFunc(rt.pickers[x.cluster].Keyed(decision.HashKey(r.Hash, &req, string(x.req.target))))
	}
	c.tried = c.tried[:0]
	c.skipOutlier = nil
	if cl.Outlier != nil {
		c.skipOutlier = cl
	}
	if c.skipFn == nil {
		c.skipFn = c.skip
	}
	var lastErr error = errNoHealthy
	for attempt := uint32(0); attempt <= retries; attempt++ {
		var ep *config.Endpoint
		var addr string
		var lease lb.Lease
		if cl.Type == config.OriginalDst {
			addr = d.dst.String()
		} else {
			ep, lease = nextEndpoint(picker, c.skipFn, &c.tried)
			if ep == nil {
				break
			}
			addr = c.addrOf(ep)
			x.upstream = addr
		}
		headBy := deadline
		if perTry > 0 {
			if t := time.Now().Add(perTry); headBy.IsZero() || t.Before(headBy) {
				headBy = t
			}
		}
		pc, idle, resp, err := c.attempt(cl, ep, addr, attempt, x.req, headBy, deadline)
		if ep != nil {
			if err != nil {
				p.outliers.Report(cl, ep.Addr, lb.GatewayFailure)
			} else {
				p.outliers.Report(cl, ep.Addr, lb.ResultOf(resp.code))
			}
		}
		if errors.Is(err, errClientGone) {
			lease.Release()
			x.code, x.flags = 499, "DC" // nobody to answer
			return closeAfter
		}
		if err != nil {
			lease.Release()
			timedOut := errors.Is(err, os.ErrDeadlineExceeded)
			if timedOut {
				err = fmt.Errorf("upstream timeout: %w", context.DeadlineExceeded)
			}
			lastErr = err
			perTryOut := timedOut && (deadline.IsZero() || time.Now().Before(deadline))
			if !(retryableError(r.Retry, err) && !timedOut || perTryOut && retryableTimeout(r.Retry)) {
				break
			}
			continue
		}
		if attempt < retries && retryableStatus(r.Retry, resp.code, string(resp.grpcStatus)) {
			c.discard(pc, idle, &resp, x.req.method)
			lease.Release()
			lastErr = fmt.Errorf("upstream answered %d", resp.code)
			continue
		}
		out := c.relay(pc, idle, &resp, x)
		lease.Release()
		return out
	}
	return c.fail(x, lastErr)
}

// attempt writes the request on a pooled or new connection and reads the
// response head into c.resp. A reused connection the upstream had closed
// is found by the failure for requests that may be sent twice, and by a
// peek before writing for the others.
func (c *h1Down) attempt(cl *config.Cluster, ep *config.Endpoint, addr string, n uint32, req *h1Req, headBy, deadline time.Time) (*h1Conn, *h1Idle, h1Resp, error) {
	p := c.p
	idle := c.pool(cl, ep, addr)
	replay := c.replayable(req)
	for try := 0; ; try++ {
		pc := idle.get()
		reused := pc != nil
		if reused && !replay && !pc.alive() {
			pc.Close()
			continue
		}
		if pc == nil {
			conn, err := p.dialFor(context.Background(), cl, ep, addr, []string{"istio-http/1.1"})
			if err != nil {
				return nil, nil, h1Resp{}, err
			}
			pc = newH1Conn(conn)
		}
		if !headBy.IsZero() {
			_ = pc.SetDeadline(headBy)
			pc.deadline = true
		}
		c.armWatch(pc)
		resp, err := c.roundTrip(pc, n)
		if c.disarmWatch() {
			pc.Close()
			return nil, nil, h1Resp{}, errClientGone
		}
		if err != nil {
			pc.Close()
			if reused && try == 0 && replay && stale(err) {
				continue
			}
			return nil, nil, h1Resp{}, err
		}
		if headBy != deadline {
			_ = pc.SetDeadline(deadline)
		}
		return pc, idle, resp, nil
	}
}

// watchDelay is how long an upstream may take to answer before the loop
// watches its client for leaving. The request's goroutine waits on the
// upstream and cannot read the client meanwhile; a second reader per
// request is what net/http pays on every one, so it starts only for slow
// answers. A client gone resets the upstream request, as Envoy does.
const watchDelay = time.Second

// errClientGone is an exchange abandoned because the client left.
var errClientGone = errors.New("the client closed its connection")

// clientWatch is the state of a connection's watcher (see watchDelay).
type clientWatch struct {
	mu    sync.Mutex
	t     *time.Timer
	pc    *h1Conn // the upstream connection to close if the client leaves
	state int     // watchIdle, watchArmed, watchRunning
	done  chan struct{}
	gone  bool
}

const (
	watchIdle = iota
	watchArmed
	watchRunning
)

// armWatch starts the delay before the client is watched.
func (c *h1Down) armWatch(pc *h1Conn) {
	w := &c.watch
	w.mu.Lock()
	w.pc, w.state, w.gone = pc, watchArmed, false
	w.mu.Unlock()
	if w.t == nil {
		w.t = time.AfterFunc(watchDelay, c.watchClient)
	} else {
		w.t.Reset(watchDelay)
	}
}

// watchClient waits for the client to say something or leave; leaving
// closes the upstream connection, which ends the exchange.
func (c *h1Down) watchClient() {
	w := &c.watch
	w.mu.Lock()
	if w.state != watchArmed {
		w.mu.Unlock()
		return
	}
	w.state, w.done = watchRunning, make(chan struct{})
	pc, done := w.pc, w.done
	w.mu.Unlock()
	defer close(done)
	// Peek keeps whatever the client sends next (a pipelined request).
	if _, err := c.br.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		w.mu.Lock()
		w.gone = true
		w.mu.Unlock()
		pc.Close()
	}
}

// disarmWatch ends the watch and gives the client's reader back to the
// loop; it reports whether the client left.
func (c *h1Down) disarmWatch() bool {
	w := &c.watch
	w.t.Stop()
	w.mu.Lock()
	state, done := w.state, w.done
	w.state = watchIdle
	w.mu.Unlock()
	if state == watchRunning {
		_ = c.d.conn.SetReadDeadline(time.Unix(1, 0)) // wakes the watcher's read
		<-done
		_ = c.d.conn.SetReadDeadline(c.deadlineSet.Add(idleTimeout))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone
}

// addrOf is an endpoint's address as pools and access logs name it.
func (c *h1Down) addrOf(ep *config.Endpoint) string {
	if ep == c.last.ep && c.last.idle != nil {
		return c.last.addr
	}
	return ep.Addr.String()
}

// pool is the idle connections to an upstream address.
func (c *h1Down) pool(cl *config.Cluster, ep *config.Endpoint, addr string) *h1Idle {
	if l := &c.last; l.idle != nil && l.cl == cl && l.ep == ep && l.addr == addr && !l.idle.retired.Load() {
		return l.idle
	}
	c.last.cl, c.last.ep, c.last.addr, c.last.idle = cl, ep, addr, c.p.h1Pool(upstreamKey{pool: poolKeyFor(cl, ep), addr: addr})
	return c.last.idle
}

// roundTrip writes the request and reads the response head, skipping
// interim (1xx) responses.
func (c *h1Down) roundTrip(pc *h1Conn, n uint32) (h1Resp, error) {
	bw := pc.bw
	_, _ = bw.Write(c.out)
	if n > 0 {
		_, _ = bw.WriteString("X-Envoy-Attempt-Count: ")
		_, _ = bw.WriteString(strconv.Itoa(int(n + 1)))
		_, _ = bw.WriteString("\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	_, _ = bw.Write(c.body)
	if err := bw.Flush(); err != nil {
		return h1Resp{}, err
	}
	for {
		var err error
		c.resp, err = readHeadInto(pc.br, c.resp[:0])
		if errors.Is(err, errNotFast) {
			return h1Resp{}, errors.New("malformed or oversized response head")
		}
		if err != nil {
			return h1Resp{}, err
		}
		resp, fields, ok := parseResponseHead(c.resp, c.rfields)
		c.rfields = fields
		if !ok || resp.code == http.StatusSwitchingProtocols {
			return h1Resp{}, errors.New("malformed response head")
		}
		if resp.code >= 200 {
			return resp, nil
		}
	}
}

// replayable is net/http's rule for requests that may be sent twice.
func (c *h1Down) replayable(req *h1Req) bool {
	return idempotentMethod(string(req.method)) || c.get("idempotency-key") != "" || c.get("x-idempotency-key") != ""
}

// relay writes the response head and streams the body downstream, then
// gives the upstream connection back if it can carry another request.
func (c *h1Down) relay(pc *h1Conn, idle *h1Idle, resp *h1Resp, x *h1Exchange) outcome {
	inbound := c.d.inbound()
	bw := c.bw
	x.code, x.grpcStatus = resp.code, string(resp.grpcStatus)
	bodyless := noBody(x.req.method, resp.code)
	closeDown := c.closing || resp.closeDelimited(x.req.method)
	_, _ = bw.WriteString("HTTP/1.1 ")
	_, _ = bw.Write(resp.status)
	_, _ = bw.WriteString("\r\n")
	for _, f := range c.rfields {
		switch {
		case hopByHop(f.name) && !fieldIs(f.name, "trailer"):
			continue
		case exchangeHeader(f.name):
			if !inbound && len(f.name) == len(telemetry.HeaderMetadata) {
				x.peer = c.peerOf(f.value)
			}
			continue
		case resp.chunked && fieldIs(f.name, "content-length"):
			continue
		case !x.respOps.Empty() && opsDrop(&x.respOps, f.name):
			continue
		}
		writeField(bw, f.name, f.value)
	}
	for _, h := range x.respOps.Set {
		writeField(bw, []byte(h[0]), []byte(h[1]))
	}
	for _, h := range x.respOps.Add {
		writeField(bw, []byte(h[0]), []byte(h[1]))
	}
	if inbound {
		id, md := c.p.opts.Self.Headers()
		for _, kv := range [2][2]string{{telemetry.HeaderMetadataID, id}, {telemetry.HeaderMetadata, md}} {
			_, _ = bw.WriteString(kv[0])
			_, _ = bw.WriteString(": ")
			_, _ = bw.WriteString(kv[1])
			_, _ = bw.WriteString("\r\n")
		}
	}
	if resp.chunked && !bodyless {
		_, _ = bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if closeDown {
		_, _ = bw.WriteString("Connection: close\r\n")
	}
	_, _ = bw.WriteString("\r\n")
	var upErr, downErr error
	switch {
	case bodyless:
	case resp.chunked:
		x.sent, upErr, downErr = c.copyChunked(pc.br)
	case resp.length >= 0:
		x.sent, upErr, downErr = c.copyN(pc.br, resp.length)
	default:
		x.sent, upErr, downErr = c.copyN(pc.br, -1)
		if upErr == io.EOF {
			upErr = nil
		}
	}
	switch {
	case upErr != nil || downErr != nil:
		pc.Close()
		if downErr != nil {
			x.flags = "DC"
		} else {
			x.flags = "UPE" // upstream protocol error or reset mid-body
		}
		return closeAfter
	case resp.keepAlive && !resp.closeDelimited(x.req.method):
		idle.putClean(pc)
	default:
		pc.Close()
	}
	if closeDown {
		return closeAfter
	}
	return keepAlive
}

// discard reads a response not relayed (it will be retried); its
// connection is reused if that is cheap.
func (c *h1Down) discard(pc *h1Conn, idle *h1Idle, resp *h1Resp, method []byte) {
	n := int64(0)
	if !noBody(method, resp.code) {
		n = resp.length // -1 when chunked or close-delimited
	}
	if resp.keepAlive && n >= 0 && n <= maxRetryBody {
		if _, err := pc.br.Discard(int(n)); err == nil {
			idle.putClean(pc)
			return
		}
	}
	pc.Close()
}

// copyN relays n bytes (to EOF if n < 0) from an upstream reader, flushing
// downstream before it would wait for more, as FlushInterval -1 does.
func (c *h1Down) copyN(src *bufio.Reader, n int64) (sent int64, upErr, downErr error) {
	for n < 0 || sent < n {
		if src.Buffered() == 0 {
			if err := c.bw.Flush(); err != nil {
				return sent, nil, err
			}
			if _, err := src.Peek(1); err != nil {
				return sent, err, nil
			}
		}
		k := src.Buffered()
		if n >= 0 {
			k = int(min(int64(k), n-sent))
		}
		b, _ := src.Peek(k)
		if _, err := c.bw.Write(b); err != nil {
			return sent, nil, err
		}
		_, _ = src.Discard(k)
		sent += int64(k)
	}
	return sent, nil, nil
}

// copyChunked relays a chunked body as it is framed, trailers included.
func (c *h1Down) copyChunked(src *bufio.Reader) (sent int64, upErr, downErr error) {
	for {
		line, err := src.ReadSlice('\n')
		if err != nil {
			return sent, err, nil
		}
		if !bytes.HasSuffix(line, crlf) {
			return sent, errBadChunk, nil
		}
		size, ok := chunkSize(line)
		if !ok {
			return sent, fmt.Errorf("%w: size line %q", errBadChunk, line), nil
		}
		if _, err := c.bw.Write(line); err != nil {
			return sent, nil, err
		}
		if size == 0 {
			for { // trailers, up to the empty line
				line, err := src.ReadSlice('\n')
				if err != nil {
					return sent, err, nil
				}
				if !bytes.HasSuffix(line, crlf) {
					return sent, errBadChunk, nil
				}
				if len(line) > 2 && !trailerField(line[:len(line)-2]) {
					return sent, errBadChunk, nil
				}
				if _, err := c.bw.Write(line); err != nil {
					return sent, nil, err
				}
				if len(line) == 2 {
					return sent, nil, nil
				}
			}
		}
		n, upErr, downErr := c.copyN(src, int64(size)) // the data
		sent += n
		if upErr != nil || downErr != nil {
			return sent, upErr, downErr
		}
		// Then CRLF, or the upstream's framing is not what it said.
		end, err := src.Peek(2)
		if err != nil {
			return sent, err, nil
		}
		if !bytes.Equal(end, crlf) {
			return sent, errBadChunk, nil
		}
		_, _ = src.Discard(2)
		if _, err := c.bw.Write(crlf); err != nil {
			return sent, nil, err
		}
	}
}

// trailerField tells a well-formed trailer line: a field name (a token),
// a colon, a value.
func trailerField(line []byte) bool {
	name, _, ok := bytes.Cut(line, []byte{':'})
	return ok && len(name) > 0 && isToken(name)
}

// chunkSize reads a chunk-size line as net/http does: hex digits, then
// extensions after ";", trailing whitespace allowed, nothing else.
func chunkSize(line []byte) (uint64, bool) {
	hex, _, _ := bytes.Cut(bytes.TrimRight(line[:len(line)-2], " \t"), []byte{';'})
	if len(hex) == 0 || len(hex) > 15 {
		return 0, false
	}
	var n uint64
	for _, c := range hex {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(d)
	}
	return n, true
}

// errBadChunk is a chunked body that breaks its framing: the upstream's
// connection is not trusted again, and the client's is closed.
var errBadChunk = errors.New("malformed chunked body")

// fail answers a request that got no response, as upstreamError does.
func (c *h1Down) fail(x *h1Exchange, err error) outcome {
	code, flag, text := errorReply(err)
	x.flags = flag
	return c.reply(x, code, text, "")
}

// reply answers a request from the proxy: an error, a policy's refusal, a
// redirect to location, a CORS preflight (its headers in extra).
func (c *h1Down) reply(x *h1Exchange, code int, text, location string, extra ...[2]string) outcome {
	x.code = code
	bw := c.bw
	_, _ = bw.WriteString("HTTP/1.1 ")
	_, _ = bw.WriteString(strconv.Itoa(code))
	_, _ = bw.WriteString(" ")
	_, _ = bw.WriteString(http.StatusText(code))
	if c.closing {
		_, _ = bw.WriteString("\r\nConnection: close")
	}
	if location != "" {
		_, _ = bw.WriteString("\r\nLocation: ")
		_, _ = bw.WriteString(location)
	}
	for _, h := range extra {
		_, _ = bw.WriteString("\r\n")
		_, _ = bw.WriteString(h[0])
		_, _ = bw.WriteString(": ")
		_, _ = bw.WriteString(h[1])
	}
	if text == "" || noBody(x.req.method, code) {
		// A HEAD, 1xx, 204 or 304 answer has no content: a body would be
		// read as the start of the next answer on this connection.
		_, _ = bw.WriteString("\r\nContent-Length: 0\r\n\r\n")
		return keepAlive
	}
	text += "\n"
	_, _ = bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: ")
	_, _ = bw.WriteString(strconv.Itoa(len(text)))
	_, _ = bw.WriteString("\r\n\r\n")
	_, _ = bw.WriteString(text)
	x.sent = int64(len(text))
	return keepAlive
}

// newH1Conn wraps an upstream connection for the HTTP/1.1 pools.
func newH1Conn(c net.Conn) *h1Conn {
	return &h1Conn{Conn: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 8<<10)}
}

// alive tells whether an idle connection is still open: nothing to read
// yet, not even the end. One non-blocking peek at the socket.
func (pc *h1Conn) alive() bool {
	if pc.br.Buffered() > 0 {
		return false // an idle connection has nothing to say
	}
	raw := pc.Conn
	if nc, ok := raw.(interface{ NetConn() net.Conn }); ok {
		raw = nc.NetConn()
	}
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	open := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, errno := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		open = errno == syscall.EAGAIN
		return true
	})
	return err == nil && open
}

// putClean pools a connection after clearing any deadline it carried.
func (i *h1Idle) putClean(pc *h1Conn) {
	if pc.deadline {
		if err := pc.SetDeadline(time.Time{}); err != nil {
			pc.Close()
			return
		}
		pc.deadline = false
	}
	i.put(pc)
}
