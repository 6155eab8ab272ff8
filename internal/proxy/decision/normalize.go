package decision

import (
	"net/http"
	"strings"

	"github.com/isthmus-mesh/isthmus/internal/proxy/config"
)

// Path normalization as Istio documents it for authorization ("Authorization
// Policy Normalization") and Envoy implements it: the normalized path is
// what routes and policies see and what the backend receives, so a path a
// policy denies cannot be reached by spelling it differently. In order:
// %2F and %5C decoded (DECODE_AND_MERGE_SLASHES), then RFC 3986 (BASE:
// percent-encoded unreserved characters decoded, other escapes in upper
// case, backslashes made slashes, dot segments resolved), then runs of
// slashes merged (MERGE_SLASHES). %00 is refused whatever the option.

// normalizeTarget normalizes a request target (path and query; the query
// is kept as it came). status is non-zero when the request must be
// answered instead: 400 for %00 or a fragment, 400 for an escaped slash
// the configuration rejects, and redirect set when it asks to redirect to
// the decoded path.
func normalizeTarget(n config.PathNormalization, target string) (out string, status int, redirect bool) {
	// A fragment anywhere (the query too: route matches read it) is not
	// for a server, as Envoy refuses it.
	if strings.IndexByte(target, '#') >= 0 {
		return target, http.StatusBadRequest, false
	}
	path, query, hasQuery := strings.Cut(target, "?")
	if strings.IndexByte(path, 0) >= 0 {
		return target, http.StatusBadRequest, false
	}
	if !needsWork(n, path) {
		return target, 0, false
	}
	if hasNul(path) {
		return target, http.StatusBadRequest, false
	}
	if n.EscapedSlashes != config.KeepEscapedSlashes {
		decoded, found := decodeSlashes(path)
		if found {
			switch n.EscapedSlashes {
			case config.RejectEscapedSlashes:
				return target, http.StatusBadRequest, false
			case config.RedirectUnescaped:
				redirect = true
			}
			path = decoded
		}
	}
	if n.RFC3986 {
		path = rfc3986(path)
	}
	if n.MergeSlashes {
		path = mergeSlashes(path)
	}
	if hasQuery {
		path += "?" + query
	}
	return path, 0, redirect
}

// needsWork is false for the common path that no option changes: no
// escapes, backslashes, dot segments or (when merging) double slashes.
func needsWork(n config.PathNormalization, path string) bool {
	if strings.IndexByte(path, '%') >= 0 {
		return true
	}
	if n.RFC3986 && (strings.IndexByte(path, '\\') >= 0 || strings.Contains(path, "/.") || path == "." || path == "..") {
		return true
	}
	return n.MergeSlashes && strings.Contains(path, "//")
}

func hasNul(path string) bool {
	for i := 0; i+2 < len(path); i++ {
		if path[i] == '%' && path[i+1] == '0' && path[i+2] == '0' {
			return true
		}
	}
	return false
}

// decodeSlashes decodes %2F and %5C (either case).
func decodeSlashes(path string) (string, bool) {
	var b strings.Builder
	found := false
	for i := 0; i < len(path); i++ {
		if path[i] == '%' && i+2 < len(path) && path[i+1] == '2' && (path[i+2] == 'f' || path[i+2] == 'F') {
			b.WriteByte('/')
			i += 2
			found = true
			continue
		}
		if path[i] == '%' && i+2 < len(path) && path[i+1] == '5' && (path[i+2] == 'c' || path[i+2] == 'C') {
			b.WriteByte('\\')
			i += 2
			found = true
			continue
		}
		b.WriteByte(path[i])
	}
	if !found {
		return path, false
	}
	return b.String(), true
}

// rfc3986 decodes escaped unreserved characters (once: %252e stays %2E
// after one pass, not "."), writes the other escapes' hex digits in upper
// case, turns backslashes into slashes and removes dot segments.
func rfc3986(path string) string {
	var b strings.Builder
	b.Grow(len(path))
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '\\':
			b.WriteByte('/')
		case c == '%' && i+2 < len(path) && isHex(path[i+1]) && isHex(path[i+2]):
			d := unhex(path[i+1])<<4 | unhex(path[i+2])
			if unreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteByte('%')
				b.WriteByte(upper(path[i+1]))
				b.WriteByte(upper(path[i+2]))
			}
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return removeDotSegments(b.String())
}

// removeDotSegments is RFC 3986 section 5.2.4 for an absolute path: "."
// segments go, ".." removes the segment before it (never above the root).
func removeDotSegments(path string) string {
	if !strings.Contains(path, ".") {
		return path
	}
	segs := strings.Split(path, "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 1 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	p := strings.Join(out, "/")
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

func mergeSlashes(path string) string {
	if !strings.Contains(path, "//") {
		return path
	}
	var b strings.Builder
	b.Grow(len(path))
	for i := 0; i < len(path); i++ {
		if path[i] == '/' && i > 0 && path[i-1] == '/' {
			continue
		}
		b.WriteByte(path[i])
	}
	return b.String()
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// validMethod is Istio's rule that a method is in upper case (a request
// with "get" is refused with 400 rather than slipping past a policy on
// GET), and an HTTP token.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'a' <= c && c <= 'z' || c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}
