package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
	"github.com/isthmus-mesh/isthmus/internal/proxy/decision"
	"github.com/isthmus-mesh/isthmus/internal/proxy/lb"
	"github.com/isthmus-mesh/isthmus/internal/proxy/telemetry"
)

// serveH2 serves an HTTP/2 downstream connection (h2c with prior
// knowledge, or h2 / istio-h2 inside TLS): every stream is routed as
// handle routes a request and relayed to an upstream HTTP/2 stream.
func (p *Proxy) serveH2(d *downstream, conn net.Conn) {
	br := bufio.NewReaderSize(conn, 16<<10)
	_ = conn.SetReadDeadline(time.Now().Add(sniffTimeout))
	var preface [len(http2.ClientPreface)]byte
	if _, err := io.ReadFull(br, preface[:]); err != nil || string(preface[:]) != http2.ClientPreface {
		conn.Close()
		return
	}
	c := newH2Conn(p, conn, br, false)
	c.d = d
	if err := c.start(); err != nil {
		conn.Close()
		return
	}
	p.h2Conns.Store(c, nil)
	if p.draining.Load() {
		c.drain()
	}
	var fl h2Flush
	err := func() (err error) {
		defer func() {
			// A bug here must cost one connection, not the proxy.
			if v := recover(); v != nil {
				p.opts.Log.Error("HTTP/2 relay panicked; connection closed", "panic", v, "stack", string(debug.Stack()))
				err = fmt.Errorf("panic: %v", v)
			}
		}()
		return c.readLoop(&fl, c.downstreamFrame)
	}()
	p.h2Conns.Delete(c)
	conn.Close()
	c.mu.Lock()
	streams := c.streams
	c.streams = map[uint32]*h2Stream{}
	c.mu.Unlock()
	for _, s := range streams {
		s.mu.Lock()
		s.clientGone(&fl)
		s.mu.Unlock()
	}
	fl.flush()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		p.opts.Log.Debug("HTTP/2 downstream connection ended", "err", err)
	}
}

// drain tells the client to open no more streams; the connection closes
// once its streams are done.
func (c *h2Conn) drain() {
	c.mu.Lock()
	if !c.goaway {
		c.goaway = true
		if c.werr == nil {
			c.armWrite()
			_ = c.fr.WriteGoAway(c.lastID, http2.ErrCodeNo, nil)
			c.werr = c.bw.Flush()
		}
	}
	idle := len(c.streams) == 0
	c.mu.Unlock()
	if idle {
		c.conn.Close()
	}
}

// downstreamFrame handles one frame from a client.
func (c *h2Conn) downstreamFrame(fl *h2Flush, f http2.Frame) error {
	if c.deadlineSet.IsZero() || time.Since(c.deadlineSet) > time.Minute {
		// Envoy's idle timeout, refreshed now and then rather than per frame.
		c.deadlineSet = time.Now()
		_ = c.conn.SetReadDeadline(c.deadlineSet.Add(idleTimeout))
	}
	if ok, err := c.common(fl, f); ok {
		return err
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		id := f.StreamID
		if id%2 == 0 {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if s := c.stream(id); s != nil {
			s.mu.Lock()
			s.requestTrailers(fl, f)
			s.mu.Unlock()
			return nil
		}
		c.mu.Lock()
		if id <= c.lastID {
			// A stream we already answered and reset: the client's frames
			// may still be on their way.
			c.mu.Unlock()
			return nil
		}
		c.lastID = id
		refuse := len(c.streams) >= h2MaxStreams || c.goaway || c.handlers.Load() >= h2MaxStreams
		var s *h2Stream
		if !refuse {
			s = &h2Stream{p: c.p, d: c.d, down: h2Half{c: c, id: id, win: c.initWin}}
			c.streams[id] = s
		}
		c.mu.Unlock()
		if refuse {
			c.reset(fl, id, http2.ErrCodeRefusedStream)
			return nil
		}
		c.opened++
		s.mu.Lock()
		s.begin(fl, f)
		s.mu.Unlock()
	case *http2.DataFrame:
		return c.data(fl, f, func(s *h2Stream, n int32) { s.requestData(fl, f, n) })
	case *http2.RSTStreamFrame:
		if s := c.stream(f.StreamID); s != nil {
			c.p.stats.rxReset.Inc()
			s.mu.Lock()
			early := time.Since(s.start) < time.Second
			s.clientGone(fl)
			s.mu.Unlock()
			if early {
				c.premature++
				if c.premature >= c.p.opts.Limits.PrematureResets && 2*c.premature >= c.opened {
					// Rapid reset: the client makes work and takes it back.
					c.p.stats.prematureResets.Inc()
					c.write(fl, func() error { return c.fr.WriteGoAway(c.lastID, http2.ErrCodeEnhanceYourCalm, nil) })
					fl.flush()
					return errRapidReset
				}
			}
		}
	case *http2.GoAwayFrame:
		// The client opens no more streams; those open carry on.
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// errRapidReset ends a connection whose client resets streams as fast as
// it opens them.
var errRapidReset = errors.New("HTTP/2: too many streams reset early by the client")

// received counts a DATA frame against the connection window we granted.
func (c *h2Conn) received(n int32) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.owed += n
	if c.owed > h2ConnWindow {
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	return nil
}

// h2Half is one side of a relayed stream: its connection and stream ID,
// what may be sent to it, and what it sent us.
type h2Half struct {
	c   *h2Conn
	id  uint32
	win int32 // our send window on this stream
	// pend is data for c waiting for window (or, upstream, for a
	// connection); pendEnd ends the stream after it, or pendTrailers do.
	pend         []byte
	pendEnd      bool
	pendTrailers []hpack.HeaderField
	// owed: bytes c sent on the stream not yet returned as WINDOW_UPDATE;
	// passed: the part of them written onward; uncredited: bytes c sent
	// not yet returned at the connection level.
	owed, passed, uncredited int32
	recvEnd                  bool // c ended its side
	sentEnd                  bool // we ended ours toward c (END_STREAM or reset)
}

// h2Stream is one request and its answer, relayed between a downstream
// stream and an upstream one (a new one per attempt). Its mutex is taken
// before any connection's.
type h2Stream struct {
	mu       sync.Mutex
	p        *Proxy
	d        *downstream
	down, up h2Half
	done     bool

	start   time.Time
	rt      *runtime
	route   *config.Route
	cluster string
	// dec is the request decision (package decision) about dreq.
	dreq decision.Request
	dec  decision.Decision
	cl   *config.Cluster
	// method, uri, host: the request as the client sent it; fields: the
	// upstream request headers, pseudo-headers first.
	method, uri, host string
	// scheme is the request's :scheme (route matches read it).
	scheme string
	fields []hpack.HeaderField
	// body is the request body so far, kept for retries while replay.
	body         []byte
	replay       bool
	in, credited int64 // request body bytes received and credited back
	// declared is the request's content-length, -1 without one: the body
	// must be exactly that long (RFC 9113, 8.1.1).
	declared int64

	attempt, retries uint32
	pick             picker
	tried            tried
	skip             func(*config.Endpoint) bool
	ep               *config.Endpoint
	lease            lb.Lease
	pool             *h2Pool // waiting there for a connection
	release          func()  // the circuit-breaker slot
	gen              uint32  // the attempt's generation, for its timer
	tryTimer, timer  *time.Timer
	lastErr          error

	started        bool // response headers sent downstream
	code           int
	grpcStatus     string
	flags          string
	out            int64
	upstream       string
	peer           telemetry.Peer // the other side, for the metrics
	ev             telemetry.Event
	reqID, xff, ua string

	// byHandler: net/http's handler serves the stream (h2handler.go) and
	// counts it; cancel ends its context, cond wakes its reads and writes.
	byHandler bool
	cancel    func()
	cond      *sync.Cond
}

// half is the side of s on connection c, if any.
func (s *h2Stream) half(c *h2Conn) *h2Half {
	switch c {
	case s.down.c:
		return &s.down
	case s.up.c:
		return &s.up
	}
	return nil
}

func (s *h2Stream) other(h *h2Half) *h2Half {
	if h == &s.down {
		return &s.up
	}
	return &s.down
}

// header looks request headers up as route matchers name them.
func (s *h2Stream) header(name string) (string, bool) {
	switch name {
	case ":method":
		return s.method, true
	case ":authority":
		return s.host, true
	case ":path":
		return s.uri, true
	case ":scheme":
		return s.scheme, s.scheme != ""
	}
	if strings.HasPrefix(name, ":") {
		return "", false
	}
	v, n := "", 0
	for _, f := range s.fields {
		if f.Name == name {
			switch {
			case n == 0:
				v = f.Value
			case name == "cookie":
				v += "; " + f.Value
			default:
				v += "," + f.Value
			}
			n++
		}
	}
	return v, n > 0
}

const grpcContentType = "application/grpc"

// The exchange headers as HTTP/2 spells them.
var (
	h2Metadata   = strings.ToLower(telemetry.HeaderMetadata)
	h2MetadataID = strings.ToLower(telemetry.HeaderMetadataID)
)

// h2Hop are connection headers, never relayed (HTTP/2 forbids them).
var h2Hop = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true}

// begin routes a new stream: the mesh's headers, route, RBAC, faults.
func (s *h2Stream) begin(fl *h2Flush, f *http2.MetaHeadersFrame) {
	p, d := s.p, s.d
	s.start = time.Now()
	rt := p.cur.Load()
	s.rt = rt
	hm := currentHTTP(rt, d)
	inbound := d.inbound()
	s.method, s.uri, s.host = f.PseudoValue("method"), f.PseudoValue("path"), f.PseudoValue("authority")
	s.scheme = f.PseudoValue("scheme")
	s.down.recvEnd = f.StreamEnded()
	s.up.pendEnd = s.down.recvEnd
	s.ev = telemetry.Event{Protocol: "http", MTLS: d.chain.TLS != nil}
	s.peer = telemetry.Decode("")
	s.declared = -1
	badLength := false
	regular := f.RegularFields()
	out := make([]hpack.HeaderField, 4, len(regular)+8)
	var xfcc string
	for _, hf := range regular {
		switch {
		case hf.Name == "content-length":
			n, err := strconv.ParseInt(hf.Value, 10, 64)
			badLength = badLength || err != nil || n < 0 || s.declared >= 0 && n != s.declared
			s.declared = n
		case hf.Name == "host":
			if s.host == "" {
				s.host = hf.Value
			}
			continue
		case h2Hop[hf.Name], hf.Name == "te" && hf.Value != "trailers":
			continue
		case hf.Name == h2Metadata || hf.Name == h2MetadataID:
			if inbound && hf.Name == h2Metadata && !d.peer.IsZero() { // believed from mTLS callers only
				s.peer = telemetry.Decode(hf.Value)
			}
			continue
		case hf.Name == "x-forwarded-client-cert":
			if xfcc == "" {
				xfcc = hf.Value
			}
			continue
		case hf.Name == "x-request-id":
			if s.reqID == "" {
				s.reqID = hf.Value
			}
			hf.Sensitive = true // unique per request: kept out of the HPACK table
		case hf.Name == "content-type":
			if strings.HasPrefix(hf.Value, grpcContentType) {
				s.ev.Protocol = "grpc"
			}
		case hf.Name == "x-forwarded-for":
			s.xff = hf.Value
		case hf.Name == "user-agent":
			s.ua = hf.Value
		}
		out = append(out, hf)
	}
	out[0] = hpack.HeaderField{Name: ":method", Value: s.method}
	out[1] = hpack.HeaderField{Name: ":scheme", Value: "http"}
	out[2] = hpack.HeaderField{Name: ":authority", Value: s.host}
	out[3] = hpack.HeaderField{Name: ":path", Value: s.uri}
	if s.reqID == "" {
		s.reqID = requestID()
		out = append(out, hpack.HeaderField{Name: "x-request-id", Value: s.reqID, Sensitive: true})
	}
	if inbound {
		if !d.peer.IsZero() {
			s.peer.Principal = d.peer.String()
			if hm.ForwardClientCert {
				v := d.xfcc
				if xfcc != "" {
					v = xfcc + "," + v
				}
				out = append(out, hpack.HeaderField{Name: "x-forwarded-client-cert", Value: v})
			}
		}
	} else {
		id, md := p.opts.Self.Headers()
		out = append(out, hpack.HeaderField{Name: h2MetadataID, Value: id}, hpack.HeaderField{Name: h2Metadata, Value: md})
	}
	s.fields = out
	if badLength || s.down.recvEnd && s.declared > 0 {
		s.malformed(fl)
		return
	}
	if f.Truncated {
		s.reply(fl, http.StatusRequestHeaderFieldsTooLarge, "request headers too large")
		return
	}
	if s.method == "CONNECT" {
		s.reply(fl, http.StatusMethodNotAllowed, "CONNECT is not supported")
		return
	}
	if s.uri == "" || s.host == "" {
		s.reply(fl, http.StatusBadRequest, "missing :path or :authority")
		return
	}

	s.dreq = decision.Request{Method: s.method, Target: s.uri, Host: s.host, Header: s.header}
	s.dec = p.decide(rt, d, hm, &s.dreq)
	dec := &s.dec
	s.route, s.flags = dec.Route, dec.Flags
	if dec.Rewrites() {
		s.fields = slices.DeleteFunc(s.fields, func(f hpack.HeaderField) bool { return !strings.HasPrefix(f.Name, ":") && dec.Drops(f.Name) })
		for _, h := range dec.Set {
			s.fields = append(s.fields, hpack.HeaderField{Name: strings.ToLower(h[0]), Value: h[1]})
		}
		for _, h := range dec.Add {
			s.fields = append(s.fields, hpack.HeaderField{Name: strings.ToLower(h[0]), Value: h[1]})
		}
		if dec.XFF != "" {
			s.fields = append(s.fields, hpack.HeaderField{Name: "x-forwarded-for", Value: dec.XFF})
			s.xff = dec.XFF
		}
	}
	if dec.Status == 0 && forHandler(rt, s.route) {
		s.serveByHandler(fl, f)
		return
	}
	switch {
	case dec.Location != "":
		s.replyWith(fl, dec.Status, "", hpack.HeaderField{Name: "location", Value: dec.Location})
	case len(dec.ReplyHeaders) > 0:
		extra := make([]hpack.HeaderField, 0, len(dec.ReplyHeaders))
		for _, h := range dec.ReplyHeaders {
			extra = append(extra, hpack.HeaderField{Name: h[0], Value: h[1]})
		}
		s.replyWith(fl, dec.Status, dec.Body, extra...)
	case dec.Status != 0:
		s.reply(fl, dec.Status, dec.Body)
	case dec.Delay > 0:
		gen := s.gen
		s.timer = s.after(dec.Delay, func(fl *h2Flush) {
			if s.gen == gen {
				s.timer = nil
				s.afterDelay(fl)
			}
		})
	default:
		s.afterDelay(fl)
	}
}

// afterDelay is the rest of routing once a fault's delay (if any) passed.
func (s *h2Stream) afterDelay(fl *h2Flush) {
	r, dec := s.route, &s.dec
	if dec.Abort != 0 {
		s.flags = "FI"
		code, body := dec.Reply()
		s.reply(fl, code, body)
		return
	}
	s.fields[3].Value, s.fields[2].Value = dec.Target, dec.Host
	p := s.p
	s.cluster = dec.Cluster
	s.cl = s.rt.snap.Clusters[s.cluster]
	cl := s.cl
	if cl == nil {
		s.fail(fl, fmt.Errorf("%w: no cluster %q", errNoHealthy, s.cluster))
		return
	}
	if cl.MaxRequests > 0 {
		if s.release = p.admit("rq|"+cl.Name, cl.MaxRequests); s.release == nil {
			p.stats.upstreamOverflow.WithLabelValues(cl.Name).Inc()
			s.fail(fl, errOverflow)
			return
		}
	}
	if r.Retry != nil {
		s.retries = r.Retry.NumRetries
	}
	s.replay = len(s.up.pend) <= maxRetryBody
	if s.replay {
		s.body = append(s.body[:0], s.up.pend...)
	}
	s.pick = s.rt.pickers[s.cluster]
	if cl.LB == config.RingHash && len(r.Hash) > 0 {
		req := decision.Request{Header: s.header, RemoteIP: remoteIP(s.d.conn)}
		s.pick = pickFunc(s.rt.pickers[s.cluster].Keyed(decision.HashKey(r.Hash, &req, s.uri)))
	}
	s.skip = p.skipper(cl, &s.tried)
	s.lastErr = errNoHealthy
	if r.Timeout > 0 {
		s.timer = s.after(r.Timeout, s.timedOut)
	}
	s.try(fl)
}

// try starts an attempt on the next endpoint.
func (s *h2Stream) try(fl *h2Flush) {
	cl, r := s.cl, s.route
	var addr string
	if cl.Type == config.OriginalDst {
		addr = s.d.dst.String()
		s.ep = nil
	} else {
		s.ep, s.lease = nextEndpoint(s.pick, s.skip, &s.tried)
		if s.ep == nil {
			s.fail(fl, s.lastErr)
			return
		}
		addr = s.ep.Addr.String()
	}
	s.upstream = addr
	s.gen++
	if r.Retry != nil && r.Retry.PerTryTimeout > 0 {
		gen := s.gen
		s.tryTimer = s.after(r.Retry.PerTryTimeout, func(fl *h2Flush) {
			if s.gen != gen || s.started {
				return
			}
			s.lastErr = fmt.Errorf("per-try timeout %s: %w", r.Retry.PerTryTimeout, errTimeout)
			s.abandonAttempt(fl)
			if s.canRetry() && retryableTimeout(r.Retry) {
				s.attempt++
				s.try(fl)
			} else {
				s.fail(fl, s.lastErr)
			}
		})
	}
	pl := s.p.h2PoolFor(cl, s.ep, addr)
	if c := pl.acquire(s.p, s, cl, s.ep, addr); c != nil {
		s.attach(fl, c)
	} else {
		s.pool = pl
	}
}

// after runs fn on the stream, under its lock, once d has passed, unless
// the stream ended by then.
func (s *h2Stream) after(d time.Duration, fn func(*h2Flush)) *time.Timer {
	return time.AfterFunc(d, func() {
		var fl h2Flush
		s.mu.Lock()
		if !s.done {
			fn(&fl)
		}
		s.mu.Unlock()
		fl.flush()
	})
}

// errTimeout is errorReply's timeout (504 UT).
var errTimeout = fmt.Errorf("upstream timeout: %w", context.DeadlineExceeded)

// attach opens the attempt's stream on an upstream connection: headers,
// then whatever body came so far.
func (s *h2Stream) attach(fl *h2Flush, c *h2Conn) {
	s.pool = nil
	fields := s.fields
	if s.attempt > 0 {
		fields = append(fields[:len(fields):len(fields)], hpack.HeaderField{Name: "x-envoy-attempt-count", Value: strconv.Itoa(int(s.attempt + 1))})
	}
	c.mu.Lock()
	id := c.nextID
	c.nextID += 2
	c.streams[id] = s
	pend, pendEnd := s.up.pend, s.up.pendEnd
	s.up = h2Half{c: c, id: id, win: c.initWin, pend: pend, pendEnd: pendEnd}
	end := pendEnd && len(pend) == 0
	c.writeLocked(fl, func() error { return c.writeHeaders(id, end, fields) })
	c.mu.Unlock()
	if end {
		s.up.pendEnd, s.up.sentEnd = false, true
		return
	}
	s.drain(fl, &s.up)
}

// requestData relays a DATA frame of the request.
func (s *h2Stream) requestData(fl *h2Flush, f *http2.DataFrame, n int32) {
	if s.done {
		s.down.c.dropped(fl, n)
		return
	}
	if s.down.recvEnd {
		s.down.c.dropped(fl, n)
		s.down.c.reset(fl, s.down.id, http2.ErrCodeStreamClosed)
		return
	}
	data, end := s.take(fl, &s.down, f, n)
	if s.down.owed > h2StreamWindow {
		s.down.c.reset(fl, s.down.id, http2.ErrCodeFlowControl)
		s.clientGone(fl)
		return
	}
	s.in += int64(len(data))
	if s.declared >= 0 && (s.in > s.declared || end && s.in != s.declared) {
		// A body longer or shorter than its content-length is not
		// relayed: an HTTP/1.1 upstream would read it by the header.
		s.malformed(fl)
		return
	}
	if s.replay && s.cl != nil {
		if len(s.body)+len(data) <= maxRetryBody {
			s.body = append(s.body, data...)
		} else {
			s.replay, s.body = false, nil
		}
	}
	s.send(fl, &s.up, data, end)
	s.wake()
}

// wake lets a handler serving the stream see what changed.
func (s *h2Stream) wake() {
	if s.cond != nil {
		s.cond.Broadcast()
	}
}

// requestTrailers relays the client's trailers (they end the request).
func (s *h2Stream) requestTrailers(fl *h2Flush, f *http2.MetaHeadersFrame) {
	if s.done {
		return
	}
	if s.down.recvEnd || !f.StreamEnded() {
		s.down.c.reset(fl, s.down.id, http2.ErrCodeProtocol)
		s.clientGone(fl)
		return
	}
	if s.declared >= 0 && s.in != s.declared {
		s.malformed(fl)
		return
	}
	s.down.recvEnd = true
	s.wake()
	s.replay = false // trailers are not kept for a retry
	s.sendTrailers(fl, &s.up, f.RegularFields())
}

// send writes data toward one side as far as the windows allow; the rest
// waits in pend. What is written is credited back to the other side.
func (s *h2Stream) send(fl *h2Flush, to *h2Half, data []byte, end bool) {
	from := s.other(to)
	if to.sentEnd {
		s.credit(fl, from, int32(len(data))) // that side is gone
		return
	}
	if to.c == nil || len(to.pend) > 0 || to.pendEnd {
		to.pend = append(to.pend, data...)
		to.pendEnd = to.pendEnd || end
		return
	}
	n := s.writeData(fl, to, data, end)
	if n < len(data) {
		to.pend = append(to.pend, data[n:]...)
		to.pendEnd = end
	} else if end {
		to.sentEnd = true
	}
	s.credit(fl, from, int32(n))
	if to.sentEnd {
		s.ended(fl, to)
	}
}

// drain sends what waited for window or for a connection.
func (s *h2Stream) drain(fl *h2Flush, to *h2Half) {
	if to.c == nil || to.sentEnd || len(to.pend) == 0 && !to.pendEnd && to.pendTrailers == nil {
		return
	}
	end := to.pendEnd && to.pendTrailers == nil
	n := s.writeData(fl, to, to.pend, end)
	rest := copy(to.pend, to.pend[n:])
	to.pend = to.pend[:rest]
	s.wake()
	s.credit(fl, s.other(to), int32(n))
	if rest > 0 {
		return
	}
	switch {
	case to.pendTrailers != nil:
		trailers := to.pendTrailers
		to.pendTrailers = nil
		to.c.headers(fl, to.id, true, trailers)
		to.sentEnd = true
	case end:
		to.sentEnd = true
	}
	to.pendEnd = false
	if to.sentEnd {
		s.ended(fl, to)
	}
}

// writeData writes as much of data as the stream's and connection's
// windows allow, in frames of the peer's size, END_STREAM on the last if
// end and all of it fit. It returns how much it wrote.
func (s *h2Stream) writeData(fl *h2Flush, to *h2Half, data []byte, end bool) int {
	c := to.c
	c.mu.Lock()
	defer c.mu.Unlock()
	n := min(int32(len(data)), to.win, c.sendWin)
	n = max(n, 0)
	if n < int32(len(data)) {
		end = false
		if c.sendWin <= to.win {
			c.blocked = append(c.blocked, s) // the connection's window is short
		}
	}
	if n == 0 && !end {
		return 0
	}
	to.win -= n
	c.sendWin -= n
	chunk := data[:n]
	c.writeLocked(fl, func() error {
		for {
			k := min(len(chunk), int(c.maxFrame))
			last := k == len(chunk)
			if err := c.fr.WriteData(to.id, end && last, chunk[:k]); err != nil {
				return err
			}
			chunk = chunk[k:]
			if last {
				return nil
			}
		}
	})
	return int(n)
}

// sendTrailers ends one side with a header block, after its waiting data.
func (s *h2Stream) sendTrailers(fl *h2Flush, to *h2Half, fields []hpack.HeaderField) {
	if to.sentEnd {
		return
	}
	if to.c == nil || len(to.pend) > 0 {
		to.pendTrailers = fields
		return
	}
	to.c.headers(fl, to.id, true, fields)
	to.sentEnd = true
	s.ended(fl, to)
}

// credit returns window for n bytes written onward. Request bytes are
// credited once even when a retry sends them again.
func (s *h2Stream) credit(fl *h2Flush, from *h2Half, n int32) {
	if from == &s.down {
		n = int32(min(int64(n), s.in-s.credited))
		s.credited += int64(n)
	}
	s.creditRaw(fl, from, n)
}

func (s *h2Stream) creditRaw(fl *h2Flush, from *h2Half, n int32) {
	c := from.c
	if n <= 0 || c == nil {
		return
	}
	c.mu.Lock()
	from.uncredited -= n
	c.creditLocked(fl, n)
	if !from.recvEnd {
		from.passed += n
		if from.passed >= h2StreamWindow/4 {
			k := from.passed
			from.passed, from.owed = 0, from.owed-k
			c.writeLocked(fl, func() error { return c.fr.WriteWindowUpdate(from.id, uint32(k)) })
		}
	}
	c.mu.Unlock()
}

// ended notes that we closed our side toward one half; the answer's end
// finishes the stream.
func (s *h2Stream) ended(fl *h2Flush, h *h2Half) {
	if h == &s.down {
		s.finish(fl)
	}
}

// upstreamHeaders handles the response head or trailers.
func (s *h2Stream) upstreamHeaders(fl *h2Flush, f *http2.MetaHeadersFrame) {
	if s.started {
		if !f.StreamEnded() {
			s.upstreamFailed(fl, errors.New("upstream sent a second header block without END_STREAM"))
			return
		}
		s.up.recvEnd = true
		fields := f.RegularFields()
		if g := grpcStatusOf(fields); g != "" {
			s.grpcStatus = g
		}
		s.sendTrailers(fl, &s.down, fields)
		return
	}
	code, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || code < 100 || code > 999 {
		s.upstreamFailed(fl, fmt.Errorf("upstream sent an invalid :status %q", f.PseudoValue("status")))
		return
	}
	if code < 200 {
		// Interim (100 Continue, 103 Early Hints): relayed as they come.
		fields := append([]hpack.HeaderField{{Name: ":status", Value: f.PseudoValue("status")}}, f.RegularFields()...)
		s.down.c.headers(fl, s.down.id, false, fields)
		return
	}
	s.gen++ // the per-try timeout covers the time to the response head
	if s.tryTimer != nil {
		s.tryTimer.Stop()
		s.tryTimer = nil
	}
	regular := f.RegularFields()
	grpc := grpcStatusOf(regular) // a trailers-only answer carries it here
	if s.ep != nil {
		s.p.outliers.Report(s.cl, s.ep.Addr, lb.ResultOf(code))
	}
	if s.canRetry() && retryableStatus(s.route.Retry, code, grpc) {
		s.lastErr = fmt.Errorf("upstream answered %d", code)
		s.up.recvEnd = f.StreamEnded()
		s.abandonAttempt(fl)
		s.attempt++
		s.try(fl)
		return
	}
	s.code, s.grpcStatus = code, grpc
	out := make([]hpack.HeaderField, 1, len(regular)+3)
	out[0] = hpack.HeaderField{Name: ":status", Value: f.PseudoValue("status")}
	inbound := s.d.inbound()
	for _, hf := range regular {
		switch {
		case h2Hop[hf.Name]:
			continue
		case hf.Name == h2Metadata || hf.Name == h2MetadataID:
			if !inbound && hf.Name == h2Metadata {
				s.peer = telemetry.Decode(hf.Value)
			}
			continue
		case s.dec.Response.Drops(hf.Name):
			continue
		}
		out = append(out, hf)
	}
	for _, h := range s.dec.Response.Set {
		out = append(out, hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	for _, h := range s.dec.Response.Add {
		out = append(out, hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	if inbound {
		id, md := s.p.opts.Self.Headers()
		out = append(out, hpack.HeaderField{Name: h2MetadataID, Value: id}, hpack.HeaderField{Name: h2Metadata, Value: md})
	}
	s.started = true
	end := f.StreamEnded()
	s.up.recvEnd = end
	s.down.c.headers(fl, s.down.id, end, out)
	if end {
		s.down.sentEnd = true
		s.finish(fl)
	}
}

// grpcStatusOf is a header block's grpc-status ("" without one).
func grpcStatusOf(fields []hpack.HeaderField) string {
	v := ""
	for _, hf := range fields {
		if hf.Name == "grpc-status" {
			v = hf.Value
		}
	}
	return v
}

// relayData relays a DATA frame of the response.
func (s *h2Stream) relayData(fl *h2Flush, f *http2.DataFrame, n int32) {
	if !s.started {
		s.up.c.dropped(fl, n)
		s.upstreamFailed(fl, errors.New("upstream sent DATA before its response head"))
		return
	}
	data, end := s.take(fl, &s.up, f, n)
	s.out += int64(len(data))
	s.send(fl, &s.down, data, end)
}

// take accounts a DATA frame of n flow-controlled bytes from one side:
// its padding is credited back at once and END_STREAM noted. It returns
// the payload and whether it ends the side.
func (s *h2Stream) take(fl *h2Flush, from *h2Half, f *http2.DataFrame, n int32) ([]byte, bool) {
	from.owed += n
	from.uncredited += n
	data := f.Data()
	if pad := n - int32(len(data)); pad > 0 {
		s.creditRaw(fl, from, pad)
	}
	end := f.StreamEnded()
	if end {
		from.recvEnd = true
	}
	return data, end
}

// canRetry: attempts remain and the request can be sent again.
func (s *h2Stream) canRetry() bool {
	return !s.started && s.attempt < s.retries && s.replay
}

// abandonAttempt ends the current attempt: its upstream stream reset
// (unless done) and its slot, lease and timer given back. The next
// attempt starts with the request body replayed.
func (s *h2Stream) abandonAttempt(fl *h2Flush) {
	if s.tryTimer != nil {
		s.tryTimer.Stop()
		s.tryTimer = nil
	}
	s.detachUp(fl, http2.ErrCodeCancel)
	if s.pool != nil {
		s.pool.forget(s)
		s.pool = nil
	}
	s.lease.Release()
	s.lease = lb.Lease{}
	s.up = h2Half{pend: append([]byte(nil), s.body...), pendEnd: s.down.recvEnd}
}

// detachUp leaves the upstream stream, resetting it unless both of its
// sides are closed.
func (s *h2Stream) detachUp(fl *h2Flush, code http2.ErrCode) {
	c := s.up.c
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.streams, s.up.id)
	c.mu.Unlock()
	if !(s.up.recvEnd && s.up.sentEnd) {
		c.reset(fl, s.up.id, code)
	}
	// What it sent and we never relayed is owed on the connection.
	c.dropped(fl, s.up.uncredited)
	s.up.uncredited = 0
	c.pool.done(c)
	s.up.c = nil
}

// upstreamFailed handles an attempt that ended without an answer (or in
// the middle of one): retried when the policy says so, else reported.
func (s *h2Stream) upstreamFailed(fl *h2Flush, err error) {
	if s.done {
		return
	}
	if s.ep != nil {
		s.p.outliers.Report(s.cl, s.ep.Addr, lb.GatewayFailure)
	}
	if s.started {
		s.detachUp(fl, http2.ErrCodeCancel)
		s.flags = "UR"
		s.resetDown(fl, http2.ErrCodeInternal)
		return
	}
	s.lastErr = err
	s.abandonAttempt(fl)
	if s.canRetry() && retryableError(s.route.Retry, err) {
		s.attempt++
		s.try(fl)
		return
	}
	s.fail(fl, err)
}

// upstreamLost is upstreamFailed for an attempt whose upstream stream is
// gone without a word more (reset, refused, its connection lost).
func (s *h2Stream) upstreamLost(fl *h2Flush, err error) {
	s.up.recvEnd, s.up.sentEnd = true, true
	s.upstreamFailed(fl, err)
}

// resetDown ends an answer already under way with RST_STREAM.
func (s *h2Stream) resetDown(fl *h2Flush, code http2.ErrCode) {
	s.down.c.reset(fl, s.down.id, code)
	s.down.sentEnd = true
	s.finish(fl)
}

// dialFailed is upstreamFailed for a stream that waited for a dial.
func (s *h2Stream) dialFailed(fl *h2Flush, pl *h2Pool, err error) {
	if s.done || s.pool != pl {
		return
	}
	s.pool = nil
	s.upstreamFailed(fl, err)
}

// peerReset handles RST_STREAM (or a stream error) from one side.
func (s *h2Stream) peerReset(fl *h2Flush, c *h2Conn, se http2.StreamError) {
	if c == s.down.c {
		s.clientGone(fl)
		return
	}
	if se.Code == http2.ErrCodeNo && s.up.recvEnd {
		// The upstream answered in full and wants no more of the request
		// (RFC 9113, 8.1): what it would have read is dropped, the answer
		// still goes out.
		s.up.sentEnd = true
		s.credit(fl, &s.down, int32(len(s.up.pend)))
		s.up.pend, s.up.pendEnd, s.up.pendTrailers = nil, false, nil
		return
	}
	if se.Code == http2.ErrCodeRefusedStream {
		s.upstreamLost(fl, errRefusedStream)
		return
	}
	s.upstreamLost(fl, fmt.Errorf("upstream reset the stream: %s", se.Code))
}

// clientGone ends a stream the client reset or left.
func (s *h2Stream) clientGone(fl *h2Flush) {
	if s.done {
		return
	}
	s.down.recvEnd, s.down.sentEnd = true, true
	if !s.started {
		s.code = 499
	}
	s.flags = "DC"
	s.finish(fl)
}

// malformed resets a request that broke HTTP/2's rules on its body's
// length (RFC 9113, 8.1.1) rather than relay it, as Envoy's codec does;
// the access log says DPE (downstream protocol error).
func (s *h2Stream) malformed(fl *h2Flush) {
	if s.done {
		return
	}
	s.down.c.reset(fl, s.down.id, http2.ErrCodeProtocol)
	s.down.recvEnd, s.down.sentEnd = true, true
	s.flags = "DPE"
	s.finish(fl)
}

// timedOut is the route's timeout: 504 before the answer began, a reset
// after.
func (s *h2Stream) timedOut(fl *h2Flush) {
	if s.started {
		s.flags = "UT"
		s.resetDown(fl, http2.ErrCodeCancel)
		return
	}
	s.abandonAttempt(fl)
	s.fail(fl, fmt.Errorf("route timeout %s: %w", s.route.Timeout, errTimeout))
}

// fail answers a request that got no response, as errorReply says.
func (s *h2Stream) fail(fl *h2Flush, err error) {
	code, flag, text := errorReply(err)
	s.flags = flag
	if code == 499 {
		s.clientGone(fl)
		return
	}
	s.reply(fl, code, text)
}

// reply answers locally with a text body, as http.Error does.
func (s *h2Stream) reply(fl *h2Flush, code int, text string) {
	if text != "" {
		text += "\n"
	}
	s.replyWith(fl, code, text, hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
		hpack.HeaderField{Name: "x-content-type-options", Value: "nosniff"})
}

func (s *h2Stream) replyWith(fl *h2Flush, code int, body string, extra ...hpack.HeaderField) {
	if s.started || s.down.sentEnd {
		return
	}
	if s.method == "HEAD" || code < 200 || code == 204 || code == 304 {
		body = "" // such answers have no content
	}
	fields := append([]hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}, extra...)
	fields = append(fields, hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(len(body))})
	s.started, s.code = true, code
	s.up.pend, s.up.pendEnd, s.up.sentEnd = nil, false, true // the request goes nowhere
	end := body == ""
	s.down.c.headers(fl, s.down.id, end, fields)
	if end {
		s.down.sentEnd = true
		s.finish(fl)
		return
	}
	s.out = int64(len(body))
	s.send(fl, &s.down, []byte(body), true)
}

// finish ends the stream once its answer is sent (or it was reset):
// whatever is still open is reset, resources go back, and the request
// is counted and logged.
func (s *h2Stream) finish(fl *h2Flush) {
	if s.done {
		return
	}
	s.done = true
	if s.cancel != nil {
		s.cancel()
	}
	s.wake()
	for _, t := range []*time.Timer{s.timer, s.tryTimer} {
		if t != nil {
			t.Stop()
		}
	}
	if s.pool != nil {
		s.pool.forget(s)
		s.pool = nil
	}
	s.detachUp(fl, http2.ErrCodeCancel)
	s.lease.Release()
	if s.release != nil {
		s.release()
	}
	dc := s.down.c
	if !s.down.recvEnd && s.down.sentEnd {
		// The answer is complete while the client still sends: tell it to
		// stop (RFC 9113, 8.1).
		dc.reset(fl, s.down.id, http2.ErrCodeNo)
	}
	dc.mu.Lock()
	delete(dc.streams, s.down.id)
	dc.creditLocked(fl, s.down.uncredited)
	s.down.uncredited = 0
	closeIt := dc.goaway && len(dc.streams) == 0
	if closeIt && dc.werr == nil {
		dc.armWrite()
		dc.werr = dc.bw.Flush()
	}
	dc.mu.Unlock()
	if closeIt {
		dc.conn.Close()
	}
	if !s.byHandler {
		s.record()
	}
}

// record counts the request in Istio's metrics and the access log.
func (s *h2Stream) record() {
	p, d := s.p, s.d
	ev := &s.ev
	p.sides(ev, d.inbound(), s.peer, s.host, s.cluster)
	ev.Code, ev.Flags, ev.GRPCStatus = s.code, s.flags, s.grpcStatus
	dur := time.Since(s.start)
	p.stats.istio.Request(ev, dur, s.in, s.out)
	if w, js := p.accessLogOf(d.chain); w != nil || s.dec.Span != nil {
		a := accessEntry{start: s.start, dur: dur, method: s.method, uri: s.uri, proto: "HTTP/2", code: s.code, flags: s.flags,
			in: s.in, out: s.out, xff: s.xff, ua: s.ua, requestID: s.reqID, host: s.host, upstream: s.upstream, cluster: s.cluster, d: d}
		if s.route != nil {
			a.route = s.route.Name
			if s.route.HostRewrite != "" {
				a.host = s.route.HostRewrite
			}
		}
		if w != nil {
			p.accessLog(w, js, &a)
		}
		p.endSpan(&s.dec, &a)
	}
}
