// Package httpfield says which HTTP header fields configuration may set or
// remove, and which values it may give them. The control plane filters
// what it sends, validation refuses it at apply time, and the proxy
// refuses it in what it is sent: a route that could touch the framing
// headers, or write a CR/LF into a value, would let one namespace's
// VirtualService smuggle requests or split responses on connections other
// clients share.
package httpfield

import (
	"fmt"
	"strings"
)

// framing are the fields that say where a message ends or how the
// connection carries it, and the proxy's own: never configuration's.
var framing = map[string]bool{
	"content-length": true, "transfer-encoding": true, "connection": true, "keep-alive": true,
	"proxy-connection": true, "te": true, "trailer": true, "upgrade": true, "host": true,
}

// Settable reports why a configured header operation may not touch name
// (nil: it may): empty, not an HTTP token, a pseudo-header, the Host, or
// a framing field.
func Settable(name string) error {
	l := strings.ToLower(name)
	switch {
	case l == "":
		return fmt.Errorf("a header name cannot be empty")
	case strings.HasPrefix(l, ":") || l == "host":
		return fmt.Errorf("header %q cannot be changed: pseudo-headers and Host are the proxy's (use rewrite.authority)", name)
	case framing[l]:
		return fmt.Errorf("header %q cannot be changed: it frames the message or the connection", name)
	}
	if !IsToken(l) {
		return fmt.Errorf("header name %q is not an HTTP token", name)
	}
	return nil
}

// ValidValue reports why v may not be a header value: control characters
// (CR, LF, NUL...) other than tab.
func ValidValue(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Errorf("header value %q has a control character", v)
		}
	}
	return nil
}

// IsToken reports whether s is an HTTP token (RFC 9110: field names,
// methods).
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// TokenList reports why s is not a comma-separated list of tokens
// (Access-Control-Allow-Methods and the like), "" and "*" allowed.
func TokenList(s string) error {
	if s == "" || s == "*" {
		return nil
	}
	for _, t := range strings.Split(s, ",") {
		if !IsToken(strings.TrimSpace(t)) {
			return fmt.Errorf("%q is not a comma-separated list of HTTP tokens", s)
		}
	}
	return nil
}
