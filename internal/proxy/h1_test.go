package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func h1Get(t *testing.T, p *Proxy, addr, path string) (*http.Response, error) {
	t.Helper()
	r, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	r.Body = http.NoBody
	dial := func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) }
	return p.roundTripH1(r, upstreamKey{addr: addr}, nil, false, dial)
}

// Responses read to the end hand their connection back; one abandoned
// halfway closes its connection instead.
func TestH1ReusesConnections(t *testing.T) {
	var opened atomic.Int32
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("x", 100<<10))
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	up.Start()
	defer up.Close()
	p := &Proxy{}
	addr := up.Listener.Addr().String()
	for i := range 3 {
		resp, err := h1Get(t, p, addr, "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if len(b) != 100<<10 {
			t.Fatalf("request %d: %d bytes", i, len(b))
		}
	}
	if n := opened.Load(); n != 1 {
		t.Fatalf("3 sequential requests opened %d connections, want 1", n)
	}
	resp, err := h1Get(t, p, addr, "/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = resp.Body.Read(make([]byte, 10))
	resp.Body.Close()
	resp, err = h1Get(t, p, addr, "/")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if n := opened.Load(); n != 2 {
		t.Fatalf("after an abandoned response %d connections were opened, want 2 (it must not be reused)", n)
	}
}

// closingUpstream answers one request per connection ("ok") and then
// closes it without saying so, as an upstream whose idle timeout is
// shorter than the proxy's. It returns its address and a count of the
// connections it accepted.
func closingUpstream(t *testing.T) (string, *atomic.Int32) {
	t.Helper()
	return serveConns(t, func(c net.Conn, _ int) {
		r, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
}

// An upstream that closes idle connections silently: the request on the
// dead connection is sent again on a new one.
func TestH1RetriesAStaleConnection(t *testing.T) {
	addr, conns := closingUpstream(t)
	p := &Proxy{}
	for i := range 2 {
		resp, err := h1Get(t, p, addr, "/")
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok" {
			t.Fatalf("request %d: %q", i, b)
		}
		time.Sleep(50 * time.Millisecond) // the upstream closes meanwhile
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d upstream connections, want 2", n)
	}
}

// A cancelled request returns at once, however slow the upstream.
func TestH1Cancel(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}))
	defer up.Close()
	p := &Proxy{}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, up.URL, nil)
	addr := up.Listener.Addr().String()
	start := time.Now()
	_, err := p.roundTripH1(r, upstreamKey{addr: addr}, nil, false, func(ctx context.Context) (net.Conn, error) { return net.Dial("tcp", addr) })
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("cancelled request: err %v after %s", err, time.Since(start))
	}
}

// h1Send sends one request with a body through roundTripH1 and reads the
// answer's body.
func h1Send(t *testing.T, p *Proxy, addr, method, body string, stream bool) (string, error) {
	t.Helper()
	r, _ := http.NewRequest(method, "http://"+addr+"/", strings.NewReader(body))
	var ahead []byte
	if stream {
		r.ContentLength = -1
	} else {
		ahead = []byte(body)
	}
	dial := func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) }
	resp, err := p.roundTripH1(r, upstreamKey{addr: addr}, ahead, stream, dial)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// A request that may not be sent twice is written only on a connection
// seen open: one the upstream closed while idle is passed over before
// anything is sent on it, and the request goes once, on a new one.
func TestH1PeeksBeforeSendingOnce(t *testing.T) {
	for _, stream := range []bool{false, true} {
		addr, conns := closingUpstream(t)
		p := &Proxy{}
		for i := range 2 {
			if got, err := h1Send(t, p, addr, "POST", "data", stream); err != nil || got != "ok" {
				t.Fatalf("stream %v, request %d: %q, %v", stream, i, got, err)
			}
			time.Sleep(50 * time.Millisecond) // the upstream closes meanwhile
		}
		if n := conns.Load(); n != 2 {
			t.Fatalf("stream %v: %d upstream connections, want 2", stream, n)
		}
	}
}

// An upstream that takes a request and closes without answering: a GET is
// sent again on a new connection, a POST is not (it may have been acted
// on) and fails.
func TestH1SendsOnlyReplayableRequestsTwice(t *testing.T) {
	var requests atomic.Int32
	addr, _ := serveConns(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			r, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			requests.Add(1)
			if i == 1 {
				return // the second request on a connection: taken, not answered
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	for _, tc := range []struct {
		method   string
		ok       bool
		requests int32
	}{{"GET", true, 3}, {"POST", false, 2}} {
		p := &Proxy{}
		requests.Store(0)
		if got, err := h1Send(t, p, addr, tc.method, "", false); err != nil || got != "ok" {
			t.Fatalf("%s, first: %q, %v", tc.method, got, err)
		}
		got, err := h1Send(t, p, addr, tc.method, "", false)
		if (err == nil) != tc.ok || tc.ok && got != "ok" {
			t.Errorf("%s, second: %q, %v; want success %v", tc.method, got, err, tc.ok)
		}
		if n := requests.Load(); n != tc.requests {
			t.Errorf("%s: the upstream took %d requests, want %d", tc.method, n, tc.requests)
		}
	}
}

// A streamed body the upstream answers before reading (413): the answer
// is relayed, and the connection, mid-request, is not pooled.
func TestH1EarlyAnswerToAStreamedBody(t *testing.T) {
	addr, conns := serveConns(t, func(c net.Conn, _ int) {
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 3\r\n\r\nbig")
		}
	})
	p := &Proxy{}
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("start")) }() // and then nothing: the body never ends
	r, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	r.ContentLength = -1
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r = r.WithContext(ctx)
	dial := func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) }
	resp, err := p.roundTripH1(r, upstreamKey{addr: addr}, nil, true, dial)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || string(b) != "big" {
		t.Fatalf("answer %d %q, want 413 \"big\"", resp.StatusCode, b)
	}
	if got, err := h1Send(t, p, addr, "GET", "", false); err != nil || got != "big" {
		t.Fatalf("next request: %q, %v", got, err)
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d upstream connections, want 2: one left mid-request was pooled", n)
	}
}

// readAheadBody keeps a body of known length up to maxRetryBody; others
// stream.
func TestReadAheadBody(t *testing.T) {
	for _, tc := range []struct {
		body   string
		length int64
		stream bool
	}{{"x", 1, false}, {"x", -1, true}, {strings.Repeat("x", maxRetryBody+1), maxRetryBody + 1, true}, {"", 0, false}} {
		r, _ := http.NewRequest("POST", "http://a/", strings.NewReader(tc.body))
		r.ContentLength = tc.length
		if tc.body == "" {
			r.Body = http.NoBody
		}
		b, stream, err := readAheadBody(r)
		if err != nil || stream != tc.stream || !stream && string(b) != tc.body {
			t.Errorf("length %d: stream %v body %d bytes err %v, want stream %v", tc.length, stream, len(b), err, tc.stream)
		}
	}
}
