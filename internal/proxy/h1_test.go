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
	return p.roundTripH1(r, upstreamKey{addr: addr}, nil, dial)
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var conns atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer c.Close()
				r, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}()
		}
	}()
	return l.Addr().String(), &conns
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
	_, err := p.roundTripH1(r, upstreamKey{addr: addr}, nil, func(ctx context.Context) (net.Conn, error) { return net.Dial("tcp", addr) })
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("cancelled request: err %v after %s", err, time.Since(start))
	}
}

// Only requests that may be sent twice take the synchronous path (a
// stale connection is found by using it, and the request sent again).
func TestH1TakesOnlyReplayableRequests(t *testing.T) {
	for _, tc := range []struct {
		method, key string
		want        bool
	}{{"GET", "", true}, {"HEAD", "", true}, {"POST", "", false}, {"DELETE", "", false}, {"POST", "k1", true}} {
		r, _ := http.NewRequest(tc.method, "http://a/", strings.NewReader("x"))
		if tc.key != "" {
			r.Header.Set("Idempotency-Key", tc.key)
		}
		b, ok, err := syncBody(r)
		if err != nil || ok != tc.want || (ok && string(b) != "x") {
			t.Errorf("%s (key %q): ok %v body %q err %v, want ok %v", tc.method, tc.key, ok, b, err, tc.want)
		}
	}
}
