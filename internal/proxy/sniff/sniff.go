// Package sniff reads the start of a connection without consuming it: a
// TLS ClientHello's server name and ALPN list, or the HTTP/2 preface. What
// was read is replayed to whoever handles the connection next.
package sniff

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"time"
)

// Conn is a connection whose first bytes were read and will be read again.
type Conn struct {
	net.Conn
	prefix []byte
}

// Read serves the replayed bytes first.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// wrap replays read ahead of c. A connection sniffed before keeps one
// layer: what it still had to replay follows read, on its socket.
func wrap(c net.Conn, read []byte) *Conn {
	if s, ok := c.(*Conn); ok {
		return &Conn{Conn: s.Conn, prefix: append(read, s.prefix...)}
	}
	return &Conn{Conn: c, prefix: read}
}

// Replay is c with read replayed ahead of what c still has to say.
func Replay(c net.Conn, read []byte) *Conn { return wrap(c, read) }

// Prefix is what remains to be replayed (for splicing it ahead of the rest).
func (c *Conn) Prefix() []byte { return c.prefix }

// Raw is the underlying connection, once the prefix has been taken.
func (c *Conn) Raw() net.Conn { return c.Conn }

// DropPrefix forgets the replay bytes (the caller wrote them itself).
func (c *Conn) DropPrefix() { c.prefix = nil }

// Hello is what a TLS ClientHello says; TLS is false for plaintext.
type Hello struct {
	TLS        bool
	ServerName string
	ALPN       []string
}

var errDone = errors.New("sniffed")

// recorder feeds the TLS parser and keeps what it read; writes vanish.
type recorder struct {
	net.Conn
	buf bytes.Buffer
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.Conn.Read(p)
	r.buf.Write(p[:n])
	return n, err
}
func (r *recorder) Write(p []byte) (int, error) { return len(p), nil }

// TLS reads a ClientHello if the connection starts with one (first byte
// 0x16, a handshake record); otherwise it reports plaintext. The deadline
// bounds a client that sends nothing.
func TLS(c net.Conn, deadline time.Duration) (Hello, *Conn, error) {
	_ = c.SetReadDeadline(time.Now().Add(deadline))
	defer c.SetReadDeadline(time.Time{})
	first := make([]byte, 1)
	if _, err := io.ReadFull(c, first); err != nil {
		return Hello{}, nil, err
	}
	if first[0] != 0x16 {
		return Hello{}, wrap(c, first), nil
	}
	rec := &recorder{Conn: &Conn{Conn: c, prefix: first}}
	var h Hello
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(ch *tls.ClientHelloInfo) (*tls.Config, error) {
		h = Hello{TLS: true, ServerName: ch.ServerName, ALPN: append([]string(nil), ch.SupportedProtos...)}
		return nil, errDone
	}}).Handshake()
	if !h.TLS {
		if err == nil {
			err = errors.New("no ClientHello")
		}
		return Hello{}, nil, err
	}
	return h, wrap(c, rec.buf.Bytes()), nil
}

// HTTP2Preface is how an HTTP/2 connection with prior knowledge starts.
const HTTP2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// HTTP tells what a plaintext connection speaks from its first line, as
// Envoy's http_inspector does: "h2c" (the HTTP/2 preface), "http/1.1" or
// "http/1.0" (a request line), or "" for anything else. Bytes that cannot
// start an HTTP request end the wait at once; a client that sends nothing
// (a server-first protocol) waits out the deadline.
func HTTP(c net.Conn, deadline time.Duration) (string, *Conn, error) {
	_ = c.SetReadDeadline(time.Now().Add(deadline))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for len(buf) < 4096 {
		n, err := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if proto, done := httpLine(buf); done {
			return proto, wrap(c, buf), nil
		}
		if err != nil {
			return "", wrap(c, buf), err
		}
	}
	return "", wrap(c, buf), nil
}

// httpLine decides on the bytes so far; done is false while they could
// still be the start of a request line.
func httpLine(b []byte) (proto string, done bool) {
	for i, ch := range b {
		if ch == '\n' {
			line := strings.TrimRight(string(b[:i]), "\r")
			if line == "PRI * HTTP/2.0" {
				return "h2c", true
			}
			parts := strings.Split(line, " ")
			if len(parts) == 3 && isMethod(parts[0]) {
				switch parts[2] {
				case "HTTP/1.1":
					return "http/1.1", true
				case "HTTP/1.0":
					return "http/1.0", true
				}
			}
			return "", true
		}
		// Methods are upper-case tokens; the first space ends them.
		if i < 16 && !(ch >= 'A' && ch <= 'Z') && ch != ' ' && !bytes.ContainsRune(b[:i], ' ') {
			return "", true
		}
	}
	return "", false
}

func isMethod(s string) bool {
	if s == "" || len(s) > 16 {
		return false
	}
	for _, ch := range s {
		if ch < 'A' || ch > 'Z' {
			return false
		}
	}
	return true
}
