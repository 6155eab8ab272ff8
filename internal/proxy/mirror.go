package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// Mirroring (a VirtualService's mirror and mirrors, Envoy's
// request_mirror_policies): each mirror gets a copy of its share of a
// route's requests as they go upstream, with "-shadow" added to the host
// as Envoy does, so the mirror's owners can tell copies apart. A copy is
// sent once the request's body is complete and its answer is read and
// dropped: nothing of a mirror reaches the client or delays its request.
// Only net/http's handler mirrors (the HTTP/1.1 loop and the HTTP/2 relay
// hand such routes to it). A copy needs the body kept, so a body over
// maxRetryBody is not mirrored, nor is an upgrade; and at most maxMirrors
// copies are in flight, so a slow mirror cannot take the proxy's memory.
// What is not sent is counted (isthmus_mirror_requests_total).

// maxMirrors bounds the mirrored requests in flight in one proxy.
const maxMirrors = 256

// mirror arranges for r, as it is about to go upstream on rc's route, to
// be copied to the route's mirrors its share picks.
func (p *Proxy) mirror(rc *route, r *http.Request) {
	var to []config.Mirror
	for _, m := range rc.r.Mirrors {
		if m.Share >= 1 || rand.Float64() < m.Share {
			to = append(to, m)
		}
	}
	if len(to) == 0 {
		return
	}
	if r.Header.Get("Upgrade") != "" || r.ContentLength > maxRetryBody {
		p.mirrorsNotSent(to)
		return
	}
	copyOf := r.Clone(context.Background())
	send := func(body []byte) {
		for _, m := range to {
			p.sendMirror(rc, copyOf, m, body)
		}
	}
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		send(nil)
		return
	}
	r.Body = &mirrorBody{ReadCloser: r.Body, want: r.ContentLength, done: send, dropped: func() { p.mirrorsNotSent(to) }}
}

func (p *Proxy) mirrorsNotSent(to []config.Mirror) {
	for _, m := range to {
		p.stats.mirrors.WithLabelValues(m.Cluster, "dropped").Inc()
	}
}

// sendMirror sends one copy in the background, on the route's timeout.
func (p *Proxy) sendMirror(rc *route, r *http.Request, m config.Mirror, body []byte) {
	select {
	case p.mirrorSlots <- struct{}{}:
	default:
		p.stats.mirrors.WithLabelValues(m.Cluster, "dropped").Inc()
		return
	}
	// The mirror's route: the original's hashing, no retries, no mirrors.
	shadow := &config.Route{Name: rc.r.Name, Hash: rc.r.Hash, Timeout: rc.r.Timeout}
	mr := &route{rt: rc.rt, d: rc.d, r: shadow, cluster: m.Cluster}
	go func() {
		defer func() { <-p.mirrorSlots }()
		ctx := context.WithValue(context.Background(), routeKey, mr)
		if shadow.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, shadow.Timeout)
			defer cancel()
		}
		out := r.Clone(ctx)
		out.RequestURI = ""
		removeHopByHop(out.Header)
		if !m.KeepHost {
			out.Host = shadowHost(out.Host)
		}
		out.Body, out.ContentLength = http.NoBody, 0
		if len(body) > 0 {
			out.Body, out.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		}
		resp, err := roundTripper{p}.RoundTrip(out)
		if err != nil {
			p.stats.mirrors.WithLabelValues(m.Cluster, "failed").Inc()
			return
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		p.stats.mirrors.WithLabelValues(m.Cluster, "sent").Inc()
	}()
}

// shadowHost is Envoy's shadow authority: "-shadow" after the host name,
// before a port.
func shadowHost(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && i > strings.LastIndexByte(host, ']') {
		return host[:i] + "-shadow" + host[i:]
	}
	return host + "-shadow"
}

// removeHopByHop drops the headers of one connection (RFC 9110 7.6.1),
// which ReverseProxy drops from what it forwards too.
func removeHopByHop(h http.Header) {
	for _, v := range h["Connection"] {
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
		h.Del(name)
	}
}

// mirrorBody keeps what the request body reads, up to maxRetryBody, and
// hands it to done once complete (at its Content-Length or its end); a
// larger body, or one that fails or is closed early, is not mirrored.
type mirrorBody struct {
	io.ReadCloser
	want    int64 // -1: unknown
	kept    []byte
	fired   bool
	done    func([]byte)
	dropped func()
}

func (b *mirrorBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if b.fired {
		return n, err
	}
	if len(b.kept)+n > maxRetryBody {
		b.fired, b.kept = true, nil
		b.dropped()
		return n, err
	}
	b.kept = append(b.kept, p[:n]...)
	got := int64(len(b.kept))
	switch {
	case b.want >= 0 && got >= b.want || b.want < 0 && err == io.EOF:
		b.fired = true
		b.done(b.kept)
	case err != nil:
		b.fired = true
		b.dropped()
	}
	return n, err
}

func (b *mirrorBody) Close() error {
	if !b.fired {
		b.fired = true
		b.dropped()
	}
	return b.ReadCloser.Close()
}
