package proxy

import (
	"bytes"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// Parsing HTTP/1.1 message heads in place, for the downstream loop in
// h1serve.go. The parser is strict: anything it is not sure of (obsolete
// line folding, a Transfer-Encoding, an odd Connection option, a request
// target that is not a plain path) makes it say no, and the connection
// goes to net/http, which knows every corner of the protocol.

// h1Field is one header field; both slices point into the head.
type h1Field struct{ name, value []byte }

// h1Req is what the proxy needs of a request head.
type h1Req struct {
	method, target []byte
	// host is the Host header, path the target before any query.
	host, path []byte
	length     int64 // Content-Length; 0 without a body
	close      bool  // Connection: close
}

// parseRequestHead reads a request head (CRLF line ends, the empty line
// included). ok is false when the downstream loop should not serve it.
func parseRequestHead(head []byte, fields []h1Field) (r h1Req, _ []h1Field, ok bool) {
	line, rest, _ := bytes.Cut(head, crlf)
	method, line, ok1 := bytes.Cut(line, sp)
	target, proto, ok2 := bytes.Cut(line, sp)
	if !ok1 || !ok2 || !isToken(method) || string(proto) != "HTTP/1.1" || string(method) == "CONNECT" ||
		len(target) == 0 || target[0] != '/' || !plainTarget(target) {
		return r, fields, false
	}
	r.method, r.target = method, target
	r.path, _, _ = bytes.Cut(target, []byte{'?'})
	fields, ok = parseFields(rest, fields)
	if !ok {
		return r, fields, false
	}
	hosts, lengths := 0, 0
	for _, f := range fields {
		switch {
		case fieldIs(f.name, "host"):
			r.host = f.value
			hosts++
		case fieldIs(f.name, "content-length"):
			n, err := strconv.ParseUint(string(f.value), 10, 63)
			if err != nil || n > maxRetryBody {
				return r, fields, false
			}
			r.length = int64(n)
			lengths++
		case fieldIs(f.name, "transfer-encoding"), fieldIs(f.name, "upgrade"), fieldIs(f.name, "expect"):
			return r, fields, false
		case fieldIs(f.name, "connection"):
			for _, opt := range bytes.Split(f.value, []byte{','}) {
				opt = bytes.Trim(opt, " \t")
				switch {
				case fieldIs(opt, "close"):
					r.close = true
				case fieldIs(opt, "keep-alive"), fieldIs(opt, "te"), len(opt) == 0:
				default:
					// Upgrade, or more headers named hop-by-hop.
					return r, fields, false
				}
			}
		}
	}
	return r, fields, hosts == 1 && lengths <= 1 && httpguts.ValidHostHeader(string(r.host))
}

// h1Resp is what the proxy needs of a response head.
type h1Resp struct {
	code int
	// status is the line's text after the protocol ("200 OK").
	status []byte
	length int64 // -1 when not given
	// chunked: Transfer-Encoding: chunked; keepAlive: the upstream lets
	// the connection carry another request (a body that ends with the
	// connection does not, see closeDelimited).
	chunked, keepAlive bool
	grpcStatus         []byte
}

// parseResponseHead reads a response head as parseRequestHead does.
func parseResponseHead(head []byte, fields []h1Field) (r h1Resp, _ []h1Field, ok bool) {
	line, rest, _ := bytes.Cut(head, crlf)
	proto, status, _ := bytes.Cut(line, sp)
	if len(status) < 3 || (len(status) > 3 && status[3] != ' ') {
		return r, fields, false
	}
	code, err := strconv.Atoi(string(status[:3]))
	if err != nil || code < 100 {
		return r, fields, false
	}
	r.code, r.status, r.length = code, status, -1
	switch string(proto) {
	case "HTTP/1.1":
		r.keepAlive = true
	case "HTTP/1.0":
	default:
		return r, fields, false
	}
	fields, ok = parseFields(rest, fields)
	if !ok {
		return r, fields, false
	}
	closing := false
	for _, f := range fields {
		switch {
		case fieldIs(f.name, "content-length"):
			// Digits only: a sign ("+2") is not a length.
			n, err := strconv.ParseUint(string(f.value), 10, 63)
			if err != nil || (r.length >= 0 && r.length != int64(n)) {
				return r, fields, false
			}
			r.length = int64(n)
		case fieldIs(f.name, "transfer-encoding"):
			if !fieldIs(f.value, "chunked") {
				return r, fields, false
			}
			r.chunked = true
		case fieldIs(f.name, "connection"):
			for _, opt := range bytes.Split(f.value, []byte{','}) {
				opt = bytes.Trim(opt, " \t")
				switch {
				case fieldIs(opt, "close"):
					closing = true
				case fieldIs(opt, "keep-alive"):
					r.keepAlive = true
				}
			}
		case fieldIs(f.name, "grpc-status"):
			r.grpcStatus = f.value
		}
	}
	if closing {
		r.keepAlive = false // close wins, wherever it stands
	}
	if r.chunked && string(proto) == "HTTP/1.0" {
		// Transfer-Encoding in an HTTP/1.0 response is faulty framing
		// (RFC 9112 6.1): the body runs to the close, as net/http reads it.
		r.chunked, r.keepAlive = false, false
	}
	if r.chunked {
		r.length = -1 // Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
	}
	return r, fields, true
}

// closeDelimited tells a body that ends when the connection does.
func (r *h1Resp) closeDelimited(method []byte) bool {
	return !noBody(method, r.code) && !r.chunked && r.length < 0
}

// noBody tells the responses that never carry a body.
func noBody(method []byte, code int) bool {
	return string(method) == "HEAD" || code < 200 || code == 204 || code == 304
}

var (
	crlf = []byte("\r\n")
	sp   = []byte{' '}
)

// parseFields splits header lines up to the empty line.
func parseFields(b []byte, fields []h1Field) ([]h1Field, bool) {
	fields = fields[:0]
	for {
		line, rest, found := bytes.Cut(b, crlf)
		if !found {
			return fields, false
		}
		if len(line) == 0 {
			return fields, true
		}
		name, value, ok := bytes.Cut(line, []byte{':'})
		if !ok || !isToken(name) || !fieldValue(value) {
			return fields, false
		}
		fields = append(fields, h1Field{name: name, value: bytes.Trim(value, " \t")})
		b = rest
	}
}

// fieldIs compares a header name or token with a lowercase string, ignoring ASCII case.
func fieldIs(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// isToken is RFC 9110's token (header names, methods).
func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !tchar[c] {
			return false
		}
	}
	return true
}

var tchar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// fieldValue refuses control characters other than tab, and a leading
// space or tab on the line (obsolete folding comes as a line of its own
// and fails isToken instead).
func fieldValue(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// plainTarget is a path and query without escapes, so the path routes
// match is the path as sent (net/http would decode escapes first).
func plainTarget(b []byte) bool {
	for _, c := range b {
		if c <= 0x20 || c >= 0x7f || c == '%' || c == '#' {
			return false
		}
	}
	return true
}
