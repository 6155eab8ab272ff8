package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// An HTTP/2 stream whose route leads to HTTP/1.1 upstreams (Istio's http
// ports: a browser at the ingress gateway speaks HTTP/2, the app behind it
// HTTP/1.1) is served by net/http's handler (handle) on a goroutine of its
// own, through a request and a ResponseWriter made of the stream's frames.
// The handler carries out the stream's decision and does the telemetry; the relay only moves
// bytes and keeps flow control: the request body is credited back to the
// client as the handler reads it, and a write waits while the client's
// window holds the answer back. A route with mirrors goes the same way:
// the handler is the one place that copies a request (mirror.go).

// h2MaxPending bounds the answer a handler may have waiting for window.
const h2MaxPending = 64 << 10

// forHandler tells whether a route's requests are the handler's: it
// sends to HTTP/1.1 upstreams, or mirrors.
func forHandler(rt *runtime, r *config.Route) bool {
	if len(r.Mirrors) > 0 {
		return true
	}
	for _, wc := range r.Clusters {
		if c := rt.snap.Clusters[wc.Name]; c != nil && c.Protocol == config.UpstreamHTTP1 {
			return true
		}
	}
	return false
}

// serveByHandler hands the stream to net/http's handler.
func (s *h2Stream) serveByHandler(fl *h2Flush, f *http2.MetaHeadersFrame) {
	u, err := url.ParseRequestURI(s.uri)
	if err != nil {
		s.reply(fl, http.StatusBadRequest, "malformed :path")
		return
	}
	h := make(http.Header, len(f.Fields))
	for _, hf := range f.RegularFields() {
		k := http.CanonicalHeaderKey(hf.Name)
		if k == "Cookie" && len(h[k]) > 0 { // HTTP/2 may split cookies; HTTP/1.1 may not
			h[k][0] += "; " + hf.Value
			continue
		}
		h[k] = append(h[k], hf.Value)
	}
	ctx := context.WithValue(context.WithValue(context.Background(), downstreamKey, s.d), decisionKey, &s.dec)
	ctx, cancel := context.WithCancel(ctx)
	r := (&http.Request{Method: s.method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: h, Host: s.host,
		RemoteAddr: s.d.conn.RemoteAddr().String(), RequestURI: s.uri, ContentLength: -1}).WithContext(ctx)
	switch {
	case s.down.recvEnd:
		r.Body, r.ContentLength = http.NoBody, 0
	default:
		r.Body = h2Body{s}
		if n, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64); err == nil && n >= 0 {
			r.ContentLength = n
		}
	}
	s.byHandler, s.cancel = true, cancel
	s.cond = sync.NewCond(&s.mu)
	w := &h2Writer{s: s, h: http.Header{}}
	c := s.down.c
	c.handlers.Add(1)
	go func() {
		defer c.handlers.Add(-1)
		defer cancel()
		defer func() {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				s.p.opts.Log.Error("HTTP handler panicked on an HTTP/2 stream", "panic", v)
			}
			w.end()
		}()
		s.p.httpServer() // the handler's ReverseProxy
		s.p.handle(w, r)
	}()
}

// h2Body is the request body of a stream served by the handler.
type h2Body struct{ s *h2Stream }

func (b h2Body) Read(p []byte) (int, error) {
	s := b.s
	var fl h2Flush
	defer fl.flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.up.pend) == 0 && !s.down.recvEnd && !s.done {
		s.cond.Wait()
	}
	switch {
	case s.done:
		// The stream ended (reset, or answered): what was left is
		// credited back already.
		return 0, errClientGone
	case len(s.up.pend) == 0:
		return 0, io.EOF
	}
	n := copy(p, s.up.pend)
	s.up.pend = s.up.pend[:copy(s.up.pend, s.up.pend[n:])]
	s.credit(&fl, &s.down, int32(n))
	return n, nil
}

func (h2Body) Close() error { return nil }

// h2Writer is the ResponseWriter of a stream served by the handler.
type h2Writer struct {
	s     *h2Stream
	h     http.Header
	wrote bool
}

func (w *h2Writer) Header() http.Header { return w.h }

func (w *h2Writer) WriteHeader(code int) {
	if w.wrote || code < 200 {
		return // interim answers are not relayed on this path
	}
	w.wrote = true
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(code)}}
	for k, vs := range w.h {
		lk := strings.ToLower(k)
		if h2Hop[lk] || lk == "trailer" || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: lk, Value: v})
		}
	}
	s := w.s
	var fl h2Flush
	s.mu.Lock()
	if !s.done && !s.started {
		s.started, s.code = true, code
		s.down.c.headers(&fl, s.down.id, false, fields)
	}
	s.mu.Unlock()
	fl.flush()
}

func (w *h2Writer) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	s := w.s
	var fl h2Flush
	defer fl.flush()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.down.pend) > h2MaxPending && !s.down.sentEnd {
		s.cond.Wait()
	}
	if s.down.sentEnd {
		return 0, errClientGone
	}
	s.out += int64(len(b))
	s.send(&fl, &s.down, b, false)
	return len(b), nil
}

// Flush: every Write is flushed already.
func (w *h2Writer) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
}

// end closes the stream once the handler returned: with the trailers the
// handler set (ReverseProxy sets the upstream's), else an empty DATA frame.
func (w *h2Writer) end() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	var trailers []hpack.HeaderField
	for _, k := range w.h.Values("Trailer") {
		for _, k := range strings.Split(k, ",") {
			k = http.CanonicalHeaderKey(strings.TrimSpace(k))
			for _, v := range w.h[k] {
				trailers = append(trailers, hpack.HeaderField{Name: strings.ToLower(k), Value: v})
			}
		}
	}
	for k, vs := range w.h {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			for _, v := range vs {
				trailers = append(trailers, hpack.HeaderField{Name: strings.ToLower(name), Value: v})
			}
		}
	}
	s := w.s
	var fl h2Flush
	s.mu.Lock()
	switch {
	case s.down.sentEnd:
	case len(trailers) > 0:
		s.sendTrailers(&fl, &s.down, trailers)
	default:
		s.send(&fl, &s.down, nil, true)
	}
	s.mu.Unlock()
	fl.flush()
}

var _ http.Flusher = (*h2Writer)(nil)
