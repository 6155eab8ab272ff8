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
		return Hello{}, &Conn{Conn: c, prefix: first}, nil
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
	return h, &Conn{Conn: c, prefix: rec.buf.Bytes()}, nil
}

// HTTP2Preface is how an HTTP/2 connection with prior knowledge starts.
const HTTP2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// IsHTTP2 reads enough of c to tell an HTTP/2 preface from HTTP/1.x.
func IsHTTP2(c net.Conn, deadline time.Duration) (bool, *Conn, error) {
	_ = c.SetReadDeadline(time.Now().Add(deadline))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, len(HTTP2Preface))
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if !bytes.HasPrefix([]byte(HTTP2Preface), buf[:n]) {
			return false, &Conn{Conn: c, prefix: buf[:n]}, nil
		}
		if err != nil {
			return false, &Conn{Conn: c, prefix: buf[:n]}, err
		}
	}
	return true, &Conn{Conn: c, prefix: buf}, nil
}
