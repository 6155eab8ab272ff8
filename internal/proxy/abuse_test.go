package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// rawUpstream answers each request on a connection with answer(n, i): n
// counts connections from 1, i requests on the connection from 1.
func rawUpstream(t *testing.T, answer func(conn, req int) string) (addr string, conns *atomic.Int32) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	conns = &atomic.Int32{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			n := int(conns.Add(1))
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for i := 1; ; i++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, answer(n, i)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String(), conns
}

// An upstream that sends more than its response (a second, unasked-for
// response behind it) never gets its connection reused: the next request
// must not be answered by what it smuggled.
func TestUpstreamConnectionWithUnreadBytesIsNotReused(t *testing.T) {
	up, conns := rawUpstream(t, func(conn, _ int) string {
		if conn == 1 {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
	})
	for _, e := range []engine{engines[0], engines[1]} { // the loop and net/http
		conns.Store(0)
		_, front := startHTTPProxy(t, up, nil)
		if code, body := e.do(t, front, "GET", "/a"); code != 200 || body != "ok" {
			t.Fatalf("%s: first answer %d %q", e.name, code, body)
		}
		if code, body := e.do(t, front, "GET", "/b"); code != 200 || body != "fine" {
			t.Errorf("%s: second answer %d %q, want 200 \"fine\" from a new connection", e.name, code, body)
		}
		if n := conns.Load(); n != 2 {
			t.Errorf("%s: %d upstream connections, want 2", e.name, n)
		}
	}
}

// A chunked response that breaks its framing (no CRLF after a chunk's
// data) ends the client's connection and the upstream's: nothing after it
// is read as a response.
func TestMalformedChunkedResponseIsNotRelayedAsValid(t *testing.T) {
	up, conns := rawUpstream(t, func(conn, _ int) string {
		if conn == 1 {
			return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n"
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"
	})
	_, front := startHTTPProxy(t, up, nil)
	c := dialRaw(t, front)
	if _, err := io.WriteString(c.c, "GET /a HTTP/1.1\r\nHost: profile\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err == nil {
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Fatalf("a malformed chunked body was relayed as complete: %q", b)
		}
	}
	// The proxy closes the client's connection rather than going on as if
	// the response were whole.
	_ = c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(c.br); err != nil {
		t.Fatalf("the client's connection stayed open after a malformed response: %v", err)
	}
	if code, body := engines[0].do(t, front, "GET", "/b"); code != 200 || body != "fine" || conns.Load() != 2 {
		t.Errorf("the next request: %d %q over %d upstream connections, want \"fine\" over a new one", code, body, conns.Load())
	}
}
