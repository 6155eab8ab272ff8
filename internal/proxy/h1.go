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
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// HTTP/1.1 to upstreams, on the request's own goroutine: write the
// request, read the response, hand the connection back when its body is
// done. Every HTTP/1.1 exchange net/http's handler makes goes this way;
// net/http's Transport serves only HTTP/2 upstreams. The Transport runs
// two goroutines per connection and hands every request and response
// between them over channels (two extra wake-ups per request on each side
// of a sidecar), and it pools a connection before its reader has looked
// at what the upstream sent behind the response: a request that takes
// the connection in between reads those bytes as its answer (a response
// smuggled in by the upstream). Here a connection is pooled only with
// nothing unread on it (h1Idle.put).

// upstreamKey is one upstream address of one connection pool: it keys
// both the HTTP/1.1 idle connections and the HTTP/2 pools.
type upstreamKey struct {
	pool poolKey
	addr string
}

// h1Idle is the idle connections of one upstreamKey.
type h1Idle struct {
	mu    sync.Mutex
	conns []*h1Conn
	// retired: the configuration no longer reaches the pool, or it went
	// unused (pools.go); read without mu by a connection's cached pool.
	retired atomic.Bool
	// last is when a connection was last taken or given back.
	last time.Time
}

// h1Pool is the idle connections of key, made (used as of now, and
// swept from then on) if there are none yet.
func (p *Proxy) h1Pool(key upstreamKey) *h1Idle {
	v, ok := p.h1Pools.Load(key)
	if !ok {
		var loaded bool
		if v, loaded = p.h1Pools.LoadOrStore(key, &h1Idle{last: time.Now()}); !loaded {
			p.pooled()
		}
	}
	return v.(*h1Idle)
}

// maxIdleH1 bounds the idle connections kept per upstream address.
const maxIdleH1 = 256

type h1Conn struct {
	net.Conn
	br *bufio.Reader
	bw *bufio.Writer
	// deadline: one is set (the downstream loop's timeouts).
	deadline bool
	// idleSince is when it was last pooled.
	idleSince time.Time
}

// readAheadBody reads a request body small enough to keep (to send again
// on a stale connection, or for a retry): nil with stream false when
// there is none, nil with stream true when it is sent as it is read. The
// body read ahead must end at its length: a byte beyond it (an HTTP/2
// client's DATA past its content-length) fails the request rather than
// being dropped on the way.
func readAheadBody(r *http.Request) (body []byte, stream bool, err error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, false, nil
	}
	if r.ContentLength <= 0 || r.ContentLength > maxRetryBody {
		return nil, true, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, r.ContentLength+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(b)) < r.ContentLength {
		return nil, false, fmt.Errorf("request body ended after %d of its %d bytes", len(b), r.ContentLength)
	}
	if int64(len(b)) > r.ContentLength {
		return nil, false, fmt.Errorf("request body longer than its content-length %d", r.ContentLength)
	}
	return b, false, nil
}

// replayable tells whether a request may be sent again.
func replayable(r *http.Request) bool {
	return idempotentMethod(r.Method) || r.Header.Get("Idempotency-Key") != "" || r.Header.Get("X-Idempotency-Key") != ""
}

// idempotentMethod is net/http's list of methods a request may be sent twice with.
func idempotentMethod(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// roundTripH1 sends r to addr over a pooled connection (dialled with
// dial when none is idle) and returns the response; its body hands the
// connection back once read to the end. body is r's body read ahead, or
// with stream r.Body is written as it is read, beside the response (an
// upstream may answer before the body ends).
//
// A reused connection the upstream had closed is found by the failure
// for requests that may be sent twice (which are then sent again on a new
// one), and by a peek before writing for the others: nothing watches idle
// connections.
func (p *Proxy) roundTripH1(r *http.Request, key upstreamKey, body []byte, stream bool, dial func(context.Context) (net.Conn, error)) (*http.Response, error) {
	idle := p.h1Pool(key)
	ctx := r.Context()
	once := stream || !replayable(r)
	resent := false
	for {
		pc := idle.get()
		reused := pc != nil
		if reused && once && !pc.alive() {
			pc.Close()
			continue
		}
		if pc == nil {
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			pc = newH1Conn(c)
		}
		if body != nil {
			r.Body = io.NopCloser(bytes.NewReader(body))
			r.ContentLength = int64(len(body))
		}
		// A cancelled request (timeout, client gone) unblocks the I/O.
		stop := context.AfterFunc(ctx, func() { _ = pc.SetDeadline(time.Unix(1, 0)) })
		var wrote chan error
		var resp *http.Response
		var err error
		if stream {
			wrote = make(chan error, 1)
			go func() {
				err := pc.write(r)
				if err != nil {
					pc.Close() // the upstream must not take a part for the whole
				}
				wrote <- err
			}()
			resp, err = pc.readResponse(r)
			if err != nil {
				select {
				case werr := <-wrote:
					if werr != nil {
						err = werr
					}
				default:
				}
			}
		} else if err = pc.write(r); err == nil {
			resp, err = pc.readResponse(r)
		}
		if err != nil {
			stop()
			pc.Close()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// The upstream closed an idle connection as we reused it.
			if reused && !once && !resent && stale(err) {
				resent = true
				continue
			}
			return nil, err
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			// The connection is the client's from now on (ReverseProxy
			// copies both ways); it is never pooled again.
			resp.Body = &h1Switched{pc: pc, stop: stop}
			return resp, nil
		}
		resp.Body = &h1Body{body: resp.Body, pc: pc, idle: idle, stop: stop, wrote: wrote, reuse: !resp.Close && !r.Close}
		return resp, nil
	}
}

// write sends the request, its body included.
func (pc *h1Conn) write(r *http.Request) error {
	if err := r.Write(pc.bw); err != nil {
		return err
	}
	return pc.bw.Flush()
}

// readResponse reads the response head, skipping interim (1xx) responses.
func (pc *h1Conn) readResponse(r *http.Request) (*http.Response, error) {
	for {
		resp, err := http.ReadResponse(pc.br, r)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, nil
	}
}

// h1Switched is the body of a 101 response: the upstream connection
// itself, read and written by ReverseProxy's copy both ways.
type h1Switched struct {
	pc   *h1Conn
	stop func() bool
}

func (s *h1Switched) Read(b []byte) (int, error)  { return s.pc.br.Read(b) }
func (s *h1Switched) Write(b []byte) (int, error) { return s.pc.Conn.Write(b) }
func (s *h1Switched) Close() error {
	s.stop()
	return s.pc.Close()
}

// stale tells a connection the upstream had closed from other failures.
func stale(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (i *h1Idle) get() *h1Conn {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.last = time.Now()
	if n := len(i.conns); n > 0 {
		pc := i.conns[n-1]
		i.conns = i.conns[:n-1]
		return pc
	}
	return nil
}

// put pools a connection whose exchange is complete. One that still holds
// bytes the upstream sent beyond its response is closed instead: they
// would be read as the next request's answer (response smuggling).
func (i *h1Idle) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 {
		pc.Close()
		return
	}
	now := time.Now()
	i.mu.Lock()
	i.last = now
	if !i.retired.Load() && len(i.conns) < maxIdleH1 {
		pc.idleSince = now
		i.conns = append(i.conns, pc)
		pc = nil
	}
	i.mu.Unlock()
	if pc != nil {
		pc.Close()
	}
}

// h1Body is a response body that returns its connection to the pool when
// read to the end, and closes it when abandoned before.
type h1Body struct {
	body io.ReadCloser
	pc   *h1Conn
	idle *h1Idle
	stop func() bool
	// wrote is the streamed body's writer's result (nil when the request
	// was written before the response was read).
	wrote chan error
	reuse bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

// Close before the end closes the connection: draining a response the
// client no longer wants could take long.
func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

func (b *h1Body) finish(complete bool) {
	if b.done {
		return
	}
	b.done = true
	// A response that ended before its request did (the upstream answered
	// without reading the whole body) leaves the connection mid-request.
	if b.wrote != nil {
		select {
		case err := <-b.wrote:
			complete = complete && err == nil
		default:
			complete = false
		}
	}
	// stop is false if the request was cancelled meanwhile: its deadline
	// is set on the connection, which therefore cannot be reused.
	if b.stop() && complete && b.reuse {
		b.idle.put(b.pc)
		return
	}
	b.pc.Close()
}
