package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"regexp"
	"testing"
)

// The loop takes only request heads it is sure of; the rest go to net/http.
func TestParseRequestHead(t *testing.T) {
	for _, tc := range []struct {
		head string
		ok   bool
		// path, host, length, close of an accepted head
		path, host string
		length     int64
		close      bool
	}{
		{head: "GET /a/b?x=1 HTTP/1.1\r\nHost: profile:8080\r\nUser-Agent: curl\r\n\r\n", ok: true, path: "/a/b", host: "profile:8080"},
		{head: "POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nConnection: close\r\n\r\n", ok: true, path: "/p", host: "h", length: 5, close: true},
		{head: "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, TE\r\nTE: trailers\r\n\r\n", ok: true, path: "/", host: "h"},
		{head: "GET / HTTP/1.0\r\nHost: h\r\n\r\n"},                                // HTTP/1.0: net/http
		{head: "PRI * HTTP/2.0\r\n\r\n"},                                           // an HTTP/2 preface
		{head: "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n"},                        // absolute form
		{head: "GET /a%2Fb HTTP/1.1\r\nHost: h\r\n\r\n"},                           // escapes: routes match the decoded path
		{head: "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n"},                        //
		{head: "GET / HTTP/1.1\r\n\r\n"},                                           // no Host
		{head: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},                     // two
		{head: "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"}, // a streamed body
		{head: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 70000\r\n\r\n"},      // too large to keep for retries
		{head: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"},
		{head: "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"},
		{head: "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"},
		{head: "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"},
		{head: "GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Secret\r\n\r\n"}, // names another hop-by-hop header
		{head: "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n"},   // obsolete folding
		{head: "GET / HTTP/1.1\r\nHost: h\r\nX A: 1\r\n\r\n"},               //
		{head: "GET / HTTP/1.1\r\nHost: h\r\nX-A : 1\r\n\r\n"},              // space before the colon
		{head: "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n"},          //
		{head: "G(T / HTTP/1.1\r\nHost: h\r\n\r\n"},
		{head: "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"}, // net/http's server refuses such a Host                         //
	} {
		r, _, ok := parseRequestHead([]byte(tc.head), nil)
		if ok != tc.ok {
			t.Errorf("%q: ok %v, want %v", tc.head, ok, tc.ok)
			continue
		}
		if ok && (string(r.path) != tc.path || string(r.host) != tc.host || r.length != tc.length || r.close != tc.close) {
			t.Errorf("%q: path %q host %q length %d close %v", tc.head, r.path, r.host, r.length, r.close)
		}
	}
}

func TestParseResponseHead(t *testing.T) {
	for _, tc := range []struct {
		head                   string
		ok, chunked, keepAlive bool
		code                   int
		length                 int64
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", true, false, true, 200, 2},
		{"HTTP/1.1 204\r\n\r\n", true, false, true, 204, -1},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", true, true, true, 200, -1},
		{"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n", true, false, false, 200, 2},
		{"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n", true, false, true, 200, 2},
		{"HTTP/1.0 200 OK\r\n\r\n", true, false, false, 200, -1}, // to the end of the connection
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", false, false, false, 0, 0},
		{"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false, false, false, 0, 0},
		{"HTTP/2 200\r\n\r\n", false, false, false, 0, 0},
		{"HTTP/1.1 20 OK\r\n\r\n", false, false, false, 0, 0},
	} {
		r, _, ok := parseResponseHead([]byte(tc.head), nil)
		if ok != tc.ok || ok && (r.chunked != tc.chunked || r.keepAlive != tc.keepAlive || r.code != tc.code || r.length != tc.length) {
			t.Errorf("%q: ok %v chunked %v keepAlive %v code %d length %d", tc.head, ok, r.chunked, r.keepAlive, r.code, r.length)
		}
	}
}

// Whatever the loop accepts, net/http reads the same way: same method,
// path, host and body length, so handing a connection over never changes
// what a request means.
func FuzzParseRequestHead(f *testing.F) {
	f.Add([]byte("GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: h\r\nX: \t v \r\n\r\n"))
	f.Fuzz(func(t *testing.T, head []byte) {
		if !bytes.HasSuffix(head, []byte("\r\n\r\n")) {
			return
		}
		r, fields, ok := parseRequestHead(head, nil)
		if !ok {
			return
		}
		std, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("the loop accepts %q, net/http refuses it: %v", head, err)
		}
		if std.Method != string(r.method) || std.URL.Path != string(r.path) || std.Host != string(r.host) || max(std.ContentLength, 0) != r.length || std.Close != r.close {
			t.Fatalf("%q: loop %s %s host %q length %d close %v; net/http %s %s host %q length %d close %v", head,
				r.method, r.path, r.host, r.length, r.close, std.Method, std.URL.Path, std.Host, std.ContentLength, std.Close)
		}
		for _, fl := range fields {
			if len(std.Header.Values(string(fl.name))) == 0 && !fieldIs(fl.name, "host") {
				t.Fatalf("%q: header %q lost by net/http", head, fl.name)
			}
		}
	})
}

// X-Request-Id is a version 4 UUID, as Envoy generates it.
func TestRequestIDIsAUUIDv4(t *testing.T) {
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		id := requestID()
		if !re.MatchString(id) || seen[id] {
			t.Fatalf("request ID %q: not a fresh UUIDv4", id)
		}
		seen[id] = true
	}
}
