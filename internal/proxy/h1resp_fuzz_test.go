package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// upstreamBytes is an upstream connection that says the given bytes and
// then ends; what the proxy writes to it is dropped.
type upstreamBytes struct {
	net.Conn // nil: the loop calls none of the other methods here
	r        *bytes.Reader
	closed   bool
}

func (u *upstreamBytes) Read(b []byte) (int, error)  { return u.r.Read(b) }
func (u *upstreamBytes) Write(b []byte) (int, error) { return len(b), nil }
func (u *upstreamBytes) Close() error                { u.closed = true; return nil }

// goRead reads one response from up as net/http's client does (interim
// answers skipped, 101 excepted) and says how many bytes of up it took.
func goRead(up []byte, method string) (resp *http.Response, body []byte, used int, err error) {
	r := bytes.NewReader(up)
	br := bufio.NewReader(r)
	req := &http.Request{Method: method}
	for {
		resp, err = http.ReadResponse(br, req)
		if err != nil {
			return nil, nil, 0, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	body, err = io.ReadAll(resp.Body)
	return resp, body, len(up) - br.Buffered() - r.Len(), err
}

// FuzzUpstreamResponse plays an upstream's answer to the HTTP/1.1 loop
// (the response head reader, interim answers, Content-Length, chunked and
// close-delimited bodies) and reads what the client gets. An answer the
// loop relays in full reaches the client as one well-framed response with
// its status and body; where net/http reads the upstream's bytes too, it
// reads the same body, and the upstream connection is pooled (else
// closed) only if the answer ended where net/http says and the upstream
// did not say close. Anything else serves stray bytes as the next answer,
// on either side.
func FuzzUpstreamResponse(f *testing.F) {
	for _, s := range []struct {
		head bool
		resp string
		body string
	}{
		{false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", "ok"},
		{true, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", ""},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "2\r\nok\r\n0\r\n\r\n"},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n", "3;ext=1\r\nabc\r\n0\r\nX-Sum: 3\r\n\r\n"},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"},
		{false, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", ""},
		{false, "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ""},
		{false, "HTTP/1.0 200 OK\r\n\r\n", "to the end"},
		{false, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", "x"},
		{false, "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", ""},
		{false, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n", "abcdef"},
		{false, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", "ok"},
		{false, "HTTP/1.1 502 Bad Gateway\r\ngrpc-status: 14\r\nContent-Length: 0\r\n\r\n", ""},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "2\r\nokXX0\r\n\r\n"},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "2\nok\n0\n\n"},
		{false, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", " 2\r\nok\r\n0\r\n\r\n"},
		{false, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "ok"},
	} {
		f.Add(s.head, s.resp, []byte(s.body))
	}
	f.Fuzz(func(t *testing.T, head bool, resp string, body []byte) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		up := append([]byte(resp), body...)
		conn := &upstreamBytes{r: bytes.NewReader(up)}
		pc := &h1Conn{Conn: conn, br: bufio.NewReaderSize(conn, 16<<10), bw: bufio.NewWriterSize(conn, 8<<10)}
		var down bytes.Buffer
		c := &h1Down{d: &downstream{listener: &config.Listener{}}, bw: bufio.NewWriter(&down)}
		c.out = []byte(method + " / HTTP/1.1\r\nHost: h\r\n")
		r, err := c.roundTrip(pc, 0)
		if err != nil {
			return // a 502 for the client; nothing relayed
		}
		if r.code < 200 || r.code > 999 || r.chunked && r.length != -1 || r.length < -1 {
			t.Fatalf("%q: the loop read code %d, chunked %v, length %d", up, r.code, r.chunked, r.length)
		}
		idle := &h1Idle{}
		x := &h1Exchange{req: &h1Req{method: []byte(method)}}
		out := c.relay(pc, idle, &r, x)
		_ = c.bw.Flush()
		if pooled := len(idle.conns) > 0; pooled == conn.closed {
			t.Fatalf("%q: the upstream connection is pooled (%v) and closed (%v)", up, pooled, conn.closed)
		}
		if x.flags != "" {
			if len(idle.conns) > 0 {
				t.Fatalf("%q: the upstream connection is pooled after a failed answer (%s)", up, x.flags)
			}
			return // cut short: the client's connection is closed mid-answer
		}

		// What the client gets: one answer, and nothing after it if the
		// connection carries on.
		got, gotBody, gotUsed, err := goRead(down.Bytes(), method)
		if err != nil {
			t.Fatalf("%q: the client cannot read what the loop relayed in full, %q: %v", up, down.Bytes(), err)
		}
		if got.StatusCode != r.code || int64(len(gotBody)) != x.sent {
			t.Fatalf("%q: the loop relayed %d with %d body bytes; the client read %d with %d", up, r.code, x.sent, got.StatusCode, len(gotBody))
		}
		if out == keepAlive && (gotUsed != down.Len() || got.Close) {
			t.Fatalf("%q: the client's connection carries on after %q, %d bytes beyond the answer (close %v)", up, down.Bytes(), down.Len()-gotUsed, got.Close)
		}

		// The upstream's answer as net/http reads it, if it does.
		want, wantBody, wantUsed, err := goRead(up, method)
		if err != nil {
			return
		}
		if want.StatusCode != r.code || !bytes.Equal(gotBody, wantBody) {
			t.Fatalf("%q: the client read %d %q; net/http reads the upstream's %d %q", up, got.StatusCode, gotBody, want.StatusCode, wantBody)
		}
		used := len(up) - pc.br.Buffered() - conn.r.Len()
		if len(idle.conns) > 0 && (used != wantUsed || want.Close) {
			t.Fatalf("%q: the upstream connection is pooled after %d bytes; net/http ends the answer after %d and closes: %v", up, used, wantUsed, want.Close)
		}
	})
}

// FuzzCopyChunked gives the loop's chunked relay an upstream body: it
// relays the bytes as they are framed, and a body it relays to the end
// is the one net/http's chunked reader reads, ending at the same byte
// (trailers included).
func FuzzCopyChunked(f *testing.F) {
	for _, s := range []string{
		"0\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\n",
		"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"5\nhello\n0\n\n",
		"fffffffffffffff\r\n",
		"1\r\n",
		strings.Repeat("1\r\nx\r\n", 100) + "0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	const chunkedHead = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	f.Fuzz(func(t *testing.T, body []byte) {
		var out bytes.Buffer
		c := &h1Down{bw: bufio.NewWriter(&out)}
		r := bytes.NewReader(body)
		src := bufio.NewReaderSize(r, 16<<10)
		sent, upErr, downErr := c.copyChunked(src)
		_ = c.bw.Flush()
		if downErr != nil {
			t.Fatalf("%q: a write to a buffer failed: %v", body, downErr)
		}
		used := len(body) - src.Buffered() - r.Len()
		if !bytes.HasPrefix(body[:used], out.Bytes()) {
			t.Fatalf("%q: relayed %q, which is not what the upstream sent", body, out.Bytes())
		}
		if upErr != nil {
			return
		}
		if out.Len() != used {
			t.Fatalf("%q: read %d bytes, relayed %d", body, used, out.Len())
		}
		_, want, wantUsed, err := goRead(append([]byte(chunkedHead), body...), "GET")
		if err != nil {
			t.Fatalf("%q: the loop relays a chunked body net/http refuses: %v", body, err)
		}
		if sent != int64(len(want)) || wantUsed-len(chunkedHead) != used {
			t.Fatalf("%q: the loop relays %d body bytes ending at byte %d; net/http reads %d ending at %d", body, sent, used, len(want), wantUsed-len(chunkedHead))
		}
	})
}
